"""The rollout fleet: vLLM engines started once per `pipeline run`, leased by every stage that samples.

``Fleet`` is a Ray actor owned by the run (it and its engines die with the `pipeline run` that made it). It starts
``engines`` vLLM engine actors (``rollout.vllm_engine._VLLMActor``) from the run's starting model (every model of a
run has its architecture, so an engine serves any of them after an in-place weight sync) and hands them out:

    engine = LeasedEngine(fleet, "grpo.math.think_max")   # blocks until an engine is free
    engine.load_weights(learner.rollout_state_dict(engine.fp4))
    engine.generate(prompts, params)
    engine.close()                                       # gives it back

A stage leases one engine for its whole run (rollouts and its held-out evaluation) and gives it back at the end; the
eval stage leases one per model it evaluates. An engine that died is replaced (``Fleet.replace``: a fresh start,
counted) and the client pushes its last weights again before retrying, so a dead engine costs a restart, never a
wrong sample. ``Fleet.stats()`` reports starts, replacements and leases; the runner writes them to ``<run_dir>/fleet.json``.

FP4: ``fp4`` is a property of the fleet. On a GPU the engines serve the compressed-tensors ``MXFP4A16`` checkpoint
``pipeline export --format mxfp4`` writes (the fleet starts them from such an export of the starting model, so the
packed ``weight_packed``/``weight_scale`` names exist) and every weight push is packed; on CPU, where vLLM has no FP4
kernels, they serve the exact MXFP4-dequantized values (``served`` in ``info`` says which).

Weight sync (``FleetConfig.weight_sync``, ``sync_bucket_mb``; ``rollout/weight_sync.py``): ``collective`` (the
default) forms, on the first ``load_weights`` of a lease, a two-rank group between the stage process (rank 0, the
sender; it hosts the group's store) and the leased engine actor (rank 1), gloo on CPU and NCCL when both sides have
a GPU, and broadcasts the state dict in dtype buckets of ``sync_bucket_mb``; the engine rebuilds it and reloads in
place as the object-store path does. Where the stage and the engine share a GPU (``rollout.transport``) the buckets
go by CUDA IPC instead (``weight_sync.IpcSender``: handles through ``sync_receive``, the engine's return the
acknowledgement). Floating tensors travel in the learner's training dtype (``RolloutWeights.wire_dtype``: bf16 for
a bf16 learner) and the engine casts them to its own (``SyncPlan.cast_to``); a ``RolloutWeights`` (ZeRO-3) is
gathered one bucket at a time while it is sent. If the group cannot be formed (the engine's port unreachable, a
timeout, no NCCL) or a transfer fails, one line is logged and the lease uses the object store (``ray.put`` of the
whole state dict) from then on; ``object_store`` forces that. The lease keeps the last weights it pushed (the
collective path: the CPU copies of the buckets it sent; the object store path: the object), so a replaced engine gets
them again, by whichever path works.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time

from core.where import use_cuda

from .engine import Completion, SamplingParams
from .weight_sync import FORM_TIMEOUT_S, SYNC_MODES, SYNC_TIMEOUT_S, RolloutWeights, SyncError

log = logging.getLogger(__name__)


class Fleet:
    """Owns the engine actors; ``lease``/``release``/``replace``. Wrapped with ``ray.remote`` (threaded) by
    ``start_fleet``."""

    def __init__(self, model_path: str, engines: int, engine_kwargs: dict, actor_options: dict, pg, sync: dict):
        import ray

        from .vllm_engine import _VLLMActor

        self.model_path, self.engine_kwargs, self.actor_options, self.pg = model_path, engine_kwargs, actor_options, pg
        self.sync = dict(sync)            # {mode, bucket_mb} from FleetConfig (start_fleet), handed to each lease
        self._cls = ray.remote(**actor_options)(_VLLMActor)
        self._cond = threading.Condition()
        self.engines: list = [None] * engines
        self.holder: list[str | None] = [None] * engines
        self.starts = self.replacements = self.leases = 0
        self.startup_s: list[float] = []
        self.info: dict = {}
        refs = [self._start(i) for i in range(engines)]
        for i, (actor, info_ref) in enumerate(refs):
            self.engines[i] = self._ready(actor, info_ref)

    def _start(self, index: int):
        """Start engine ``index`` in its bundle of the fleet's placement group (when there is one); TP > 1: in the
        first of its one-GPU bundles, holding none, its vLLM workers in them (``rollout.config.engine_placement``)."""
        opts, kwargs = {}, self.engine_kwargs
        if self.pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            from .config import engine_placement

            tp = int(kwargs.get("extra", {}).get("tensor_parallel_size", 1))
            bundle, opts, workers = engine_placement(index, tp, self.actor_options["num_gpus"],
                                                     self.actor_options["num_cpus"])
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=bundle)
            kwargs = {**kwargs, "worker_bundles": workers} if workers else kwargs
        actor = self._cls.options(**opts).remote(self.model_path, **kwargs)
        self.starts += 1
        return actor, actor.info.remote()

    def _ready(self, actor, info_ref):
        import ray

        info = ray.get(info_ref)
        if info.get("error"):
            ray.kill(actor)
            raise RuntimeError(info["error"])
        self.startup_s.append(round(info["startup_s"], 2))
        self.info = info
        return actor

    def lease(self, who: str, timeout_s: float | None = None):
        """(index, engine actor, engine info); blocks until one is free."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        with self._cond:
            while None not in self.holder:
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no free rollout engine for {who} after {timeout_s:g}s")
                self._cond.wait(left)
            i = self.holder.index(None)
            self.holder[i] = who
            self.leases += 1
            return i, self.engines[i], {**self.info, "index": i, "weight_sync": dict(self.sync)}

    def release(self, index: int) -> None:
        with self._cond:
            self.holder[index] = None
            self._cond.notify_all()

    def replace(self, index: int):
        """A fresh engine in slot ``index`` (the old one died); returns the new actor."""
        import ray

        with contextlib.suppress(Exception):     # it is dead already
            ray.kill(self.engines[index])
        self.engines[index] = self._ready(*self._start(index))
        self.replacements += 1
        return self.engines[index]

    def stats(self) -> dict:
        return {"engines": len(self.engines), "starts": self.starts, "replacements": self.replacements,
                "leases": self.leases, "startup_s": self.startup_s, "model": self.model_path,
                "holders": list(self.holder), "served": self.info.get("served"), "weight_sync": dict(self.sync),
                "actor_ids": [a._actor_id.hex() for a in self.engines]}

    def ping(self) -> bool:
        return True


