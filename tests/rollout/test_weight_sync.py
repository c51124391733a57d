"""Weight sync learner -> engine through a collective group (rollout/weight_sync.py, rollout/fleet.py).

Without vLLM (fast): the bucketing (flatten / unflatten roundtrip, names, shapes, dtypes, bucket sizes), and a
two-process gloo sender / receiver (the plan through a queue standing in for Ray; a re-sync; the default process
group untouched on both sides; a closed sender fails the receiver at once; a group nobody joins times out).

With vLLM (one fleet of one engine, plus one replacement start): after a collective sync the weights read back from
the vLLM worker (``_worker_read_weights``: through the kernels, experts un-prepacked, names mapped back) equal the
learner's, for a fresh weight set twice in a row through the same group, and greedy outputs equal transformers'; the
object store when forced and when the group cannot be formed (one warning, the rest of the lease on the object
store); a replaced engine gets the last weights again. Run: ``python -m pytest tests/rollout/test_weight_sync.py -s``.
"""
from __future__ import annotations

import copy
import logging
import multiprocessing as mp
import pickle
import socket
import time

import pytest
import torch

from rollout.weight_sync import (SyncError, WeightReceiver, WeightSender, flatten_bucket, plan_buckets,
                                 unflatten, unflatten_bucket)


# ------------------------------------------------------------------------------------------------- bucketing
def _mixed_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(64, 32, generator=g),
        "layer.0.norm": torch.randn(32, generator=g).to(torch.bfloat16),
        "layer.0.proj.weight": torch.randn(48, 32, generator=g).t(),          # non-contiguous
        "layer.0.experts.gate_up_proj": torch.randn(4, 16, 32, generator=g),
        "counter": torch.tensor(7, dtype=torch.int64),                         # 0-dim
        "empty": torch.empty(0, 5),
        "mask": torch.rand(9, generator=g) > 0.5,
        "packed": torch.randint(0, 255, (6, 16), generator=g, dtype=torch.uint8),
        "big": torch.randn(200, 100, generator=g),                             # larger than a bucket
        "layer.1.norm": torch.randn(32, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(10, 32, generator=g),
    }


def test_bucketing_roundtrip_names_shapes_dtypes_sizes():
    sd = _mixed_state_dict()
    limit = 16 * 1024                                            # 16 KiB: several float32 buckets, "big" alone
    plan = plan_buckets(sd, limit)
    assert plan.names == tuple(sd)
    seen = [m.name for b in plan.buckets for m in b.tensors]
    assert sorted(seen) == sorted(sd) and len(seen) == len(set(seen))
    for b in plan.buckets:
        n = 0
        for m in b.tensors:
            t = sd[m.name]
            assert str(t.dtype) == f"torch.{b.dtype}" and m.shape == tuple(t.shape) and m.numel == t.numel()
            assert m.offset == n                                 # back to back
            n += m.numel
        assert b.numel == n and b.nbytes == n * sd[b.tensors[0].name].element_size()
        assert b.nbytes <= limit or len(b.tensors) == 1          # over the limit: one tensor alone
    for dt in {b.dtype for b in plan.buckets}:                   # the state dict's order within a dtype
        names = [m.name for b in plan.buckets if b.dtype == dt for m in b.tensors]
        assert names == [k for k, v in sd.items() if str(v.dtype) == f"torch.{dt}"]
    big = [b for b in plan.buckets if any(m.name == "big" for m in b.tensors)]
    assert len(big) == 1 and len(big[0].tensors) == 1 and big[0].nbytes == 200 * 100 * 4 > limit
    assert len([b for b in plan.buckets if b.dtype == "float32"]) >= 3

    flats = [flatten_bucket(b, sd) for b in plan.buckets]
    assert all(f.ndim == 1 and f.numel() == b.numel for f, b in zip(flats, plan.buckets))
    back = unflatten(plan, flats)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    sd["embed.weight"].add_(1.0)                                 # the buckets are copies: a snapshot
    assert not torch.equal(back["embed.weight"], sd["embed.weight"])

    # one bucket for everything of a dtype when the limit is large; the plan is small and picklable
    whole = plan_buckets(sd, 1 << 30)
    assert len(whole.buckets) == len({v.dtype for v in sd.values()})
    assert pickle.loads(pickle.dumps(whole)) == whole and len(pickle.dumps(whole)) < 4096
    assert whole.nbytes == sum(v.numel() * v.element_size() for v in sd.values())
    with pytest.raises(ValueError):
        plan_buckets(sd, 0)
    with pytest.raises(ValueError):                              # a buffer that does not match its bucket
        unflatten_bucket(whole.buckets[0], torch.zeros(3))
    with pytest.raises(ValueError):                              # a tensor that does not match the plan
        flatten_bucket(whole.buckets[0], {**sd, "embed.weight": torch.zeros(3)})


