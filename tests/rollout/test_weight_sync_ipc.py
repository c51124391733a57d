"""Weight sync on one shared GPU by CUDA IPC, and the wire dtype (rollout/weight_sync.py, rollout/fleet.py).

No GPU here: the CUDA calls are faked (``reduce_tensor`` exports a CPU bucket into a registry standing in for the
GPU's memory, ``rebuild_cuda_tensor`` hands back the very same storage, a fixed GPU UUID), so what is checked is the
logic around them, not CUDA: the lease exports one handle per bucket in the plan's order, the engine's own
``sync_join`` / ``sync_receive`` (``_VLLMActor``'s methods, on a stand-in engine) rebuild the buckets on its device
index, cast them to the engine's dtype and reload them through ``load_weights``, and the learner lets go of the
buckets only after that call returned (the acknowledgement). A handle for another GPU fails the sync, and the lease
falls back to the object store and names why.

The wire dtype: a bf16 learner's buckets are bf16 (its fp32 masters are never sent as fp32), an fp32 learner's fp32;
the receiver casts to the engine's dtype.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

import rollout.weight_sync as ws
from rollout.weight_sync import RolloutWeights, SyncError, flatten_bucket, plan_buckets

UUID = "GPU-5eed-0000"


class FakeCuda:
    """``reduce_tensor`` / ``rebuild_cuda_tensor`` / ``get_device_properties`` on the CPU: an export registers the
    bucket itself (its storage stands for the learner's GPU memory), a rebuild returns it."""

    def __init__(self, monkeypatch, uuid=UUID, engine_index=3):
        import torch.multiprocessing.reductions as red

        self.exported: dict[int, torch.Tensor] = {}
        self.events: list[tuple] = []
        self.engine_index = engine_index
        monkeypatch.setattr(red, "reduce_tensor", self.reduce)
        monkeypatch.setattr(red, "rebuild_cuda_tensor", self.rebuild)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuid))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        # learner and engine "devices": the CPU here; the engine's CUDA index differs from the learner's (0) as it
        # does when the two processes have different CUDA_VISIBLE_DEVICES
        monkeypatch.setattr(ws, "_ipc_device", lambda device=None: torch.device("cpu"))
        monkeypatch.setattr(ws, "_ipc_device_index", lambda device: self.engine_index)

    def reduce(self, t):
        key = len(self.exported)
        self.exported[key] = t
        self.events.append(("export", key, t.dtype, t.numel()))
        # rebuild_cuda_tensor's arguments: (cls, size, stride, offset, storage_cls, dtype, device, handle, ...)
        return ("rebuild_cuda_tensor", (torch.Tensor, t.shape, t.stride(), 0, None, t.dtype, 0, key, t.numel()))

    def rebuild(self, *args):
        assert args[6] == self.engine_index, "the receiver's own device index replaces the sender's"
        self.events.append(("rebuild", args[7]))
        return self.exported[args[7]]


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(64, 32, generator=g), "layer.0.norm": torch.randn(32, generator=g),
            "layer.0.proj.weight": torch.randn(48, 32, generator=g).t(), "steps": torch.tensor(3),
            "head.weight": torch.randn(80, 32, generator=g)}


class FakeEngine:
    """The engine actor's state as ``_VLLMActor.sync_join`` / ``sync_receive`` use it; its ``load_weights``
    records what the reload got (and checks the learner still holds the buckets then)."""

    def __init__(self, events, sender_holds):
        self.events, self.sender_holds, self.loaded = events, sender_holds, None

    def load_weights(self, state_dict):
        self.loaded = {k: v.clone() for k, v in state_dict.items()}
        self.events.append(("load_weights", self.sender_holds()))
        return 0.01

    def sync_close(self):
        from rollout.vllm_engine import _VLLMActor

        _VLLMActor.sync_close(self)