def start_fleet(model_path: str, cfg, max_model_len: int, seed: int, name: str | None = None, pg=None):
    """Start the fleet actor (and its engines) from ``model_path``; ``cfg`` is a ``rollout.config.FleetConfig``;
    ``pg``: the fleet's placement group (one bundle per engine: its tensor-parallel GPUs), held for the run."""
    import ray

    kwargs = dict(dtype=cfg.dtype or ("bfloat16" if cfg.resources.num_gpus else "float32"),
                  kv_cache_bytes=int(cfg.kv_cache_gb * 2**30) if cfg.kv_cache_gb else None,
                  gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
                  max_logprobs=cfg.max_logprobs, enforce_eager=True,
                  extra={"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {},
                  return_routed_experts=cfg.return_routed_experts, fp4=cfg.fp4)
    actor_options = {"num_cpus": cfg.resources.num_cpus, "num_gpus": cfg.resources.num_gpus or 0}
    fleet_cls = ray.remote(num_cpus=0, max_concurrency=64)(Fleet)
    opts = {"name": name} if name else {}
    sync = {"mode": cfg.weight_sync, "bucket_mb": cfg.sync_bucket_mb, "engine_dtype": kwargs["dtype"]}
    return fleet_cls.options(**opts).remote(model_path, cfg.engines, kwargs, actor_options, pg, sync)


class LeasedEngine:
    """An engine of the fleet, leased for as long as this object is open (``rollout.engine.Engine``).

    ``weight_sync`` / ``sync_bucket_mb``: override the fleet's (``FleetConfig``) for this lease; ``form_timeout_s``
    bounds forming the collective group, ``sync_timeout_s`` one bucket's broadcast."""

    name = "vllm"

    def __init__(self, fleet, who: str, weight_sync: str | None = None, sync_bucket_mb: float | None = None,
                 form_timeout_s: float = FORM_TIMEOUT_S, sync_timeout_s: float = SYNC_TIMEOUT_S):
        import ray

        self.ray, self.fleet, self.who = ray, fleet, who
        self.index, self.actor, self.info = ray.get(fleet.lease.remote(who))
        self.fp4 = bool(self.info.get("fp4"))
        self.max_model_len = self.info.get("max_model_len")   # prompt + completion tokens a request may hold
        self.actor_id = self.actor._actor_id.hex()
        sync = self.info["weight_sync"]                        # the fleet's {mode, bucket_mb} (Fleet.lease)
        self.weight_sync = weight_sync or sync["mode"]
        if self.weight_sync not in SYNC_MODES:
            raise ValueError(f"weight_sync must be one of {', '.join(SYNC_MODES)}, got {self.weight_sync!r}")
        self.bucket_bytes = int(float(sync_bucket_mb or sync["bucket_mb"]) * 2**20)
        self.engine_dtype = sync.get("engine_dtype")             # the receiver casts floating tensors to it
        self.form_timeout_s, self.sync_timeout_s = form_timeout_s, sync_timeout_s
        self.collective = self.weight_sync == "collective"   # False after a fallback: object store for the lease
        self.fallback: str | None = None                       # why the lease fell back (one line)
        self.last_sync: dict = {}                              # path, seconds, bytes of the last push
        self._sender = None                                    # WeightSender / IpcSender once formed
        self._last = None          # object-store path: the ObjectRef of the last weights
        self._snapshot = None      # collective path: (plan, CPU copies of the buckets sent)
        self._pending: list = []   # sync calls abandoned after a timeout
        self.transport = self._choose_transport()              # rollout.transport: from where both ends run

    def describe(self) -> dict:
        """What a stage's manifest records about its rollout path."""
        return {"engine": "vllm", "fleet_index": self.index, "actor": self.actor_id, "fp4": self.fp4,
                "served": self.info.get("served"), "routed_experts": self.info.get("routed_experts", False),
                "moe_layers": self.info.get("moe_layers", []),
                "weight_sync": "collective" if self.collective else "object_store",
                "weight_sync_transport": self.transport,
                **({"weight_sync_fallback": self.fallback} if self.fallback else {})}

    def _call(self, fn):
        try:
            return self.ray.get(fn(self.actor))
        except self.ray.exceptions.RayActorError:        # the engine died: a fresh one, our weights, once more
            self._replace()
            self._repush()
            return self.ray.get(fn(self.actor))

    def _replace(self) -> None:
        self._drop_group(tell_engine=False)
        self.actor = self.ray.get(self.fleet.replace.remote(self.index))
        self.actor_id = self.actor._actor_id.hex()

    def _repush(self) -> None:
        """The last weights again (into a replaced engine), by whichever path works."""
        if self._snapshot is not None:
            from .weight_sync import unflatten

            plan, flats = self._snapshot
            self._push(unflatten(plan, flats))
        elif self._last is not None:
            self.ray.get(self.actor.load_weights.remote(self._last))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        outs = self._call(lambda a: a.generate.remote([list(p) for p in prompts], params))
        for c in (c for comps in outs for c in comps):     # Ray hands numpy arrays back read-only (zero-copy)
            if c.routed_experts is not None and not c.routed_experts.flags.writeable:
                c.routed_experts = c.routed_experts.copy()
        return outs

    def load_weights(self, state_dict: dict) -> float:
        """Push ``state_dict`` into the engine (collective group, else the object store); returns seconds."""
        t = time.perf_counter()
        sd = state_dict if isinstance(state_dict, RolloutWeights) else {k: v.detach() for k, v in state_dict.items()}
        try:
            self._push(sd)
        except self.ray.exceptions.RayActorError:        # the engine died during the push: a fresh one, these weights
            self._replace()
            self._push(sd)
        self.last_sync["s"] = time.perf_counter() - t
        return self.last_sync["s"]

    def _push(self, sd: dict) -> None:
        if self.collective:
            try:
                self._push_collective(sd)
                return
            except SyncError as e:
                self._fall_back(str(e))
        self._push_object_store(sd)

    def _push_object_store(self, sd: dict) -> None:
        if isinstance(sd, RolloutWeights):                 # bucket by bucket onto the CPU, in the wire dtype
            cpu = sd.materialize("cpu")
        else:
            cpu = {k: v.to("cpu", copy=False).contiguous() for k, v in sd.items()}
        self._last, self._snapshot = self.ray.put(cpu), None
        self.ray.get(self.actor.load_weights.remote(self._last))
        self.last_sync = {"path": "object_store", "bytes": sum(v.numel() * v.element_size() for v in cpu.values())}
        self._collect_pending()

    def _collect_pending(self) -> None:
        """Consume the results of abandoned sync calls (the engine runs calls in order: they are done by now)."""
        pending, self._pending = self._pending, []
        for ref in pending:
            try:
                self.ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 -- their failure was handled (the fallback) when they were abandoned
                pass

    def _fall_back(self, why: str) -> None:
        self._drop_group()
        self.collective, self.fallback = False, why
        log.warning(f"[{self.who}] weight sync: collective group unavailable, using the object store for this "
                    f"lease: {why}")

    # -------------------------------------------------------------------------------- the collective path
    def _choose_transport(self) -> str:
        """nccl / gloo / cuda_ipc / object_store for this lease (``rollout.transport.choose_transport``), named in
        ``describe()`` (the manifest) and one log line; the object store, when chosen for a collective lease, is a
        fallback and says why."""
        import torch.distributed as dist

        from core.where import where

        from .transport import Side, choose_transport

        here = where()
        learner = Side.of(here, on_cpu=False) if use_cuda() else Side(here.get("ip"))
        engine = Side.of(self.info.get("where"), on_cpu=self.info.get("on_cpu", True))
        transport, why = choose_transport(self.weight_sync, learner, engine, nccl=dist.is_nccl_available(),
                                          ipc=True)
        if transport == "object_store" and self.collective:
            self._fall_back(why)
        else:
            log.info(f"[{getattr(self, 'who', 'lease')}] weight sync: {transport} ({why})")
        return transport

    def _backend(self) -> str:
        return self.transport if self.transport in ("nccl", "cuda_ipc") else "gloo"

    def _form(self) -> None:
        """Form the lease's group: open the store here, have the engine join (asynchronously), join ourselves."""
        from ray.util import get_node_ip_address

        from .weight_sync import IpcSender, WeightSender

        if self._backend() == "cuda_ipc":
            sender = IpcSender(timeout_s=self.form_timeout_s, sync_timeout_s=self.sync_timeout_s)
        else:
            sender = WeightSender(get_node_ip_address(), self._backend(), self.form_timeout_s, self.sync_timeout_s)
        ref = self.actor.sync_join.remote(**sender.join_args())
        try:
            sender.connect()
        except SyncError as ours:
            try:
                self._outcome(ref, self.form_timeout_s)   # the engine died (RayActorError), else its side's error
            except SyncError as theirs:
                raise SyncError(f"{ours}; the engine: {theirs}") from ours
            raise
        try:
            self._outcome(ref, self.form_timeout_s)
        except BaseException:
            sender.close()
            raise
        self._sender = sender

    def _outcome(self, ref, timeout_s: float):
        """``ray.get(ref)``: a dead engine raises RayActorError; a transport failure on its side SyncError."""
        try:
            return self.ray.get(ref, timeout=timeout_s)
        except self.ray.exceptions.RayActorError:
            raise
        except self.ray.exceptions.GetTimeoutError as e:
            self._pending.append(ref)               # collected later: no "unhandled error" from Ray when it fails
            raise SyncError(f"no answer within {timeout_s:g}s") from e
        except self.ray.exceptions.RayTaskError as e:
            if isinstance(e, SyncError):
                raise SyncError(str(e).strip().splitlines()[-1]) from e
            raise

    def _push_collective(self, sd: dict) -> None:
        from .weight_sync import plan_for

        if self._sender is None:
            self._form()
        plan = plan_for(sd, self.bucket_bytes, self.engine_dtype)
        if self._sender.backend == "cuda_ipc":
            return self._push_ipc(plan, sd)
        ref = self.actor.sync_receive.remote(plan)            # the engine posts its receives first
        try:
            flats = self._sender.send(plan, sd, keep=True)
        except SyncError:
            self._drop_group(tell_engine=False)               # the engine's receive fails at once, not at its timeout
            self._outcome(ref, self.sync_timeout_s)           # a dead engine: RayActorError
            raise
        try:
            info = self._outcome(ref, self.sync_timeout_s + 600)   # + the in-place reload
        except SyncError:
            self._drop_group(tell_engine=False)
            raise
        self._snapshot, self._last = (plan, flats), None
        self.last_sync = {"path": "collective", "backend": self._sender.backend, "bytes": plan.nbytes,
                          "buckets": len(plan.buckets), **info}

    def _push_ipc(self, plan, sd) -> None:
        """CUDA IPC: export every bucket, hand the engine the handles, wait for its acknowledgement (the reload
        done), then free the buckets (keeping their CPU copies for a replaced engine)."""
        ipc_plan = self._sender.share(plan, sd)               # SyncError: nothing exported, the lease falls back
        try:
            info = self._outcome(self.actor.sync_receive.remote(ipc_plan), self.sync_timeout_s + 600)
        except BaseException:
            self._sender.release(keep=False)                  # (after a timeout the engine may still read them:
            raise                                             #  ipc_collect frees a block only once it let go)
        flats = self._sender.release(keep=True)
        self._snapshot, self._last = (plan, flats), None
        self.last_sync = {"path": "collective", "backend": "cuda_ipc", "bytes": plan.nbytes,
                          "buckets": len(plan.buckets), **info}

    def _drop_group(self, tell_engine: bool = True) -> None:
        sender, self._sender = self._sender, None
        if sender is None:
            return
        if tell_engine:
            with contextlib.suppress(Exception):     # the engine is gone or busy: its side times out on its own
                self.ray.get(self.actor.sync_close.remote(), timeout=10)
        sender.close()

    def close(self) -> None:
        self._drop_group()
        self._collect_pending()
        if self.index is not None:
            self.ray.get(self.fleet.release.remote(self.index))
            self.index = None
