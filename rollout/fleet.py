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
wrong sample. ``Fleet.stats()`` reports starts, replacements and leases; the runner writes them to
``<run_dir>/fleet.json``.

FP4: ``fp4`` is a property of the fleet. On a GPU the engines serve the compressed-tensors ``MXFP4A16`` checkpoint
``pipeline export --format mxfp4`` writes (the fleet starts them from such an export of the starting model, so the
packed ``weight_packed``/``weight_scale`` names exist) and every weight push is packed; on CPU, where vLLM has no FP4
kernels, they serve the exact MXFP4-dequantized values (``served`` in ``info`` says which).
"""
from __future__ import annotations

import threading
import time

from .engine import Completion, SamplingParams


class Fleet:
    """Owns the engine actors; ``lease``/``release``/``replace``. Wrapped with ``ray.remote`` (threaded) by
    ``start_fleet``."""

    def __init__(self, model_path: str, engines: int, engine_kwargs: dict, actor_options: dict):
        import ray

        from .vllm_engine import _VLLMActor

        self.model_path, self.engine_kwargs, self.actor_options = model_path, engine_kwargs, actor_options
        self._cls = ray.remote(**actor_options)(_VLLMActor)
        self._cond = threading.Condition()
        self.engines: list = [None] * engines
        self.holder: list[str | None] = [None] * engines
        self.starts = self.replacements = self.leases = 0
        self.startup_s: list[float] = []
        self.info: dict = {}
        refs = [self._start() for _ in range(engines)]
        for i, (actor, info_ref) in enumerate(refs):
            self.engines[i] = self._ready(actor, info_ref)

    def _start(self):
        actor = self._cls.remote(self.model_path, **self.engine_kwargs)
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
            return i, self.engines[i], {**self.info, "index": i}

    def release(self, index: int) -> None:
        with self._cond:
            self.holder[index] = None
            self._cond.notify_all()

    def replace(self, index: int):
        """A fresh engine in slot ``index`` (the old one died); returns the new actor."""
        import ray

        try:
            ray.kill(self.engines[index])
        except Exception:  # noqa: BLE001 — it is dead already
            pass
        self.engines[index] = self._ready(*self._start())
        self.replacements += 1
        return self.engines[index]

    def stats(self) -> dict:
        return {"engines": len(self.engines), "starts": self.starts, "replacements": self.replacements,
                "leases": self.leases, "startup_s": self.startup_s, "model": self.model_path,
                "holders": list(self.holder), "served": self.info.get("served"),
                "actor_ids": [a._actor_id.hex() for a in self.engines]}

    def ping(self) -> bool:
        return True


def start_fleet(model_path: str, cfg, max_model_len: int, seed: int, name: str | None = None):
    """Start the fleet actor (and its engines) from ``model_path``; ``cfg`` is a ``rollout.config.FleetConfig``."""
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
    fleet = fleet_cls.options(**opts).remote(model_path, cfg.engines, kwargs, actor_options)
    ray.get(fleet.ping.remote())
    return fleet


class LeasedEngine:
    """An engine of the fleet, leased for as long as this object is open (``rollout.engine.Engine``)."""

    name = "vllm"

    def __init__(self, fleet, who: str):
        import ray

        self.ray, self.fleet, self.who = ray, fleet, who
        self.index, self.actor, self.info = ray.get(fleet.lease.remote(who))
        self.fp4 = bool(self.info.get("fp4"))
        self.actor_id = self.actor._actor_id.hex()
        self._last = None

    def describe(self) -> dict:
        """What a stage's manifest records about its rollout path."""
        return {"engine": "vllm", "fleet_index": self.index, "actor": self.actor_id, "fp4": self.fp4,
                "served": self.info.get("served"), "routed_experts": self.info.get("routed_experts", False),
                "moe_layers": self.info.get("moe_layers", [])}

    def _call(self, fn):
        try:
            return self.ray.get(fn(self.actor))
        except self.ray.exceptions.RayActorError:        # the engine died: a fresh one, our weights, once more
            self.actor = self.ray.get(self.fleet.replace.remote(self.index))
            self.actor_id = self.actor._actor_id.hex()
            if self._last is not None:
                self.ray.get(self.actor.load_weights.remote(self._last))
            return self.ray.get(fn(self.actor))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        outs = self._call(lambda a: a.generate.remote([list(p) for p in prompts], params))
        for comps in outs:                       # Ray hands numpy arrays back read-only (zero-copy): own them
            for c in comps:
                if c.routed_experts is not None and not c.routed_experts.flags.writeable:
                    c.routed_experts = c.routed_experts.copy()
        return outs

    def load_weights(self, state_dict: dict) -> float:
        t = time.perf_counter()
        sd = {k: v.detach().to("cpu", copy=False).contiguous() for k, v in state_dict.items()}
        self._last = self.ray.put(sd)
        self._call(lambda a: a.load_weights.remote(self._last))
        return time.perf_counter() - t

    def close(self) -> None:
        if self.index is not None:
            self.ray.get(self.fleet.release.remote(self.index))
            self.index = None
