"""The learner as a group of ranks: data parallel over the global batch, under DeepSpeed ZeRO or DDP.

``make_learner(model_dir, cfg, total_steps, seed, ranks=..., gpus=...)`` is what a training stage calls instead of
``Learner(...)``. One rank (``learner.ranks: 1``, or ``None`` on CPU) gives the plain in-process ``Learner``,
unchanged. N > 1 ranks give a ``LearnerGroup`` with the same interface the drivers use:

* rank 0 is a ``Learner`` in the calling process (the stage's Ray task); ranks 1..N-1 are Ray actors
  (``RankWorker``), placed in the caller's placement group when one is given, else plain actors (one CPU each on
  CPU; on GPU they share the caller's GPUs when it holds one per rank, else ask Ray for one GPU each).
  All ranks join one torch.distributed group (gloo on CPU, NCCL on GPU) at rank 0's node IP and a free port, and
  run the same ``Learner`` with DeepSpeed ZeRO-``zero_stage`` (or DDP when ``zero_stage`` is 0), world size N.
* every call goes to all ranks: the remote calls first, then rank 0's (on one executor thread of this process, so
  that a failing rank is reported at once instead of leaving rank 0 waiting inside a collective).
* ``step(loss_fn, micro_batches)``: the micro-batches are split into N contiguous shares (sizes differ by at most
  one); each rank backpropagates Σ loss_sum · N / W over its share, W being the total weight of the GLOBAL batch,
  and the gradient average over the ranks (DDP / DeepSpeed divide the all-reduced sum by N) is the gradient of
  Σ_all loss_sum / W — the 1-rank step on the same micro-batches. A rank with fewer micro-batches than the others
  runs padding micro-batches with weight 0 (every rank must run as many forwards and backwards: ZeRO-3 gathers
  parameters in each). The returned loss is Σ_ranks loss_sum / W, the metrics Σ_ranks Σ v · weight / W.
* ``map(fn, micro_batches)``: no-grad forwards (π_old, reference log-probs), split the same way; the results come
  back in order, on rank 0's device.
* ``save`` / ``load``: every rank writes / reads the same checkpoint folder (the run directory is shared storage):
  DeepSpeed shards per rank; otherwise rank 0 writes the replicated weights and optimizer. ``state_dict`` and
  ``save_pretrained`` gather the full weights (a collective every rank joins); rank 0's copy is returned / written.
  ``rollout_state_dict`` gathers nothing up front: under ZeRO-3 the push gathers one bucket at a time on every rank
  and sends rank 0's copy.

Functions sent to the ranks (``loss_fn``, ``fn``) travel to the actors by Ray (cloudpickle), once per call: they
must not capture the rank-0 model or learner (each rank passes its own model as the first argument), nor tensors on
a GPU, and side effects on captured objects (a stats dict) happen in each rank's own copy — return values through
``metrics`` (``step``) or the result (``map``) instead. Micro-batches travel the same way: dicts, lists, tuples and
dataclasses of tensors are moved to the CPU for the trip and onto each rank's device on arrival.
"""
from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Callable

import torch

from core.errors import error_line
from core.where import use_cuda

from .data import to_device
from .learner import Learner, StepResult, batch_weight
from .rank_worker import RankWorker, _clear_accelerate_state, _free_port, resolve_ranks, shares

