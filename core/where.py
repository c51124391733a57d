"""Where the calling process runs inside Ray: node, process, the GPUs Ray gave it and its placement group. Actors of
a stage report this (``where()`` methods), so that logs and tests can check that each actor sits where ``pipeline
plan`` put it: inside a placement group, a bundle's GPUs are the GPU ids Ray hands every actor of that bundle."""
from __future__ import annotations

import os


def where() -> dict:
    """``{ip, pid, gpu_ids, cuda_visible, pg}`` of this process (Nones and ``[]`` outside Ray)."""
    out = {"ip": None, "pid": os.getpid(), "gpu_ids": [], "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "pg": None}
    try:
        import ray

        if not ray.is_initialized():
            return out
        out["ip"] = ray.util.get_node_ip_address()
        out["gpu_ids"] = [str(i) for i in ray.get_gpu_ids()]
        pg = ray.get_runtime_context().get_placement_group_id()
        out["pg"] = str(pg) if pg else None
    except Exception:  # noqa: BLE001 -- outside a Ray worker: what we have
        pass
    return out


__all__ = ["where"]
