"""Which transport a lease's weight sync uses, from where the learner (the stage's rank 0) and the engine run.

    choose_transport("collective", Side("10.0.0.1", ("0",)), Side("10.0.0.1", ("1",)), nccl=True)
    -> ("nccl", "learner GPU 0, engine GPU 1 on 10.0.0.1")

* ``object_store``: forced by ``fleet.weight_sync: object_store``; also the fallback below.
* ``gloo``: either side has no GPU (Ray gave it none), or this torch has no NCCL.
* ``nccl``: both sides have GPUs and none is shared.
* ``cuda_ipc``: learner and engine on the **same GPU** (fractional GPUs on one node: the smoke recipe's 0.5 + 0.5):
  NCCL refuses two ranks on one device ("Duplicate GPU detected", ``ncclInvalidUsage``; NVIDIA/nccl#418), so never
  ``nccl``. The buckets go by CUDA IPC handles (``rollout.weight_sync.IpcSender`` / ``IpcReceiver``: the
  ``reduce_tensor`` handles vLLM 0.32's ``ipc`` weight-transfer backend uses, keyed by the GPU's UUID). Called with
  ``ipc=False`` (a caller without the IPC path) the shared GPU gets the object store, named as a fallback (the
  stage's manifest: ``rollout.weight_sync_fallback``, and one warning in its log).

GPU ids are the ids Ray gives each process (``ray.get_gpu_ids()``, ``core.where.where()["gpu_ids"]``): physical ids
on that node, so two processes share a GPU exactly when they are on one node and their ids overlap.
"""
from __future__ import annotations

from dataclasses import dataclass

TRANSPORTS = ("nccl", "gloo", "cuda_ipc", "object_store")


@dataclass(frozen=True)
class Side:
    """Where one end of the sync runs: its node (IP; None when unknown) and the GPU ids Ray gave it (() = CPU)."""
    node: str | None
    gpus: tuple[str, ...] = ()

    @classmethod
    def of(cls, where: dict | None, on_cpu: bool | None = None) -> "Side":
        """From ``core.where.where()``; ``on_cpu`` False with no ids known: a GPU of unknown id."""
        where = where or {}
        gpus = tuple(str(g) for g in where.get("gpu_ids") or ())
        if not gpus and on_cpu is False:
            gpus = ("?",)
        return cls(where.get("ip"), gpus)


def shared_gpus(a: Side, b: Side) -> list[str]:
    """The GPU ids both sides hold (same node, or node unknown on either side); ``?`` (unknown id) matches none."""
    if a.node is not None and b.node is not None and a.node != b.node:
        return []
    return sorted((set(a.gpus) & set(b.gpus)) - {"?"})


def choose_transport(mode: str, learner: Side, engine: Side, nccl: bool, ipc: bool = False) -> tuple[str, str]:
    """``(transport, why)``: one of ``TRANSPORTS`` and a line saying why (see the module docstring). ``mode`` is the
    fleet's ``weight_sync``; ``nccl``: this torch has NCCL; ``ipc``: the caller has the CUDA IPC path (the lease
    does)."""
    if mode == "object_store":
        return "object_store", "fleet.weight_sync: object_store"
    if mode != "collective":
        raise ValueError(f"weight_sync must be collective or object_store, got {mode!r}")
    if not learner.gpus or not engine.gpus:
        where = "learner" if not learner.gpus else "engine"
        return "gloo", f"the {where} has no GPU"
    shared = shared_gpus(learner, engine)
    if shared:
        on = f"GPU {','.join(shared)}" + (f" of {learner.node}" if learner.node else "")
        if ipc:
            return "cuda_ipc", f"learner and engine share {on}"
        return "object_store", (f"learner and engine share {on}: NCCL refuses two ranks on one GPU and CUDA IPC "
                                f"is off; weights go through the object store")
    if not nccl:
        return "gloo", "this torch has no NCCL"
    return "nccl", (f"learner GPU {','.join(learner.gpus)}, engine GPU {','.join(engine.gpus)}"
                    + (f" on {learner.node}" if learner.node == engine.node and learner.node else ""))


__all__ = ["TRANSPORTS", "Side", "shared_gpus", "choose_transport"]
