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


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray gave the calling task or actor (``[]`` when it asked for none); ``None`` outside a Ray task or
    actor (a driver, a plain process), where Ray has given nothing."""
    try:
        import ray
        from ray._private.worker import WORKER_MODE, global_worker
    except ImportError:
        return None
    if not ray.is_initialized() or getattr(global_worker, "mode", None) != WORKER_MODE:
        return None
    return [str(i) for i in ray.get_gpu_ids()]


def use_cuda() -> bool:
    """Whether the calling process computes on CUDA. Inside a Ray task or actor: only when Ray gave it GPUs -- Ray 2.60
    no longer hides the node's GPUs from a task that asked for none (``torch.cuda.is_available()`` is True there, and
    such a task would land on GPU 0 beside whoever Ray gave it to). Elsewhere: ``torch.cuda.is_available()``."""
    ids = ray_gpu_ids()
    if ids is not None and not ids:
        return False
    import torch

    return torch.cuda.is_available()


def device() -> str:
    """``"cuda"`` (the first of the GPUs Ray gave this process: Ray makes them the visible devices) or ``"cpu"``."""
    return "cuda" if use_cuda() else "cpu"


__all__ = ["where", "ray_gpu_ids", "use_cuda", "device"]
