"""The ``vllm`` engine: vLLM's offline ``LLM`` inside a Ray actor, with in-place weight sync.

``VLLMEngine`` is a thin client; ``_VLLMActor`` (a ``ray.remote`` class) owns the ``vllm.LLM``. The actor sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before importing vLLM, so the engine core and its single worker run inside the
actor process: no ``spawn`` of engine processes (the caller needs no ``if __name__ == "__main__":`` guard), and
``collective_rpc`` hands tensors to the worker by reference instead of serializing them. It also sets
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` so ``collective_rpc`` accepts our module-level sync function (only the
actor's private engine sees it). Tensor parallelism > 1 would need vLLM's multiprocess executor and the NCCL
weight-transfer engine instead; not done here.

Sampling: ``SamplingParams`` maps one-to-one (``top_k=0`` means "off" in vLLM 0.32 as here). The engine runs with
``logprobs_mode="processed_logprobs"``, so the log-prob of each sampled token is taken from the distribution the
sampler actually drew from (after temperature, top-k, top-p), which is what the learner compares against; for
greedy requests vLLM reports the plain log-softmax of the logits (as the ``hf`` engine does).

Keep Sampling Mask: vLLM 0.32's own ``return_sampling_mask`` needs Model Runner V2 (Triton; not on CPU) and rejects
greedy or ``top_k=0`` requests engine-wide, so it is not used. Instead, when ``return_sampling_mask`` is asked and
``0 < top_k <= max_logprobs``, the engine requests the top-``top_k`` processed log-probs per step: the entries that
are finite are exactly the tokens top-k/top-p kept (the mask is exact, ascending ids). With ``top_k=0`` and
``top_p < 1`` (unbounded support), ``sampling_mask`` is ``None`` and the learner rebuilds the mask from its own
logits with ``rollout.hf_engine.process_logits(logits, temperature, top_k, top_p)``.

Weight sync (``load_weights``; no disk round trip) — see docs/rollout.md, "The vLLM engine and weight sync":

* both devices go through vLLM's in-place reload, ``Worker.reload_weights(weights_iterator=...,
  is_checkpoint_format=True)`` (``vllm/model_executor/model_loader/reload/inplace.py``): each layer is restored on
  the meta device, re-materialized, loaded with the checkpoint-format tensors, re-processed with
  ``process_weights_after_loading`` (on CPU this rebuilds the oneDNN / sgl packed-GEMM handles of every linear, see
  ``dispatch_cpu_unquantized_gemm``), and its processed values are copied into the original storage;
* CPU only: vLLM 0.32 skips the CPU MoE prepack on a reload (``UnquantizedFusedMoEMethod._setup_kernel`` only runs
  ``moe_kernel.fused_experts.process_weights_after_loading`` — ``cpu_prepack_moe_weight`` — when ``moe_kernel is
  None``, i.e. on the first load), so unpacked expert weights would be copied into the packed buffers and the MoE
  layers would compute garbage. ``_worker_reload`` resets ``quant_method.moe_kernel = None`` on every MoE layer
  first, which makes the reload take the first-load path (rebuild kernel + prepack) for the experts;
* afterwards the prefix cache is reset (its KV blocks were computed with the old weights).

The learner's transformers-5 state dict (fused 3-D experts ``mlp.experts.gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``) is split into the per-expert checkpoint names vLLM loads (``experts.<e>.gate_proj.weight``
...) inside the actor. ``quantized=True``: on CPU the tensors are expected already MXFP4-dequantized (from
``rollout.fp4.quantized_state_dict``) and are loaded as they are; on GPU, where the engine serves a compressed-tensors
``MXFP4A16`` checkpoint, the FP4 targets are packed (``weight_packed`` / ``weight_scale``) before the reload.
"""
from __future__ import annotations

import os
import re
import time
from typing import Iterable, Iterator

import torch

from .engine import Completion, SamplingParams, register_engine

_ACTOR_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",      # engine core + worker in the actor process (no spawn)
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",   # collective_rpc with our sync function
    "TOKENIZERS_PARALLELISM": "false",
}

_FUSED_EXPERTS = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<proj>gate_up_proj|down_proj)$")