# --------------------------------------------------------------------------- two processes, gloo, no vLLM
def _receiver_main(inbox, outbox, init_file: str) -> None:
    """The engine's side in a child process: a default group of its own (as vLLM has), then the sync group."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        receiver = WeightReceiver(**inbox.get(), own_address="127.0.0.1")
        outbox.put("joined")
        while (msg := inbox.get()) is not None:
            try:
                sd = receiver.receive(msg)
                outbox.put({k: v.clone() for k, v in sd.items()})
            except SyncError as e:
                outbox.put(e)
        t = torch.ones(2)
        dist.all_reduce(t)                                       # the default group still works
        outbox.put(("default group", dist.get_world_size(), t.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_two_process_gloo_sync(tmp_path):
    ctx = mp.get_context("spawn")
    inbox, outbox = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_receiver_main, args=(inbox, outbox, str(tmp_path / "default_group")), daemon=True)
    child.start()
    try:
        sender = WeightSender("127.0.0.1", timeout_s=120, sync_timeout_s=60)
        inbox.put(sender.join_args())
        sender.connect()
        assert outbox.get(timeout=60) == "joined"
        for round_ in range(2):                                  # a sync, then a re-sync with other weights
            sd = _mixed_state_dict()
            for v in sd.values():
                if v.is_floating_point():
                    v.add_(round_)
            plan = plan_buckets(sd, 16 * 1024)
            inbox.put(plan)                                      # the metadata first (Ray, in the fleet) ...
            kept = sender.send(plan, sd)                         # ... then the buckets
            got = outbox.get(timeout=60)
            assert list(got) == list(sd)
            for k, v in sd.items():
                assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
            assert [k.device.type for k in kept] == ["cpu"] * len(plan.buckets)
            assert all(torch.equal(a, b) for a, b in zip(unflatten(plan, kept).values(), sd.values()))
        assert not torch.distributed.is_initialized()            # the sender made no default group

        inbox.put(plan_buckets({"x": torch.zeros(1000)}, 1 << 20))   # the receiver waits for a broadcast ...
        time.sleep(1.0)
        t = time.perf_counter()
        sender.close()                                           # ... that never comes: it fails at once
        err = outbox.get(timeout=30)
        assert isinstance(err, SyncError) and time.perf_counter() - t < 10, err
        inbox.put(None)
        assert outbox.get(timeout=30) == ("default group", 1, [1.0, 1.0])
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()

    lonely = WeightSender("127.0.0.1", timeout_s=2)              # nobody joins: SyncError after the timeout
    t = time.perf_counter()
    with pytest.raises(SyncError, match="could not form"):
        lonely.connect()
    assert time.perf_counter() - t < 20


# --------------------------------------------------------------------------------------------- with vLLM
vllm_only = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet(ray_vllm, tiny_dir):
    from rollout.config import FleetConfig
    from rollout.fleet import start_fleet

    cfg = FleetConfig(engines=1, fp4=True, kv_cache_gb=0.05, return_routed_experts=False, sync_bucket_mb=0.05)
    return start_fleet(tiny_dir, cfg, max_model_len=256, seed=0)


@pytest.fixture(scope="module")
def learner_model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def _fresh(model, seed: int) -> dict[str, torch.Tensor]:
    """A fresh weight set on ``model`` (in place); its rollout state dict (MXFP4-dequantized targets, as the fleet
    serves with fp4)."""
    from rollout.fp4 import quantized_state_dict

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return {k: v.detach().clone() for k, v in quantized_state_dict(model).items()}


def _read_back(ray, engine) -> dict[str, torch.Tensor]:
    from rollout.vllm_worker import _worker_read_weights

    return ray.get(engine.actor.__ray_call__.remote(lambda actor: actor.llm.collective_rpc(_worker_read_weights)[0]))


def _assert_served(engine_weights: dict, sd: dict) -> None:
    missing = set(sd) - set(engine_weights)
    if missing == {"lm_head.weight"}:                            # tied embeddings: one tensor in vLLM
        engine_weights = {**engine_weights, "lm_head.weight": engine_weights["model.embed_tokens.weight"]}
    assert set(sd) <= set(engine_weights), sorted(set(sd) - set(engine_weights))
    bad = {k: float((engine_weights[k] - v).abs().max()) for k, v in sd.items() if not torch.equal(engine_weights[k], v)}
    assert not bad, f"engine weights differ from the learner's: {bad}"


def _greedy(engine, prompts):
    from rollout.engine import SamplingParams

    out = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=12))
    return [c[0].token_ids for c in out]


@torch.no_grad()
def _hf_greedy(model, sd, prompts, eos: int | None):
    ref = copy.deepcopy(model)
    ref.load_state_dict(sd, strict=False)
    outs = []
    for p in prompts:
        ids = ref.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
        outs.append(ids[0, len(p):].tolist())
    return outs


PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]


@pytest.mark.vllm
@pytest.mark.slow
def test_collective_sync_equals_learner_twice(ray_vllm, fleet, learner_model):
    from rollout.fleet import LeasedEngine

    engine = LeasedEngine(fleet, "collective")
    try:
        assert engine.describe()["weight_sync"] == "collective"
        sender = None
        for round_ in range(2):                                  # a fresh weight set, twice: a re-sync
            sd = _fresh(learner_model, seed=round_)
            before = _read_back(ray_vllm, engine)
            assert any(not torch.equal(before[k], sd[k]) for k in sd if k in before)   # the read-back sees it
            s = engine.load_weights(sd)
            info = engine.last_sync
            print(f"\n[sync {round_}] collective {s * 1e3:.0f} ms: {info}")
            assert info["path"] == "collective" and info["backend"] == "gloo" and info["buckets"] > 3
            assert engine.fallback is None and engine.collective
            if sender is None:
                sender = engine._sender
            assert engine._sender is sender                      # the same group: formed once per lease
            _assert_served(_read_back(ray_vllm, engine), sd)
        eos = engine.info.get("eos_token_id")
        assert _greedy(engine, PROMPTS) == _hf_greedy(learner_model, sd, PROMPTS, eos)
    finally:
        engine.close()
    actor = engine.actor
    assert ray_vllm.get(actor.__ray_call__.remote(lambda a: getattr(a, "_sync_receiver", None) is None))


@pytest.mark.vllm
@pytest.mark.slow
def test_object_store_forced_and_fallback(ray_vllm, fleet, learner_model, monkeypatch, caplog):
    from rollout.fleet import LeasedEngine
    from rollout.weight_sync import WeightSender

    engine = LeasedEngine(fleet, "forced", weight_sync="object_store")
    try:
        sd = _fresh(learner_model, seed=10)
        engine.load_weights(sd)
        assert engine.last_sync["path"] == "object_store" and engine._sender is None
        assert engine.describe()["weight_sync"] == "object_store"
        _assert_served(_read_back(ray_vllm, engine), sd)
    finally:
        engine.close()

    # the engine cannot reach the store (a closed port): one warning, then the object store for the lease
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    join_args = WeightSender.join_args
    monkeypatch.setattr(WeightSender, "join_args", lambda self: {**join_args(self), "port": closed_port})
    engine = LeasedEngine(fleet, "fallback", form_timeout_s=3)
    try:
        sd = _fresh(learner_model, seed=11)
        with caplog.at_level(logging.WARNING, logger="rollout.fleet"):
            t = time.perf_counter()
            engine.load_weights(sd)
            print(f"\n[fallback] first push {time.perf_counter() - t:.1f} s; {engine.fallback}")
        warnings = [r for r in caplog.records if r.name == "rollout.fleet"]
        assert len(warnings) == 1 and "object store" in warnings[0].getMessage()
        assert "\n" not in warnings[0].getMessage() and "could not" in warnings[0].getMessage()
        assert not engine.collective and engine.fallback and engine.last_sync["path"] == "object_store"
        assert engine.describe()["weight_sync"] == "object_store"
        _assert_served(_read_back(ray_vllm, engine), sd)
        sd = _fresh(learner_model, seed=12)
        engine.load_weights(sd)                                  # no second attempt at the group
        assert engine.last_sync["path"] == "object_store"
        assert len([r for r in caplog.records if r.name == "rollout.fleet"]) == 1
        assert not [r for r in caplog.records if "Unhandled error" in r.getMessage()]
        _assert_served(_read_back(ray_vllm, engine), sd)
    finally:
        engine.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_replaced_engine_gets_the_last_collective_weights(ray_vllm, fleet, learner_model):
    from rollout.fleet import LeasedEngine

    engine = LeasedEngine(fleet, "replace")
    try:
        sd = _fresh(learner_model, seed=20)
        engine.load_weights(sd)
        assert engine.last_sync["path"] == "collective"
        before = _greedy(engine, PROMPTS)
        _fresh(learner_model, seed=21)                           # the learner moves on; the snapshot does not
        ray_vllm.kill(engine.actor)                             # the engine dies under the lease
        after = _greedy(engine, PROMPTS)                         # replaced, the last weights pushed again
        assert after == before
        assert engine.last_sync["path"] == "collective"          # through a new group with the new engine
        _assert_served(_read_back(ray_vllm, engine), sd)
    finally:
        engine.close()
    stats = ray_vllm.get(fleet.stats.remote())
    assert stats["replacements"] == 1 and stats["weight_sync"]["mode"] == "collective"
