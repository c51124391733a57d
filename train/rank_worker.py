"""One rank of a learner group (``train.ranks``): a ``Learner`` in a torch.distributed group, plus the
process-level helpers a group needs (rank counts, shares of a batch, free port, teardown of accelerate's and
DeepSpeed's process-wide state)."""
from __future__ import annotations

import gc
import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch

from core.where import use_cuda, where

from .data import to_device
from .learner import Learner

# ----------------------------------------------------------------------------------------------------- helpers
def resolve_ranks(ranks: int | None, gpus: float | None = None) -> int:
    """``learner.ranks`` resolved: the value itself, else the stage's GPUs (at least 1) when CUDA is there, else 1."""
    if ranks is not None:
        if int(ranks) < 1:
            raise ValueError(f"learner.ranks must be >= 1, got {ranks}")
        return int(ranks)
    if gpus and use_cuda():
        return max(1, int(gpus))
    return 1


def shares(n_items: int, n_ranks: int) -> list[range]:
    """Contiguous index ranges of ``n_items`` over ``n_ranks`` ranks, in order, sizes differing by at most one."""
    q, r = divmod(n_items, n_ranks)
    out, start = [], 0
    for i in range(n_ranks):
        size = q + (1 if i < r else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _clear_accelerate_state() -> None:
    """accelerate's process-wide singletons, so that a later learner in this process starts clean."""
    try:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    except Exception:  # noqa: BLE001 -- best effort at teardown
        pass


def _clear_deepspeed_state() -> None:
    """DeepSpeed's module-level state refers to a destroyed process group once a group is closed (its backend
    object, the groups it cloned from the world group) or would disagree with fresh ranks (ZeRO-3's process-wide
    parameter counter): reset it, so that a later DeepSpeed learner in this process starts afresh."""
    import sys

    groups, comm = sys.modules.get("deepspeed.utils.groups"), sys.modules.get("deepspeed.comm.comm")
    if groups is not None:
        for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP",
                     "_MODEL_PARALLEL_GROUP", "_TENSOR_MODEL_PARALLEL_GROUP", "mpu", "mesh_device"):
            if hasattr(groups, name):
                setattr(groups, name, None)
        for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                     "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
            if isinstance(getattr(groups, name, None), dict):
                getattr(groups, name).clear()
    if comm is not None and hasattr(comm, "cdb"):
        comm.cdb = None
    # ZeRO-3 numbers parameters and modules process-wide, and the ranks check that their numbers agree
    zero = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    if zero is not None and hasattr(zero, "Init"):
        zero.Init.param_id = 0
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    register = getattr(getattr(offload, "DeepSpeedZeRoOffload", None), "_register_deepspeed_module", None)
    counter = (getattr(register, "__defaults__", None) or (None,))[-1]   # its ``count=[0]`` default
    if isinstance(counter, list) and counter:
        counter[0] = 0


# ------------------------------------------------------------------------------------------------------ a rank
class RankWorker:
    """One rank: a ``Learner`` in a torch.distributed group. Rank 0 runs it in the caller's process; ranks > 0 are
    Ray actors (``ray.remote(RankWorker)``). Methods other than ``where``/``init`` are collectives of the group:
    every rank calls them, in the same order."""

    def __init__(self, remote: bool = True):
        self.remote = remote          # results travel through Ray: move them to the CPU and drop the big ones
        self.learner: Learner | None = None
        self.rank = 0
        self._saved_env: dict[str, str | None] = {}

    def where(self) -> dict:
        """Where this rank runs: node IP, pid, the GPU ids Ray gave it, its CUDA_VISIBLE_DEVICES, placement group."""
        return where()

    def init(self, model_dir: str, cfg, total_steps: int, seed: int, env: dict[str, str]) -> dict:
        """Set the process-group environment (``CUDA_VISIBLE_DEVICES`` too when given) and build the learner: the
        rendezvous with the other ranks happens here."""
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.rank = int(env["RANK"])
        self.learner = Learner(model_dir, cfg, total_steps, seed, distributed=True)
        if self.learner.device.type == "cuda":
            torch.cuda.set_device(self.learner.device)
        return {"rank": self.rank, "device": str(self.learner.device),
                "world": self.learner.accelerator.num_processes}

    def _out(self, x):
        return to_device(x, "cpu") if self.remote else x

    def step(self, loss_fn: Callable, micro_batches: list, total: float, n_real: int) -> dict:
        mbs = to_device(micro_batches, self.learner.device)
        return self.learner.step_part(loss_fn, mbs, total, n_real)

    def map(self, fn: Callable, micro_batches: list, n_real: int, autocast: bool) -> list:
        mbs = to_device(micro_batches, self.learner.device)
        return self._out(self.learner.map(fn, mbs, autocast)[:n_real])

    def save(self, folder: str, extra: dict) -> None:
        self.learner.save(Path(folder), extra)

    def load(self, folder: str) -> dict:
        return self.learner.load(Path(folder))

    def state_dict(self) -> dict | None:
        sd = self.learner.state_dict()        # a collective under ZeRO-3
        return None if self.remote else sd    # rank 0's copy is the one returned

    def rollout_gather(self, fp4: bool, names: list[str]) -> dict | None:
        """One bucket of the weight push (a collective under ZeRO-3); only rank 0's copy is kept and returned."""
        out = self.learner.rollout_gather(fp4, names)
        return None if self.remote else out

    def save_pretrained(self, folder: str, tokenizer=None) -> None:
        self.learner.save_pretrained(Path(folder), tokenizer if self.rank == 0 else None)  # rank 0 writes

    def on_rank(self, fn: Callable, args: tuple) -> Any:
        return self._out(fn(self.learner, *args))

    def close(self) -> None:
        """Leave the process group and forget the learner (the actor itself is then killed by the group)."""
        joined = self.learner is not None or bool(self._saved_env)
        self.learner = None
        if not joined:
            return
        try:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001 -- best effort at teardown
            pass
        _clear_deepspeed_state()
        _clear_accelerate_state()
        gc.collect()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}