def to_checkpoint_format(items: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers-5 names -> checkpoint names vLLM's loaders expect (fused 3-D experts split per expert)."""
    for name, t in items:
        m = _FUSED_EXPERTS.match(name)
        if m is None or t.ndim != 3:
            yield name, t
            continue
        prefix = m.group("prefix")
        if m.group("proj") == "gate_up_proj":          # [E, 2I, H]: gate rows first, then up
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                yield f"{prefix}.{e}.gate_proj.weight", t[e, :inter]
                yield f"{prefix}.{e}.up_proj.weight", t[e, inter:]
        else:                                           # [E, H, I]
            for e in range(t.shape[0]):
                yield f"{prefix}.{e}.down_proj.weight", t[e]


def pack_mxfp4_targets(items: Iterable[tuple[str, torch.Tensor]],
                       patterns: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """GPU FP4 path: checkpoint-format tensors -> compressed-tensors ``mxfp4-pack-quantized`` names for targets."""
    from .fp4 import quantize_mxfp4

    pats = [re.compile(p) for p in patterns]
    for name, t in items:
        if name.endswith(".weight") and any(p.search(name) for p in pats):
            packed, scales = quantize_mxfp4(t)
            base = name[: -len(".weight")]
            yield f"{base}.weight_packed", packed
            yield f"{base}.weight_scale", scales
        else:
            yield name, t


def _worker_reload(worker, weights: list[tuple[str, torch.Tensor]], reset_moe_kernels: bool) -> int:
    """Runs inside the vLLM worker (via ``collective_rpc``): in-place reload of checkpoint-format weights."""
    if reset_moe_kernels:
        # vLLM 0.32 CPU: make the reload re-run the MoE prepack (see module docstring).
        for module in worker.get_model().modules():
            qm = getattr(module, "quant_method", None)
            if qm is not None and hasattr(qm, "moe_kernel"):
                qm.moe_kernel = None
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    return len(weights)


class _VLLMActor:
    """Owns the ``vllm.LLM``; wrapped with ``ray.remote`` by ``VLLMEngine``."""

    def __init__(self, model_path: str, dtype: str, gpu_memory_utilization: float, max_model_len: int,
                 seed: int, max_logprobs: int, enforce_eager: bool, extra: dict):
        os.environ.update(_ACTOR_ENV)
        from vllm import LLM

        t = time.perf_counter()
        self.llm = LLM(model=model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                       logprobs_mode="processed_logprobs", max_logprobs=max_logprobs, **extra)
        self.tokenizer = self.llm.get_tokenizer()
        self.on_cpu = not torch.cuda.is_available()
        self.max_logprobs = max_logprobs
        # First logprobs request torch.compiles vLLM's rank kernel (~25 s on CPU): pay it at start-up.
        self._generate([[self.tokenizer.eos_token_id or 0]], SamplingParams(max_tokens=2, temperature=0.0))
        self.startup_s = time.perf_counter() - t

    def info(self) -> dict:
        return {"startup_s": self.startup_s, "on_cpu": self.on_cpu, "eos_token_id": self.tokenizer.eos_token_id}

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        truncated = not params.greedy and (params.top_k > 0 or params.top_p < 1.0)
        mask_k = params.top_k if (params.return_sampling_mask and truncated
                                  and 0 < params.top_k <= self.max_logprobs) else 0
        sps = []
        for i in range(len(prompts)):
            seed = None if params.seed is None else params.seed + i * params.n   # children add 0..n-1
            sps.append(VSP(n=params.n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                           max_tokens=params.max_tokens, stop=list(params.stop) or None, seed=seed,
                           logprobs=mask_k, include_stop_str_in_output=True, skip_special_tokens=False,
                           spaces_between_special_tokens=False))
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sps, use_tqdm=False)
        result = []
        for pi, (p, out) in enumerate(zip(prompts, outs)):
            comps = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                lps = [step[t].logprob for step, t in zip(o.logprobs, ids)]
                mask = None
                if mask_k:
                    mask = [sorted(tok for tok, lp in step.items() if lp.logprob != float("-inf")) for step in o.logprobs]
                comps.append(Completion(
                    prompt_ids=list(p), token_ids=ids,
                    text=self.tokenizer.decode(ids, skip_special_tokens=False), logprobs=lps,
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    sampling_mask=mask, prompt_index=pi))
            result.append(comps)
        return result

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self._generate(prompts, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor], quantized: bool, fp4_patterns) -> float:
        t = time.perf_counter()
        items = to_checkpoint_format(state_dict.items())
        if quantized and not self.on_cpu:
            items = pack_mxfp4_targets(items, fp4_patterns)
        # CPU (and FP4-on-CPU: dequantized tensors, loaded as they are) and GPU share vLLM's in-place reload;
        # only the CPU backend needs the MoE-prepack workaround.
        self.llm.collective_rpc(_worker_reload, args=(list(items), self.on_cpu))
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t


class VLLMEngine:
    """Thin client over a ``_VLLMActor``; the interface the stages use (see ``rollout.engine.Engine``)."""

    name = "vllm"

    def __init__(self, model_path: str, dtype: str | torch.dtype | None = None,
                 gpu_memory_utilization: float = 0.05, max_model_len: int = 2048, seed: int = 0,
                 max_logprobs: int = 64, quantized: bool = False, fp4_patterns: Iterable[str] | None = None,
                 enforce_eager: bool = True, num_cpus: float = 1, num_gpus: float | None = None, **vllm_kwargs):
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        on_gpu = torch.cuda.is_available() if num_gpus is None else num_gpus > 0
        if dtype is None:
            dtype = "bfloat16" if on_gpu else "float32"
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if fp4_patterns is None:
            from .fp4 import MOE_EXPERT_PATTERNS
            fp4_patterns = MOE_EXPERT_PATTERNS
        self.quantized = quantized
        self.fp4_patterns = tuple(fp4_patterns)
        actor_cls = ray.remote(num_cpus=num_cpus, num_gpus=1 if on_gpu else 0)(_VLLMActor)
        self._actor = actor_cls.remote(str(model_path), dtype, gpu_memory_utilization, max_model_len, seed,
                                       max_logprobs, enforce_eager, vllm_kwargs)
        self.info = ray.get(self._actor.info.remote())
        self.startup_s = self.info["startup_s"]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import ray

        return ray.get(self._actor.generate.remote([list(p) for p in prompts], params))

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> float:
        """Push the learner's weights into the running engine; returns seconds (transfer + in-place reload)."""
        import ray

        t = time.perf_counter()
        sd = {k: v.detach().to("cpu", copy=False).contiguous() for k, v in state_dict.items()}
        ray.get(self._actor.load_weights.remote(sd, self.quantized, self.fp4_patterns))
        return time.perf_counter() - t

    def close(self) -> None:
        import ray

        if self._actor is not None:
            ray.kill(self._actor)
            self._actor = None


@register_engine("vllm")
def make_vllm_engine(**kwargs) -> VLLMEngine:
    return VLLMEngine(**kwargs)
