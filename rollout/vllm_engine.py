"""The ``vllm`` engine: vLLM's offline ``LLM`` inside a Ray actor, with in-place weight sync.

``VLLMEngine`` is a thin client; ``_VLLMActor`` (a ``ray.remote`` class) owns the ``vllm.LLM``. The actor sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before importing vLLM, so the engine core and its single worker run inside the
actor process: no ``spawn`` of engine processes (the caller needs no ``if __name__ == "__main__":`` guard), and
``collective_rpc`` hands tensors to the worker by reference instead of serializing them. It also sets
``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` so ``collective_rpc`` accepts our module-level sync function (only the
actor's private engine sees it).

Tensor parallelism > 1 (GPU only; written against vLLM 0.32's Ray executors, never run on a GPU): the engine runs
vLLM's own Ray executor (``distributed_executor_backend="ray"``) inside a placement group of one bundle per GPU
(``rollout.config.engine_bundles``): vLLM refuses a bundle of more than one GPU and places one worker actor per GPU
bundle (``initialize_ray_cluster`` and the executors in ``vllm/v1/executor/ray_utils.py``, ``ray_executor*.py``).
The engine actor sits in the first of its bundles holding the engine's CPUs and no GPU (its workers hold them);
vLLM takes the actor's placement group as its own (``EngineArgs.create_engine_config``:
``ray.util.get_current_placement_group()`` inside a Ray actor), and ``VLLM_RAY_BUNDLE_INDICES`` names the engine's
bundles in a group that holds several engines (the fleet's: ``rollout.config.engine_placement``). Weight syncs land
in the actor's host memory and reach the workers through ``collective_rpc``. TP 1 engines run in the actor process.

Memory (absolute, never a fraction of what a machine reports): the KV cache is ``kv_cache_bytes``, handed to vLLM as
its ``kv_cache_memory_bytes`` engine argument (``CacheConfig.kv_cache_memory_bytes``; vLLM's CPU KV-cache-space
setting). On CPU it defaults to ``DEFAULT_KV_CACHE_BYTES`` (256 MiB, see there) and ``gpu_memory_utilization`` is
not used: vLLM's CPU backend would otherwise read it as a fraction of the NUMA node's memory (``CPUWorker.__init__``
and ``determine_available_memory`` in ``vllm/v1/worker/cpu_worker.py``), and nodes differ between machines of one
size. With an explicit size, ``CPUWorker`` skips the fraction check, compares only the KV bytes with the node's
available memory (weights already loaded) and also skips its warm-up pass (eager mode). On GPU, ``kv_cache_bytes``
is used when given (vLLM skips its memory profiling, ``Worker.determine_available_memory`` in ``gpu_worker.py``);
``gpu_memory_utilization`` stays for GPUs only (profiling when ``kv_cache_bytes`` is None, and vLLM's start-up check
that the GPU has that fraction free). The actor removes ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB; it would override the
engine argument in ``CpuPlatform.check_and_update_config``) from its environment. An engine that cannot start raises
``EngineStartError``: one line naming the engine, the model, the KV memory asked for and the memory found.

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

Keep Routing (``return_routed_experts=True`` at start, then ``SamplingParams.return_routed_experts`` per request):
``Completion.routed_experts`` in the layout of ``rollout.routes`` (int16 ``[prompt + completion - 1, MoE layers,
k]``, prompt positions included; the MoE layers only, in model order). A request that asks for routes from an
engine started without the option is a one-line ``ValueError``: the option changes how the engine runs.

* GPU: vLLM's own routed-experts output (``enable_return_routed_experts``; ``CompletionOutput.routed_experts``
  ``[seq_len - 1, every decoder layer, k]``, captured at ``BaseRouter._select_experts``). Its layer axis is every
  decoder layer (``RoutedExpertsCapturer`` sizes it with ``get_total_num_hidden_layers()`` and indexes it with
  ``MoERunner.layer_id``); the engine keeps the rows of the MoE layers (``_worker_moe_layers``).
* CPU: vLLM 0.32's own output does not work there. ``VllmConfig._verify_aux_output_compatibility``
  (``vllm/config/vllm.py:1144-1150``) rejects the option without Model Runner V2 ("AuxOutput Connector requires
  Model Runner V2; set VLLM_USE_V2_MODEL_RUNNER=1"), and forcing V2 fails in ``_validate_v2_model_runner``
  (``vllm/config/vllm.py:3189-3190``, "Model Runner V2 requires Triton.") because the installed Triton has no CPU
  backend (``vllm/triton_utils/importing.py:37-48`` sets ``HAS_TRITON = False``); the aux-output path is only wired
  into V2 (``vllm/v1/worker/gpu/model_runner.py:801-804``). Both fail at ``LLM()`` construction, in < 1 s.
  Instead the engine installs its own capture in the worker (``_WorkerRoutes``), on the hook vLLM's capture uses:
  ``BaseRouter.set_capture_fn`` (called with the logical expert ids of every routed token,
  ``fused_moe/router/base_router.py:296``; the CPU backend's ``CPURouter`` is one) on every MoE layer, plus a
  wrapper of the V1 runner's ``_model_forward`` that reads which request and position each token row belongs to
  (``input_batch.req_ids``, ``query_start_loc``, the ``positions`` it is called with). Rows are keyed by position,
  so chunked prefill and a recompute after preemption land where they belong. Prefix caching is turned off in such
  an engine (a cached prefix is never run, so it would have no routes), which also means the ``n`` samples of a
  group each run their own prefill. Tested in eager mode (the engine's default ``enforce_eager=True``).

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
import time
from typing import Iterable

import torch

from core.where import use_cuda, where

from .config import engine_bundles, engine_placement
from .engine import Completion, SamplingParams
from .routes import engine_routes
from .vllm_memory import DEFAULT_KV_CACHE_BYTES, EngineStartError, _kv_asked, memory_found, node_memory, start_error_message
from .vllm_worker import (_CHILD_ID, _worker_install_routes, _worker_kv_cache, _worker_moe_layers, _worker_reload,
                          _worker_routes_enable, _worker_routes_take, assemble_routes, native_routes,
                          pack_mxfp4_targets, to_checkpoint_format)

_ACTOR_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",      # engine core + worker in the actor process (no spawn)
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",   # collective_rpc with our sync function
    "TOKENIZERS_PARALLELISM": "false",
}

ROUTES_NOT_STARTED = ("vllm engine: SamplingParams.return_routed_experts needs an engine started with "
                      "return_routed_experts=True")


def engine_fp4_patterns(checkpoint_names: Iterable[str], given: Iterable[str] | None = None) -> tuple[str, ...]:
    """The patterns the engine packs MXFP4 with (``pack_mxfp4_targets``) for a weight push of these checkpoint-format
    names: ``given``, else ``rollout.fp4.target_patterns`` -- the rule the learner's QAT uses (the routed experts of
    an MoE model, the MLP projections of a dense one). It used to be the experts' patterns always, which packed
    nothing of a dense model the learner had trained with MXFP4 fake-quant on its MLP."""
    from .fp4 import target_patterns

    return tuple(given) if given is not None else target_patterns(checkpoint_names)


def fp4_coverage(shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """``{clean parameter name: shape}`` of a model (a learner's names, e.g. from a checkpoint's header) -> (the
    weights the learner's ``qat: mxfp4`` fake-quantizes, the weights the engine packs as MXFP4 on a weight push, as
    the learner's names). The engine side runs the engine's own path on meta tensors: ``to_checkpoint_format``,
    :func:`engine_fp4_patterns`, ``pack_mxfp4_targets``. Raises ValueError for a QAT target MXFP4 cannot hold."""
    from .export import checkpoint_key_to_param
    from .fp4 import select_target_names

    qat = sorted(select_target_names(shapes))
    items = list(to_checkpoint_format((n, torch.empty(s, device="meta")) for n, s in shapes.items()))
    packed = [n.removesuffix("_packed") for n, _ in
              pack_mxfp4_targets(items, engine_fp4_patterns([n for n, _ in items])) if n.endswith(".weight_packed")]
    names = set(shapes)
    engine = sorted({checkpoint_key_to_param(n, names) or n for n in packed})
    return qat, engine


def tp_engine_args(extra: dict, worker_bundles: list[int] | None) -> dict:
    """For TP > 1: vLLM's Ray executor, its workers in ``worker_bundles`` of the actor's placement group
    (``VLLM_RAY_BUNDLE_INDICES``, read by both of vLLM 0.32's Ray executors); ``extra`` unchanged for TP 1. Sets the
    variable in this process (the engine actor's), before vLLM reads it."""
    if int(extra.get("tensor_parallel_size", 1)) <= 1:
        return extra
    if worker_bundles:
        os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, worker_bundles))
    else:
        os.environ.pop("VLLM_RAY_BUNDLE_INDICES", None)
    return {**extra, "distributed_executor_backend": "ray"}


class _VLLMActor:
    """Owns the ``vllm.LLM``; wrapped with ``ray.remote`` by ``VLLMEngine``.

    A start-up failure does not kill the actor: ``info()`` returns it as ``error`` (one line) and the client raises
    ``EngineStartError`` and kills the actor."""

    def __init__(self, model_path: str, dtype: str, kv_cache_bytes: int | None, gpu_memory_utilization: float,
                 max_model_len: int, seed: int, max_logprobs: int, enforce_eager: bool, extra: dict,
                 return_routed_experts: bool = False, fp4: bool = False, fp4_patterns: Iterable[str] | None = None,
                 worker_bundles: list[int] | None = None):
        os.environ.update(_ACTOR_ENV)
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)   # would override kv_cache_memory_bytes on CPU
        t = time.perf_counter()
        self.tp = int(extra.get("tensor_parallel_size", 1))
        extra = tp_engine_args(extra, worker_bundles)    # TP > 1: vLLM's Ray executor in our bundles (docstring)
        # the GPUs Ray gave this actor (none: CPU); TP > 1 is GPU only and its GPUs are the workers'
        self.on_cpu = not use_cuda() and self.tp == 1
        if self.on_cpu and kv_cache_bytes is None:
            kv_cache_bytes = DEFAULT_KV_CACHE_BYTES
        self.kv_cache_bytes = kv_cache_bytes
        self.max_logprobs = max_logprobs
        self.error = None
        self.kv_cache = None
        self.return_routed_experts = engine_routes(return_routed_experts, model_path)   # MoE models only
        self.fp4 = fp4
        self.fp4_patterns = None if fp4_patterns is None else tuple(fp4_patterns)   # None: engine_fp4_patterns
        self.moe_layers: list[int] = []
        self.routes_native = not self.on_cpu          # vLLM's own output on GPU, our worker capture on CPU
        try:
            if self.on_cpu:
                node, avail, total = node_memory()
                if kv_cache_bytes > avail:       # vLLM checks the same after loading the model; fail before it
                    raise MemoryError("the KV cache does not fit in the node's available memory")
            self._start(model_path, dtype, kv_cache_bytes, gpu_memory_utilization, max_model_len, seed,
                        max_logprobs, enforce_eager, extra)
        except Exception as e:  # noqa: BLE001 -- any start-up failure becomes one line for the client
            self.error = start_error_message(model_path, _kv_asked(kv_cache_bytes, gpu_memory_utilization),
                                             memory_found(self.on_cpu), f"{type(e).__name__}: {e}")
        self.startup_s = time.perf_counter() - t

    def _start(self, model_path, dtype, kv_cache_bytes, gpu_memory_utilization, max_model_len, seed, max_logprobs,
               enforce_eager, extra) -> None:
        from vllm import LLM

        memory = {} if kv_cache_bytes is None else {"kv_cache_memory_bytes": int(kv_cache_bytes)}
        if not self.on_cpu:
            memory["gpu_memory_utilization"] = gpu_memory_utilization
        routes = {}
        if self.return_routed_experts:
            # GPU: vLLM's own capture (Model Runner V2, prefix caching on); CPU: ours, no prefix caching (docstring)
            routes = {"enable_return_routed_experts": True} if self.routes_native else {"enable_prefix_caching": False}
        # CPU: no chunked prefill. A prompt prefilled over several steps makes vLLM rewind its seeded generator
        # (``gen.set_offset``), which a CPU torch.Generator does not have: "RuntimeError: CPU Generator does not use
        # offset" on the first seeded request that is chunked (a long prompt, or many at once from several stages
        # on one fleet engine). Whole prefills need a token budget of at least one full sequence.
        sched = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(int(max_model_len), 4096)} \
            if self.on_cpu else {}
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       enforce_eager=enforce_eager, logprobs_mode="processed_logprobs", max_logprobs=max_logprobs,
                       **memory, **routes, **{**sched, **extra})
        self.scheduler = {k: getattr(self.llm.llm_engine.vllm_config.scheduler_config, k)
                          for k in ("enable_chunked_prefill", "max_num_batched_tokens")}
        self.tokenizer = self.llm.get_tokenizer()
        self.kv_cache = self.llm.collective_rpc(_worker_kv_cache)[0]
        if self.return_routed_experts:
            self.moe_layers = self.llm.collective_rpc(
                _worker_moe_layers if self.routes_native else _worker_install_routes)[0]
        # First logprobs request torch.compiles vLLM's rank kernel (~25 s on CPU): pay it at start-up.
        self._generate([[self.tokenizer.eos_token_id or 0]], SamplingParams(max_tokens=2, temperature=0.0))

    def info(self) -> dict:
        """``on_cpu``: whether the process that receives weight syncs (this actor) computes on the CPU -- what the
        transport is chosen from. A TP > 1 engine's actor holds no GPU (its workers do): True there."""
        receiver_on_cpu = self.on_cpu or self.tp > 1
        if self.error is not None:
            return {"error": self.error, "startup_s": self.startup_s, "on_cpu": receiver_on_cpu}
        served = ("full precision" if not self.fp4 else "mxfp4-dequantized (cpu: no FP4 kernels)" if self.on_cpu
                  else "mxfp4a16-packed (compressed-tensors)")
        return {"startup_s": self.startup_s, "on_cpu": receiver_on_cpu, "tensor_parallel_size": self.tp,
                "eos_token_id": self.tokenizer.eos_token_id,
                "kv_cache": {"asked_bytes": self.kv_cache_bytes, **self.kv_cache}, "moe_layers": self.moe_layers,
                "fp4": self.fp4, "served": served, "routed_experts": self.return_routed_experts, "where": where(),
                "scheduler": self.scheduler, "max_model_len": self.llm.llm_engine.vllm_config.model_config.max_model_len}

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        want_routes = params.return_routed_experts
        if want_routes and not self.return_routed_experts:
            raise ValueError(ROUTES_NOT_STARTED)
        capture = want_routes and not self.routes_native

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
        if capture:
            self.llm.collective_rpc(_worker_routes_enable, args=(True,))
        try:
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sps, use_tqdm=False)
        finally:
            taken = self.llm.collective_rpc(_worker_routes_take)[0] if capture else {}
            if capture:
                self.llm.collective_rpc(_worker_routes_enable, args=(False,))
        chunks: dict[tuple[str, int], list] = {}
        for rid, cs in taken.items():
            m = _CHILD_ID.fullmatch(rid)
            if m is None:
                raise RuntimeError(f"return_routed_experts: unexpected vLLM request id {rid!r}")
            chunks[(m.group(2), int(m.group(1) or 0))] = cs
        k = self.llm.model_config.get_num_experts_per_tok() if want_routes else 0
        result = []
        for pi, (p, out) in enumerate(zip(prompts, outs)):
            comps = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                ids = list(o.token_ids)
                lps = [step[t].logprob for step, t in zip(o.logprobs, ids)]
                mask = None
                if mask_k:
                    mask = [sorted(tok for tok, lp in step.items() if lp.logprob != float("-inf")) for step in o.logprobs]
                routes = None
                if want_routes:
                    n_rows = len(p) + len(ids) - 1
                    if self.routes_native:
                        routes = native_routes(o.routed_experts, self.moe_layers, n_rows, k)
                    else:
                        key = (out.request_id, o.index)
                        routes = assemble_routes(chunks.get(key, []), n_rows, len(self.moe_layers), k)
                comps.append(Completion(
                    prompt_ids=list(p), token_ids=ids,
                    text=self.tokenizer.decode(ids, skip_special_tokens=False), logprobs=lps,
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                    sampling_mask=mask, prompt_index=pi, routed_experts=routes))
            result.append(comps)
        return result

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        return self._generate(prompts, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor], quantized: bool | None = None,
                     fp4_patterns: Iterable[str] | None = None) -> float:
        """``quantized`` (default: the engine's ``fp4``): on GPU pack the FP4 targets before the reload; on CPU the
        tensors are expected MXFP4-dequantized already and load as they are."""
        t = time.perf_counter()
        quantized = self.fp4 if quantized is None else quantized
        items = list(to_checkpoint_format(state_dict.items()))
        if quantized and not self.on_cpu:
            items = pack_mxfp4_targets(items, engine_fp4_patterns([n for n, _ in items],
                                                                  fp4_patterns or self.fp4_patterns))
        # CPU (and FP4-on-CPU: dequantized tensors, loaded as they are) and GPU share vLLM's in-place reload;
        # only the CPU backend needs the MoE-prepack workaround.
        self.llm.collective_rpc(_worker_reload, args=(list(items), self.on_cpu))
        if self.return_routed_experts and not self.routes_native:
            self.llm.collective_rpc(_worker_install_routes)      # the reload may rebuild the routers
        self.llm.reset_prefix_cache()
        return time.perf_counter() - t

    # ---------------------------------------------- weight sync through a collective group (rollout/weight_sync.py)
    def sync_join(self, address: str, port: int, token: str, backend: str, timeout_s: float,
                  sync_timeout_s: float) -> dict:
        """Join the client's weight-sync group as rank 1 (the client joins as rank 0 at the same time); replaces
        the group of an earlier lease. Raises ``SyncError`` when the group cannot be formed."""
        import ray

        from .weight_sync import WeightReceiver

        self.sync_close()
        t = time.perf_counter()
        self._sync_receiver = WeightReceiver(address, port, token, backend, timeout_s, sync_timeout_s,
                                             own_address=ray.util.get_node_ip_address())
        return {"backend": backend, "join_s": time.perf_counter() - t}

    def sync_receive(self, plan) -> dict:
        """Receive the buckets of ``plan`` (a ``SyncPlan``; the client broadcasts them after this call started),
        rebuild the state dict and reload it as ``load_weights`` does. A transport failure raises ``SyncError``
        (and drops the group); a failing reload raises its own error."""
        from .weight_sync import SyncError

        receiver = getattr(self, "_sync_receiver", None)
        if receiver is None:
            raise SyncError("no weight-sync group on this engine (sync_join first)")
        t = time.perf_counter()
        try:
            state_dict = receiver.receive(plan)
        except SyncError:
            self.sync_close()
            raise
        receive_s = time.perf_counter() - t
        reload_s = self.load_weights(state_dict)
        return {"receive_s": receive_s, "reload_s": reload_s}

    def sync_close(self) -> None:
        receiver, self._sync_receiver = getattr(self, "_sync_receiver", None), None
        if receiver is not None:
            receiver.close()


