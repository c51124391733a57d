"""Configs of the rollout layer: how to sample, which engine serves a stage, how a stage's GPUs are shared."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import WORLD_SIZE, Strict, identity, operational

HF_MAX_BATCH = 256
SPLIT_WORLD_SIZE = f"{WORLD_SIZE} in a stage with teachers (distill: split takes their GPUs from the learner)"
FLEET_DTYPE = "the fleet's dtype where fleet.dtype is unset (bfloat16 on GPU, float32 on CPU)"


class Sampling(Strict):
    temperature: float = Field(1.0, ge=0)   # DeepSeek's recommendation: 1.0 / 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)             # 0 = off

    @property
    def truncating(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


class EngineConfig(Strict):
    """The engine a stage samples with: ``vllm`` leases one of the run's fleet (the ``fleet`` section: started once
    per run, FP4 as the fleet serves it); ``hf`` is the in-process transformers engine (the fallback)."""
    kind: Literal["hf", "vllm"] = "hf"
    fp4: bool = False                       # hf: roll out with MXFP4 weights; vllm: must equal fleet.fp4
    max_batch: int = Field(HF_MAX_BATCH, ge=1)   # hf: sequences per generate call (it orders the sampler's
    #                                              random draws: in the stage hash); vllm: rejected (no effect)

    @model_validator(mode="after")
    def _max_batch_acts(self):
        if self.kind == "vllm" and self.max_batch != HF_MAX_BATCH:
            raise ValueError("max_batch: has no effect with kind vllm (the fleet's engines schedule their own "
                             "batches); it sets the hf engine's generate calls: remove it")
        return self


class EngineResources(Strict):
    """What one engine actor asks Ray for (0 CPUs: engines do not hold cores the stages need between rollouts)."""
    num_cpus: float = Field(0, ge=0)
    num_gpus: float = operational(Field(0, ge=0), sets=FLEET_DTYPE)   # GPUs per engine (its tensor-parallel group)


class FleetConfig(Strict):
    """vLLM engines started once per `pipeline run` and leased by every stage whose engine is ``vllm``
    (rollout/fleet.py). Its identity fields shape the samples: they are in the hash of every stage that samples with
    the fleet (``rollout_identity``); which engine serves a request does not (requests carry their own seeds)."""
    engines: int = operational(Field(1, ge=1))
    fp4: bool = True                        # serve MXFP4 weights: packed MXFP4A16 on GPU, exact dequantized on CPU
    dtype: Literal["float32", "bfloat16"] | None = None   # default: bfloat16 on GPU, float32 on CPU
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=16)   # default: prompt allowance + the largest mode budget
    max_logprobs: int = Field(64, ge=1)     # per-token logprobs vLLM may return: bounds the Keep-Sampling-Mask set
    return_routed_experts: bool = True      # the experts each token was routed to, for Keep Routing
    kv_cache_gb: float | None = operational(Field(None, gt=0))   # KV cache per engine; default 0.25 on CPU,
    #                                                              profiled within gpu_memory_utilization on GPU
    gpu_memory_utilization: float = operational(Field(0.9, gt=0, le=1))   # GPU only: vLLM's share of each GPU
    resources: EngineResources = operational(EngineResources())   # per engine, held for the whole run
    weight_sync: Literal["collective", "object_store"] = operational("collective")   # collective: gloo/NCCL, per lease
    sync_bucket_mb: float = operational(Field(64, gt=0))   # collective: MiB per broadcast bucket (per dtype)

    @property
    def resolved_dtype(self) -> str:
        """What the engines run in: ``dtype``, else bfloat16 when they have GPUs, float32 on CPU."""
        return self.dtype or ("bfloat16" if self.resources.num_gpus else "float32")

    def rollout_identity(self) -> dict:
        """What of the fleet a stage that samples with it depends on: the identity fields, ``dtype`` resolved."""
        return {**identity(self), "dtype": self.resolved_dtype}


class Placement(Strict):
    """How a stage's GPUs are shared by its actors: the learner's ranks and (distill) the teachers; the rollout
    engines are the fleet's. See docs/scaling.md. Operational: where actors sit does not change what they compute --
    but ``split`` takes the teachers' GPUs from the learner, and the learner's world size is in the stage hash."""
    # colocate: teachers on the learner's GPUs; split: their own (distill: taken from the learner's)
    strategy: Literal["colocate", "split"] = operational("colocate", sets=SPLIT_WORLD_SIZE)
    teacher_gpus: int | None = operational(Field(None, ge=0), sets=SPLIT_WORLD_SIZE)   # split: default a quarter


def engine_bundles(tp: int, num_gpus: float, num_cpus: float) -> list[dict]:
    """The Ray bundles of one engine. TP 1: one bundle with the engine's CPUs and GPU share (a fraction allowed),
    the actor's own. TP > 1: ``tp`` bundles of one GPU each, the engine's CPUs in the first (where its actor runs):
    vLLM's Ray executor puts one worker in each GPU bundle and refuses a bundle of more than one GPU. Raises
    ValueError when TP > 1 and the engine's GPUs are not exactly ``tp``."""
    cpu = {"CPU": float(num_cpus)} if num_cpus else {}
    if tp <= 1:
        return [{**cpu, **({"GPU": float(num_gpus)} if num_gpus else {})}]
    if num_gpus != tp:
        raise ValueError(f"fleet.resources.num_gpus: {num_gpus:g} GPU(s) per engine, but fleet.tensor_parallel_size "
                         f"{tp} needs exactly {tp} (one GPU per tensor-parallel worker)")
    return [{**cpu, "GPU": 1.0}] + [{"GPU": 1.0} for _ in range(tp - 1)]


def engine_placement(index: int, tp: int, num_gpus: float, num_cpus: float) -> tuple[int, dict, list[int] | None]:
    """Engine ``index`` of a group made of :func:`engine_bundles` per engine, in order: the bundle its actor goes
    in, what the actor asks of it (``num_cpus``, ``num_gpus``), and for TP > 1 the bundles of its vLLM workers."""
    per = len(engine_bundles(tp, num_gpus, num_cpus))
    first = index * per
    if tp <= 1:
        return first, {"num_cpus": num_cpus, "num_gpus": num_gpus}, None
    return first, {"num_cpus": num_cpus, "num_gpus": 0}, list(range(first, first + per))