class FakeActor:
    """``actor.method.remote(...)`` runs ``_VLLMActor``'s own method on the stand-in engine; the 'ref' is the
    result (or the error)."""

    def __init__(self, engine):
        from rollout.vllm_engine import _VLLMActor

        def remote(fn):
            def call(*a, **k):
                try:
                    return ("ok", fn(engine, *a, **k))
                except Exception as e:  # noqa: BLE001
                    return ("err", e)
            return SimpleNamespace(remote=call)

        self.sync_join = remote(_VLLMActor.sync_join)
        self.sync_receive = remote(_VLLMActor.sync_receive)
        self.sync_close = remote(lambda eng: eng.sync_close())
        self.load_weights = remote(lambda eng, sd: eng.load_weights(sd))


class FakeRay:
    class exceptions:
        class RayActorError(Exception):
            pass

        class GetTimeoutError(Exception):
            pass

        class RayTaskError(Exception):
            pass

    def __init__(self, events):
        self.events = events

    def get(self, ref, timeout=None):
        kind, value = ref
        if kind == "err":
            raise value
        if isinstance(value, dict) and "reload_s" in value:
            self.events.append(("ack",))
        return value

    def put(self, value):
        return value                     # an 'object ref' the actor receives as the value itself


def _lease(monkeypatch, events, engine_dtype="float32", bucket_bytes=4096):
    import core.where as where_mod
    import rollout.fleet as fleet

    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(where_mod, "where", lambda: {"ip": "10.0.0.1", "gpu_ids": ["0"]})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    lease = object.__new__(fleet.LeasedEngine)
    lease.ray, lease.who, lease.index, lease.actor_id, lease.fp4 = FakeRay(events), "grpo.x", 0, "a", False
    lease.info = {"on_cpu": False, "where": {"ip": "10.0.0.1", "gpu_ids": ["0"]}}
    lease.weight_sync, lease.collective, lease.fallback, lease.last_sync = "collective", True, None, {}
    lease.bucket_bytes, lease.engine_dtype = bucket_bytes, engine_dtype
    lease.form_timeout_s, lease.sync_timeout_s = 5.0, 5.0
    lease._sender = lease._last = lease._snapshot = None
    lease._pending = []
    engine = FakeEngine(events, lambda: bool(lease._sender is not None and lease._sender._held))
    lease.actor = FakeActor(engine)
    lease.transport = lease._choose_transport()
    return lease, engine


