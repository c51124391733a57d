"""The weight-sync transport by placement (rollout.transport): NCCL between GPUs, gloo on CPU, never NCCL on one
shared GPU (NCCL refuses two ranks on one device) -- there the lease uses CUDA IPC and says so; the object store only
where the caller has no IPC path, named as a fallback."""
import logging

import pytest

from rollout.transport import Side, choose_transport

A, B = "10.0.0.1", "10.0.0.2"
TABLE = [
    # mode, learner, engine, nccl, expected
    ("collective", Side(A), Side(A), True, "gloo"),                                  # all CPU
    ("collective", Side(A, ("0",)), Side(A), True, "gloo"),                          # engine on CPU
    ("collective", Side(A), Side(A, ("0",)), True, "gloo"),                          # learner on CPU
    ("collective", Side(A, ("0",)), Side(A, ("1",)), True, "nccl"),                  # two GPUs, one node
    ("collective", Side(A, ("0",)), Side(B, ("0",)), True, "nccl"),                  # same id, other node
    ("collective", Side(A, ("0", "1")), Side(A, ("2", "3")), True, "nccl"),
    ("collective", Side(A, ("0",)), Side(A, ("0",)), True, "cuda_ipc"),              # 0.5 + 0.5 of GPU 0
    ("collective", Side(A, ("0", "1")), Side(A, ("1",)), True, "cuda_ipc"),          # overlap
    ("collective", Side(None, ("0",)), Side(A, ("0",)), True, "cuda_ipc"),           # node unknown: assume same
    ("collective", Side(A, ("?",)), Side(A, ("?",)), True, "nccl"),                  # ids unknown: as before
    ("collective", Side(A, ("0",)), Side(A, ("1",)), False, "gloo"),                 # no NCCL in this torch
    ("object_store", Side(A, ("0",)), Side(A, ("1",)), True, "object_store"),        # forced
    ("object_store", Side(A), Side(A), True, "object_store"),
]


@pytest.mark.parametrize("mode, learner, engine, nccl, expected", TABLE)
def test_transport_table(mode, learner, engine, nccl, expected):
    transport, why = choose_transport(mode, learner, engine, nccl, ipc=True)     # as the lease calls it
    assert transport == expected and why


def test_shared_gpu_says_why_and_without_ipc_falls_back():
    t, why = choose_transport("collective", Side(A, ("0",)), Side(A, ("0",)), nccl=True, ipc=True)
    assert t == "cuda_ipc" and "share GPU 0" in why
    t, why = choose_transport("collective", Side(A, ("0",)), Side(A, ("0",)), nccl=True)
    assert t == "object_store" and "share GPU 0" in why and "NCCL" in why
    with pytest.raises(ValueError):
        choose_transport("nccl", Side(A), Side(A), True)


def test_side_from_where():
    assert Side.of({"ip": A, "gpu_ids": [0, 1]}) == Side(A, ("0", "1"))
    assert Side.of({"ip": A, "gpu_ids": []}, on_cpu=False) == Side(A, ("?",))
    assert Side.of(None, on_cpu=True) == Side(None, ())


def _lease(monkeypatch, engine_where, learner_ids, mode="collective"):
    """A LeasedEngine's transport choice without Ray: the engine's info as _VLLMActor.info reports it, the learner
    where Ray put this stage task."""
    import torch
    import torch.distributed as dist

    import core.where as where_mod
    import rollout.fleet as fleet

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: learner_ids)
    monkeypatch.setattr(where_mod, "where", lambda: {"ip": A, "gpu_ids": learner_ids})
    lease = object.__new__(fleet.LeasedEngine)
    lease.who, lease.weight_sync, lease.collective, lease.fallback, lease._sender = "grpo.x", mode, mode == "collective", None, None
    lease.info = {"on_cpu": not engine_where["gpu_ids"], "where": engine_where}
    lease.index, lease.actor_id, lease.fp4 = 0, "a", False
    lease.transport = lease._choose_transport()
    return lease


def test_lease_on_a_shared_gpu_uses_cuda_ipc_and_names_it(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rollout.fleet")
    lease = _lease(monkeypatch, {"ip": A, "gpu_ids": ["0"]}, ["0"])
    d = lease.describe()
    assert lease.transport == "cuda_ipc" and lease._backend() == "cuda_ipc" and lease.collective
    assert d["weight_sync"] == "collective" and d["weight_sync_transport"] == "cuda_ipc"
    assert "weight_sync_fallback" not in d
    assert "cuda_ipc" in caplog.text and "share GPU 0" in caplog.text


def test_shared_gpu_without_ipc_names_the_object_store_fallback(monkeypatch, caplog):
    import rollout.transport as transport

    choose = transport.choose_transport
    monkeypatch.setattr(transport, "choose_transport", lambda *a, **k: choose(*a, **{**k, "ipc": False}))
    lease = _lease(monkeypatch, {"ip": A, "gpu_ids": ["0"]}, ["0"])
    d = lease.describe()
    assert lease.transport == "object_store" and not lease.collective
    assert d["weight_sync"] == "object_store" and "share GPU 0" in d["weight_sync_fallback"]
    assert "object store" in caplog.text and "share GPU 0" in caplog.text


def test_lease_between_gpus_uses_nccl(monkeypatch):
    lease = _lease(monkeypatch, {"ip": A, "gpu_ids": ["1"]}, ["0"])
    assert lease.transport == "nccl" and lease._backend() == "nccl" and lease.collective
    assert lease.describe()["weight_sync_transport"] == "nccl"
    lease = _lease(monkeypatch, {"ip": A, "gpu_ids": ["1"]}, [])          # a zero-GPU stage task: gloo
    assert lease.transport == "gloo" and lease._backend() == "gloo"