class VLLMEngine:
    """Thin client over a ``_VLLMActor``; the interface the stages use (see ``rollout.engine.Engine``)."""

    name = "vllm"

    def __init__(self, model_path: str, dtype: str | torch.dtype | None = None, kv_cache_bytes: int | None = None,
                 gpu_memory_utilization: float = 0.05, max_model_len: int = 2048, seed: int = 0,
                 max_logprobs: int = 64, quantized: bool = False, fp4_patterns: Iterable[str] | None = None,
                 enforce_eager: bool = True, num_cpus: float = 1, num_gpus: float | None = None,
                 return_routed_experts: bool = False, **vllm_kwargs):
        """``kv_cache_bytes``: the KV cache, absolute. On CPU None means ``DEFAULT_KV_CACHE_BYTES``; on GPU None
        means vLLM's profiling within ``gpu_memory_utilization`` (which is used on GPUs only).
        ``return_routed_experts``: run the engine so that requests can ask for routes (Keep Routing; module
        docstring); off by default, it costs memory (GPU) or the prefix cache (CPU).

        Raises ``EngineStartError`` (one line) when the engine cannot start."""
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        on_gpu = use_cuda() if num_gpus is None else num_gpus > 0
        if dtype is None:
            dtype = "bfloat16" if on_gpu else "float32"
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if kv_cache_bytes is not None:
            kv_cache_bytes = int(kv_cache_bytes)
            if kv_cache_bytes <= 0:
                raise ValueError(f"kv_cache_bytes must be > 0, got {kv_cache_bytes}")
        self.quantized = quantized
        self.fp4_patterns = None if fp4_patterns is None else tuple(fp4_patterns)
        self.model_path = str(model_path)
        self._pg, opts, worker_bundles = None, {"num_cpus": num_cpus, "num_gpus": 1 if on_gpu else 0}, None
        tp = int(vllm_kwargs.get("tensor_parallel_size", 1))
        if tp > 1:                               # its own group: one bundle per GPU (engine_bundles)
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            self._pg = ray.util.placement_group(engine_bundles(tp, tp, num_cpus), strategy="STRICT_PACK")
            bundle, opts, worker_bundles = engine_placement(0, tp, tp, num_cpus)
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self._pg,
                                                                           placement_group_bundle_index=bundle)
        actor_cls = ray.remote(_VLLMActor).options(**opts)
        self._actor = actor_cls.remote(self.model_path, dtype, kv_cache_bytes, gpu_memory_utilization,
                                       max_model_len, seed, max_logprobs, enforce_eager, vllm_kwargs,
                                       return_routed_experts, worker_bundles=worker_bundles)
        self.return_routed_experts = return_routed_experts
        try:
            self.info = ray.get(self._actor.info.remote())
            error = self.info.get("error")
        except ray.exceptions.RayActorError as e:     # the actor process died (killed, out of memory, crash)
            asked = kv_cache_bytes if kv_cache_bytes is not None or on_gpu else DEFAULT_KV_CACHE_BYTES
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            error = start_error_message(self.model_path, _kv_asked(asked, gpu_memory_utilization),
                                        memory_found(not on_gpu), f"engine actor died: {first}")
        if error is not None:
            self.close()
            raise EngineStartError(error)
        self.startup_s = self.info["startup_s"]
        self.kv_cache = self.info["kv_cache"]
        self.max_model_len = int(self.info["max_model_len"])   # prompt + completion tokens a request may hold
        self.moe_layer_ids = self.info.get("moe_layers", [])
        self.return_routed_experts = bool(self.info.get("routed_experts", return_routed_experts))   # dense: off

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        import ray

        if params.return_routed_experts and not self.return_routed_experts:
            raise ValueError(ROUTES_NOT_STARTED)
        outs = ray.get(self._actor.generate.remote([list(p) for p in prompts], params))
        if params.return_routed_experts:         # Ray hands numpy arrays back read-only (zero-copy): own them
            for comps in outs:
                for c in comps:
                    if c.routed_experts is not None and not c.routed_experts.flags.writeable:
                        c.routed_experts = c.routed_experts.copy()
        return outs

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
        if getattr(self, "_pg", None) is not None:
            ray.util.remove_placement_group(self._pg)
            self._pg = None