def test_ipc_push_exports_rebuilds_loads_then_acks(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rollout.fleet")
    cuda = FakeCuda(monkeypatch)
    lease, engine = _lease(monkeypatch, cuda.events)
    assert lease.transport == "cuda_ipc" and "cuda_ipc" in caplog.text
    sd = _state_dict()
    weights = RolloutWeights.of(sd, torch.bfloat16)            # a bf16 learner: fp32 masters, bf16 on the wire
    lease.load_weights(weights)

    plan = weights.plan(lease.bucket_bytes)
    n = len(plan.buckets)
    assert n >= 3                                              # several buckets (4 KiB each)
    kinds = [e[0] for e in cuda.events]
    # every bucket exported (in the plan's order), then rebuilt in that order, one reload, then the acknowledgement
    assert kinds == ["export"] * n + ["rebuild"] * n + ["load_weights", "ack"]
    assert cuda.events[-2] == ("load_weights", True)           # the learner still held the buckets during the reload
    assert [e[1] for e in cuda.events if e[0] == "rebuild"] == list(range(n))
    assert [(e[2], e[3]) for e in cuda.events if e[0] == "export"] == [(torch.bfloat16 if b.dtype == "bfloat16"
                                                                         else torch.int64, b.numel)
                                                                        for b in plan.buckets]
    assert {e[2] for e in cuda.events if e[0] == "export"} == {torch.bfloat16, torch.int64}   # never fp32 out
    # the engine got every tensor, cast to its dtype (float32), equal to the learner's bf16-rounded weights
    assert list(engine.loaded) == list(sd)
    for k, v in sd.items():
        got = engine.loaded[k]
        if v.dtype.is_floating_point:
            assert got.dtype == torch.float32 and torch.equal(got, v.to(torch.bfloat16).float()), k
        else:
            assert got.dtype == v.dtype and torch.equal(got, v), k
    # after the acknowledgement the learner holds no bucket; it keeps CPU copies for a replaced engine
    assert not lease._sender._held
    snap_plan, flats = lease._snapshot
    assert snap_plan == plan.__class__(plan.names, plan.buckets, "float32") and len(flats) == n
    assert lease.last_sync["backend"] == "cuda_ipc" and lease.last_sync["buckets"] == n
    assert lease.describe()["weight_sync_transport"] == "cuda_ipc" and lease.collective

    cuda.events.clear()                                        # a second push through the same 'group'
    sd["embed.weight"].add_(1.0)
    lease.load_weights(RolloutWeights.of(sd, torch.bfloat16))
    assert torch.equal(engine.loaded["embed.weight"], sd["embed.weight"].to(torch.bfloat16).float())
    assert [e[0] for e in cuda.events][-2:] == ["load_weights", "ack"]


def test_ipc_handle_of_another_gpu_falls_back_to_the_object_store(monkeypatch, caplog):
    cuda = FakeCuda(monkeypatch)
    lease, engine = _lease(monkeypatch, cuda.events)
    monkeypatch.setattr(ws, "gpu_uuid", lambda device, _n=iter(range(99)): f"GPU-{next(_n)}")   # sender != engine
    sd = _state_dict()
    lease.load_weights(sd)
    assert "rebuild" not in [e[0] for e in cuda.events]        # nothing opened on the wrong GPU
    assert not lease.collective and "GPU-0" in lease.fallback and "GPU-1" in lease.fallback
    assert lease.describe()["weight_sync"] == "object_store" and "object store" in caplog.text
    assert all(torch.equal(engine.loaded[k], v) for k, v in sd.items())   # the object store carried them
    assert lease._sender is None


def test_ipc_receiver_needs_handles():
    r = ws.WeightReceiver("", 0, "t", "cuda_ipc", 1.0, 1.0, device="cpu")
    assert isinstance(r, ws.IpcReceiver)
    with pytest.raises(SyncError):
        r.receive(plan_buckets(_state_dict(), 4096))             # a plain plan: no handles


# ------------------------------------------------------------------------------------------------ wire dtype
def test_wire_dtype_bf16_is_planned_flattened_and_cast_back():
    sd = _state_dict()
    plan = RolloutWeights.of(sd, torch.bfloat16).plan(1 << 20, cast_to="float32")
    assert {b.dtype for b in plan.buckets} == {"bfloat16", "int64"} and plan.cast_to == "float32"
    assert plan.nbytes == sum(v.numel() * (2 if v.dtype.is_floating_point else 8) for v in sd.values())
    flats = [flatten_bucket(b, sd) for b in plan.buckets]
    assert [f.dtype for f in flats] == [ws.to_dtype(b.dtype) for b in plan.buckets]
    back = ws.cast_floating(ws.unflatten(plan, flats), plan.cast_to)
    assert all(back[k].dtype == (torch.float32 if v.dtype.is_floating_point else v.dtype) for k, v in sd.items())
    fp32 = RolloutWeights.of(sd).plan(1 << 20)                    # an fp32 learner: as stored
    assert {b.dtype for b in fp32.buckets} == {"float32", "int64"}


@pytest.mark.parametrize("precision, wire", [("bf16", "bfloat16"), ("fp32", "float32")])
def test_learner_pushes_in_its_training_dtype(tiny_dir, precision, wire):
    from train.config import LearnerConfig
    from train.learner import Learner
    from train.rank_worker import _clear_accelerate_state

    _clear_accelerate_state()                                    # accelerate's precision is process-wide
    try:
        learner = Learner(tiny_dir, LearnerConfig(optimizer="adamw", precision=precision, warmup_steps=0), 1)
        weights = learner.rollout_state_dict(False)
        assert all(v.dtype == torch.float32 for k, v in learner.unwrapped.state_dict().items()
                   if v.dtype.is_floating_point)                # the masters are fp32 either way
        plan = weights.plan(1 << 20)
        assert {b.dtype for b in plan.buckets} == {wire}
        flats = [flatten_bucket(b, ws.bucket_tensors(weights, b)) for b in plan.buckets]
        assert {f.dtype for f in flats} == {ws.to_dtype(wire)}
        fp4 = learner.rollout_state_dict(True).plan(1 << 20)     # the FP4 push too
        assert {b.dtype for b in fp4.buckets} == {wire}
    finally:
        _clear_accelerate_state()