# ----------------------------------------------------------------------------------------------------- a group
class LearnerGroup:
    """N ranks driven as one learner: ``step``, ``map``, ``on_ranks``, ``save``, ``load``, ``state_dict``,
    ``rollout_state_dict``, ``save_pretrained``, ``device``, ``unwrapped``, ``model``, ``step_count``, ``ranks``,
    ``close`` (see the module docstring).

    ``placement_group`` + ``bundle_indices``: where ranks 1..N-1 run (one index per remote rank, or one per rank
    with the first, the caller's own, ignored; default: bundles 1..N-1 when the group has N bundles or more, bundle 0
    being the caller's, else 0..N-2). ``actor_options``: overrides of the actors' Ray options
    (``num_cpus``, ``num_gpus``, ``resources``, ...). ``start_timeout_s``: how long the actors may take to be
    scheduled and start before the group gives up (a RuntimeError naming what they asked for)."""

    def __init__(self, model_dir: str | Path, cfg, total_steps: int, seed: int = 0, ranks: int = 2, *,
                 placement_group=None, bundle_indices: list[int] | None = None, actor_options: dict | None = None,
                 start_timeout_s: float = 600.0):
        import ray

        if ranks < 2:
            raise ValueError("LearnerGroup needs at least 2 ranks; use Learner (or make_learner) for one")
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        self.ray, self.cfg, self.world = ray, cfg, ranks
        self.broken: str | None = None
        self.actors: list = []
        self._last = None                 # rank 0's latest call (a future of the executor thread)
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-rank0")
        self.local = RankWorker(remote=False)
        try:
            self._start(str(model_dir), cfg, total_steps, seed, placement_group, bundle_indices, actor_options or {},
                        start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, model_dir, cfg, total_steps, seed, pg, bundles, options, timeout) -> None:
        ray = self.ray
        on_gpu = use_cuda()                  # the GPUs Ray gave this task, not every GPU of the node
        here = self.local.where()
        n_remote = self.world - 1
        # which GPUs: the caller's own when it holds one per rank (the stage's GPUs), else one from Ray per actor
        share = on_gpu and pg is None and "num_gpus" not in options and len(here["gpu_ids"]) >= self.world
        opts: dict = {"num_cpus": 1, "num_gpus": 1 if on_gpu and not share else 0, "max_restarts": 0,
                      "max_concurrency": 1}
        per_rank: list[dict] = [{} for _ in range(n_remote)]
        if pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            if bundles is None:
                bundles = list(range(1, self.world)) if pg.bundle_count >= self.world else list(range(n_remote))
            bundles = list(bundles)
            if len(bundles) == self.world:   # one per rank: rank 0's is the caller's own place
                bundles = bundles[1:]
            if len(bundles) != n_remote:
                raise ValueError(f"bundle_indices: {len(bundles)} given for {n_remote} remote ranks "
                                 f"(ranks={self.world})")
            for p, b in zip(per_rank, bundles):
                p["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=int(b))
        elif share:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            for p in per_rank:
                p["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        opts.update(options)
        cls = ray.remote(RankWorker)
        self.actors = [cls.options(**{**opts, **p}).remote(True) for p in per_rank]
        try:
            places = [here] + ray.get([a.where.remote() for a in self.actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            asked = {k: v for k, v in opts.items() if k in ("num_cpus", "num_gpus", "resources")}
            raise RuntimeError(f"learner group: {n_remote} rank actor(s) asking {asked} each did not start within "
                               f"{timeout:.0f}s (cluster: {ray.cluster_resources()}, free: "
                               f"{ray.available_resources()}); give the stage fewer CPUs/GPUs, a placement group, "
                               "or learner.ranks: 1") from None

        self.places = places              # where each rank runs (core.where): node, pid, GPU ids, placement group
        same_node = all(p["ip"] == here["ip"] for p in places)
        addr = "127.0.0.1" if same_node else here["ip"]
        port = str(_free_port())
        envs = []
        for r, p in enumerate(places):
            env = {"MASTER_ADDR": addr, "MASTER_PORT": port, "RANK": str(r), "WORLD_SIZE": str(self.world)}
            peers = [q for q in places if q["ip"] == p["ip"]]
            env["LOCAL_WORLD_SIZE"] = str(len(peers))
            if on_gpu:
                env["LOCAL_RANK"] = "0"   # each process drives the first GPU it sees
                if share and r > 0:       # rank r takes the caller's r-th GPU (rank 0: its first, gpu_ids[0])
                    env["CUDA_VISIBLE_DEVICES"] = here["gpu_ids"][r]
            else:
                env["LOCAL_RANK"] = str(sum(1 for q in places[:r] if q["ip"] == p["ip"]))
            envs.append(env)
        args = (model_dir, cfg, total_steps, seed)
        infos = self._all("init", [(*args, envs[r + 1]) for r in range(n_remote)], (*args, envs[0]))
        self.devices = [i["device"] for i in infos]
        if any(i["world"] != self.world for i in infos):
            raise RuntimeError(f"learner group: ranks see world sizes {[i['world'] for i in infos]}, "
                               f"expected {self.world}")

    # ------------------------------------------------------------------------------------------ calls
    def _all(self, name: str, remote_args: list[tuple], local_args: tuple) -> list:
        """Call ``name`` on every rank (remote calls first, then rank 0's on the executor thread); the results in
        rank order. The first failure of any rank marks the group broken, ends the actors and is raised."""
        if self.broken:
            raise RuntimeError(f"learner group is unusable after an earlier failure: {self.broken}")
        ray = self.ray
        refs = [getattr(a, name).remote(*args) for a, args in zip(self.actors, remote_args)]
        fut = self._last = self._pool.submit(getattr(self.local, name), *local_args)
        got: dict = {}
        pending = list(refs)
        try:
            while pending or not fut.done():
                if pending:
                    ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.02 if fut.done() else 0.01)
                    for r in ready:
                        got[r] = ray.get(r)           # raises the rank's error
                else:
                    concurrent.futures.wait([fut])
                if fut.done() and fut.exception() is not None:
                    raise fut.exception()
            local = fut.result()
        except BaseException as e:
            self.broken = f"{name}: {error_line(e)}"
            self._kill_actors()
            raise
        return [local] + [got[r] for r in refs]

    def _same(self, name: str, *args) -> list:
        return self._all(name, [args] * len(self.actors), args)

    # -------------------------------------------------------------------------------------- the API
    @property
    def device(self) -> torch.device:
        """Rank 0's device: where the caller puts its batches (each rank moves its share onto its own)."""
        return self.local.learner.device

    @property
    def unwrapped(self) -> torch.nn.Module:
        """Rank 0's model, for reading its config (under ZeRO-3 its parameters are partitions)."""
        return self.local.learner.unwrapped

    @property
    def model(self) -> torch.nn.Module:
        """Rank 0's prepared model (DDP / DeepSpeed engine). Forwards on it alone would hang under ZeRO-3: use
        ``map``."""
        return self.local.learner.model

    @property
    def step_count(self) -> int:
        return self.local.learner.step_count

    @property
    def ranks(self) -> int:
        return self.world

    def _split(self, micro_batches: list) -> tuple[list[list], list[int]]:
        """Each rank's share, padded to the same length with weight-0 copies; and how many are real."""
        if not micro_batches:
            raise ValueError("learner group: a step needs at least one micro-batch")
        parts = [[micro_batches[i] for i in rg] for rg in shares(len(micro_batches), self.world)]
        longest = max(len(p) for p in parts)
        n_real = [len(p) for p in parts]
        filler = micro_batches[0]
        return [p + [filler] * (longest - len(p)) for p in parts], n_real

    def step(self, loss_fn: Callable, micro_batches: list) -> StepResult:
        """One optimizer step over the global batch ``micro_batches``, data parallel over the ranks (see the
        module docstring); ``loss_fn(model, mb) -> (loss_sum, metrics)`` as for ``Learner.step``."""
        total = sum(batch_weight(mb) for mb in micro_batches)
        parts, n_real = self._split(micro_batches)
        cpu = [to_device(p, "cpu") for p in parts[1:]]
        fn = self.ray.put(loss_fn) if len(self.actors) > 1 else loss_fn   # serialized once for all actors
        res = self._all("step", [(fn, cpu[r], total, n_real[r + 1]) for r in range(len(self.actors))],
                        (loss_fn, parts[0], total, n_real[0]))
        loss = 0.0
        metrics: dict = {}
        for part in res:
            loss += part["loss_sum"]
            for k, v in part["metrics"].items():
                metrics[k] = metrics.get(k, 0.0) + v
        return StepResult(loss=loss / max(total, 1e-9), grad_norm=res[0]["grad_norm"], lr=res[0]["lr"],
                          metrics=metrics)

    def map(self, fn: Callable, micro_batches: list, autocast: bool = False) -> list:
        """``[fn(model, mb) for mb in micro_batches]`` without gradients, spread over the ranks; results in order,
        on rank 0's device."""
        if not micro_batches:
            return []
        parts, n_real = self._split(micro_batches)
        cpu = [to_device(p, "cpu") for p in parts[1:]]
        res = self._all("map", [(fn, cpu[r], n_real[r + 1], autocast) for r in range(len(self.actors))],
                        (fn, parts[0], n_real[0], autocast))
        dev = self.device
        return [x for r, out in enumerate(res) for x in (out if r == 0 else to_device(out, dev))]

    def on_ranks(self, fn: Callable, *args) -> list:
        """``[fn(learner, *args) for each rank's learner]`` (rank order; remote results come back on the CPU): per-rank
        setup such as hooks on every rank's model (state kept on the rank's learner or model is there for the
        ``loss_fn``s that follow). ``fn`` travels like a loss function; a collective if ``fn`` runs one."""
        return self._same("on_rank", fn, args)

    def save(self, folder: Path, extra: dict) -> None:
        self._same("save", str(folder), extra)

    def load(self, folder: Path) -> dict:
        return self._same("load", str(folder))[0]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._same("state_dict")[0]

    def rollout_state_dict(self, fp4: bool):
        """Rank 0's ``RolloutWeights``. Without ZeRO-3 every rank holds the whole weights: rank 0 alone serves
        them. Under ZeRO-3 each bucket's gather runs on every rank (``rollout_gather``, only those parameters) and
        only rank 0's copy comes back: the push sends from rank 0 alone, one bucket at a time."""
        from rollout.weight_sync import RolloutWeights

        local = self.local.learner.rollout_state_dict(fp4)
        if not self.local.learner.zero3:
            return local
        return RolloutWeights(local.meta, lambda names: self._same("rollout_gather", fp4, list(names))[0],
                              local.wire_dtype)

    def save_pretrained(self, folder: Path, tokenizer=None) -> None:
        self._all("save_pretrained", [(str(folder), None)] * len(self.actors), (str(folder), tokenizer))

    # ------------------------------------------------------------------------------------------ teardown
    def _kill_actors(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001
                pass

    def close(self, timeout_s: float = 60.0) -> None:
        """Leave the process group on every rank, end the actors, clear this process's distributed state (so that
        a later learner in this process, e.g. the next stage in a reused Ray worker, starts clean)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self.local.learner is not None and not self.broken and self.actors:
            try:   # every rank destroys its process group (NCCL wants all ranks to), bounded in time
                refs = [a.close.remote() for a in self.actors]
                fut = self._pool.submit(self.local.close)
                self.ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
                fut.result(timeout=timeout_s)
            except Exception:  # noqa: BLE001 -- teardown goes on
                pass
        self._kill_actors()
        self.actors = []
        # after a failure rank 0's thread may sit in a collective until the killed peers' sockets close
        if self._last is not None and not self._last.done():
            concurrent.futures.wait([self._last], timeout=timeout_s)
        if self._last is None or self._last.done():
            self.local.close()
        else:                     # still stuck: drop what we can without touching the process group
            self.local.learner = None
            _clear_accelerate_state()
        self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(timeout_s=10.0)
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------------------------ factory
def make_learner(model_dir: str | Path, cfg, total_steps: int, seed: int = 0, *, ranks: int | None = None,
                 gpus: float | None = None, placement_group=None, bundle_indices: list[int] | None = None,
                 actor_options: dict | None = None, start_timeout_s: float = 600.0) -> Learner | LearnerGroup:
    """The stage's learner: ``Learner`` for one rank (exactly today's in-process learner), ``LearnerGroup`` for
    more. ``ranks``: default ``cfg.ranks``, whose default (None) is the stage's GPUs (``gpus``, e.g.
    ``ctx.num_gpus``), 1 on CPU."""
    n = resolve_ranks(ranks if ranks is not None else getattr(cfg, "ranks", None), gpus)
    if n == 1:
        return Learner(model_dir, cfg, total_steps, seed)
    return LearnerGroup(model_dir, cfg, total_steps, seed, n, placement_group=placement_group,
                        bundle_indices=bundle_indices, actor_options=actor_options, start_timeout_s=start_timeout_s)


def stage_learner(ctx, model_dir: str | Path, cfg, total_steps: int, seed: int = 0) -> Learner | LearnerGroup:
    """The learner of a stage as the runner placed it: as many ranks as the stage's placement layout has (the layout
    ``pipeline plan`` prints), ranks 1.. in their bundles of the stage's placement group."""
    placement = (ctx.services or {}).get("placement") or {}
    layout = placement.get("layout")
    if layout is None:
        return make_learner(model_dir, cfg, total_steps, seed, gpus=ctx.num_gpus)
    return make_learner(model_dir, cfg, total_steps, seed, ranks=len(layout.ranks), gpus=ctx.num_gpus,
                        placement_group=placement.get("pg"), bundle_indices=list(layout.ranks),
                        actor_options=dict(layout.rank_resources))


__all__ = ["make_learner", "stage_learner", "LearnerGroup", "RankWorker", "resolve_ranks", "shares", "to_device"]
