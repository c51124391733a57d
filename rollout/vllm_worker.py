"""Code that runs inside a vLLM worker (through ``LLM.collective_rpc``): the in-place weight reload, the KV cache
report, the CPU route capture for Keep Routing (rollout/vllm_engine.py explains each), and the read-back of the
weights the engine computes with (``_worker_read_weights``, for checking a weight sync)."""
from __future__ import annotations

import re
from typing import Iterable, Iterator

import numpy as np
import torch

from .routes import ROUTE_DTYPE

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


def _linear_weight(module) -> torch.Tensor:
    """``[out, in]`` weight of a vLLM linear (or LM head) as its kernel computes: on CPU ``layer.weight`` is gone
    after ``dispatch_cpu_unquantized_gemm`` (a packed oneDNN / sgl handle holds it), so the kernel is run on the
    identity (``x = I`` gives ``W^T``, exact in float32); elsewhere the parameter is read."""
    w = getattr(module, "weight", None)
    if getattr(module, "cpu_linear", None) is None and w is not None and w.numel():
        return w.detach().clone()
    k = (getattr(module, "input_size_per_partition", None) or getattr(module, "input_size", None)
         or getattr(module, "embedding_dim"))
    dtype = w.dtype if w is not None else module.params_dtype
    eye = torch.eye(int(k), dtype=dtype, device=w.device if w is not None else "cpu")
    return module.quant_method.apply(module, eye, None).t().contiguous()


def _unpack_cpu_moe(w: torch.Tensor, isa: str) -> torch.Tensor:
    """Undo vLLM's CPU MoE prepack (``cpu_prepack_moe_weight``: a permutation of the elements within the tensor's
    shape), found by prepacking the element indices (exact in float32 below 2^24 elements)."""
    from vllm import _custom_ops as ops

    n = w.numel()
    if w.dtype != torch.float32 or n >= 2**24:
        raise NotImplementedError(f"read-back of prepacked {w.dtype} MoE weights of {n} elements")
    perm = ops.cpu_prepack_moe_weight(torch.arange(n, dtype=torch.float32).view(w.shape), isa).reshape(-1).long()
    if not torch.equal(perm.sort().values, torch.arange(n)):
        raise NotImplementedError(f"the CPU MoE prepack ({isa}) is not a permutation")
    out = torch.empty(n, dtype=w.dtype)
    out[perm] = w.detach().reshape(-1).to("cpu")
    return out.view(w.shape)


def _expert_weights(module) -> tuple[torch.Tensor, torch.Tensor]:
    """A vLLM fused-MoE layer's ``(w13 [E, 2I, H], w2 [E, H, I])``: transformers-5's ``experts.gate_up_proj`` and
    ``experts.down_proj`` (gate rows first in both), un-prepacked and un-padded on CPU."""
    w13, w2 = module.w13_weight.detach(), module.w2_weight.detach()
    kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
    experts = getattr(kernel, "fused_experts", None)
    isa = getattr(experts, "isa", None)
    if isa is not None and w13.device.type == "cpu" and not getattr(experts, "_use_zentorch", False):
        w13, w2 = _unpack_cpu_moe(w13, isa), _unpack_cpu_moe(w2, isa)
        inter = experts.moe_config.intermediate_size_per_partition
        padded = w13.shape[1] // 2
        if padded != inter:                            # _pad_moe_intermediate: zero rows / columns appended
            w13 = torch.cat([w13[:, :inter], w13[:, padded:padded + inter]], dim=1)
            w2 = w2[:, :, :inter]
    return w13.clone(), w2.clone()


def _worker_read_weights(worker) -> dict[str, torch.Tensor]:
    """Runs inside the vLLM worker: the weights the engine computes with, under the learner's transformers-5 names
    (fused ``qkv_proj`` / ``gate_up_proj`` split back through the model's ``packed_modules_mapping``, the fused-MoE
    ``w13``/``w2`` as ``experts.gate_up_proj``/``down_proj``), on the CPU. Linears are read through their kernel
    (``_linear_weight``), experts un-prepacked (``_expert_weights``), the rest (embeddings, norms) as parameters.
    Tensor parallelism 1 only; biases are not read."""
    from vllm.model_executor.layers.linear import LinearBase
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    model = worker.get_model()
    packed = dict(getattr(model, "packed_modules_mapping", None) or {})
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (LinearBase, ParallelLMHead)):
                w = _linear_weight(module)
                base, _, leaf = name.rpartition(".")
                parts = packed.get(leaf)
                if parts and len(parts) > 1 and hasattr(module, "output_sizes"):
                    for part, chunk in zip(parts, w.split(list(module.output_sizes))):
                        out[f"{base}.{part}.weight" if base else f"{part}.weight"] = chunk.contiguous()
                else:
                    out[f"{name}.weight"] = w
            elif hasattr(module, "w13_weight") and hasattr(module, "w2_weight"):
                w13, w2 = _expert_weights(module)
                prefix = name.removesuffix(".routed_experts")
                out[f"{prefix}.gate_up_proj"], out[f"{prefix}.down_proj"] = w13, w2
            else:
                for pname, p in module.named_parameters(recurse=False):
                    out[f"{name}.{pname}"] = p.detach().clone()
    return {k: v.to("cpu") for k, v in out.items()}


def _worker_kv_cache(worker) -> dict:
    """Runs inside the vLLM worker: the KV cache it allocated (blocks, tokens per block, bytes)."""
    cfg = getattr(worker.model_runner, "kv_cache_config", None)
    if cfg is None:                                  # another model runner: the engine's numbers only
        cc = worker.cache_config
        return {"num_blocks": cc.num_gpu_blocks, "block_size": cc.block_size, "bytes": None}
    groups = cfg.kv_cache_groups
    return {"num_blocks": int(cfg.num_blocks),
            "block_size": int(groups[0].kv_cache_spec.block_size) if groups else 0,
            "bytes": int(sum(t.size for t in cfg.kv_cache_tensors))}


# ------------------------------------------------------------------------------------------------ Keep Routing
_CHILD_ID = re.compile(r"(?:(\d+)_)?(\d+)(?:-\w+)?")    # vLLM's internal ids: "[<child>_]<request>-<8 random>"


def _moe_runners(model) -> list:
    from vllm.model_executor.layers.fused_moe.layer import MoERunner

    return sorted((m for m in model.modules() if isinstance(m, MoERunner)), key=lambda m: m.layer_id)


def _worker_moe_layers(worker) -> list[int]:
    """Runs inside the vLLM worker: the decoder layer of every MoE layer, in model order."""
    return [int(m.layer_id) for m in _moe_runners(worker.get_model())]


class _WorkerRoutes:
    """Engine-side route capture inside a vLLM worker with the V1 model runner (the CPU backend; see the module
    docstring). ``by_req[req_id]`` collects ``(positions [n], experts [n, n_moe_layers, k])`` chunks per forward."""

    def __init__(self, worker):
        self.runner = worker.model_runner
        self.enabled = False
        self.by_req: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.buf: torch.Tensor | None = None
        self.seen: list[bool] = []
        self.layers = self.bind(worker)
        orig = self.runner._model_forward

        def model_forward(*args, **kwargs):
            if not self.enabled:
                return orig(*args, **kwargs)
            self.seen = [False] * len(self.layers)
            out = orig(*args, **kwargs)
            self.collect(kwargs.get("positions", args[1] if len(args) > 1 else None))
            return out
        self.runner._model_forward = model_forward

    def bind(self, worker) -> list[int]:
        """(Re)attach the capture callbacks to every MoE layer's router (after a weight reload too)."""
        from functools import partial

        from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

        runners = _moe_runners(worker.get_model())
        if not runners:
            raise ValueError("return_routed_experts: the model has no MoE layers")
        for slot, m in enumerate(runners):
            if m.is_monolithic or not isinstance(m.router, BaseRouter):
                raise ValueError(f"return_routed_experts: cannot capture the routing of layer {m.layer_id} "
                                 f"({type(m.router).__name__}, monolithic kernel {m.is_monolithic})")
            m.router.set_capture_fn(partial(self.capture, slot))
        return [int(m.layer_id) for m in runners]

    def capture(self, slot: int, topk_ids: torch.Tensor) -> None:
        if not self.enabled:
            return
        n, k = topk_ids.shape
        if self.buf is None or self.buf.shape[0] < n or self.buf.shape[2] != k:
            self.buf = torch.full((max(n, 4096), len(self.layers), k), -1, dtype=torch.int16,
                                  device=topk_ids.device)
        self.buf[:n, slot] = topk_ids
        self.seen[slot] = True

    def collect(self, positions) -> None:
        num_reqs = self.runner.input_batch.num_reqs
        if not num_reqs or positions is None or self.buf is None:
            return
        req_ids = list(self.runner.input_batch.req_ids[:num_reqs])
        qsl = np.asarray(self.runner.query_start_loc.np[:num_reqs + 1]).astype(np.int64)
        total = int(qsl[-1])
        pos = positions[0] if positions.dim() > 1 else positions       # M-RoPE: the text positions
        pos = pos[:total].to("cpu").numpy().astype(np.int64)
        rows = self.buf[:total].to("cpu").numpy().copy()
        for slot, ok in enumerate(self.seen):
            if not ok:                                          # a router that did not run: no route
                rows[:, slot] = -1
        for i, rid in enumerate(req_ids):
            a, b = int(qsl[i]), int(qsl[i + 1])
            if b > a:
                self.by_req.setdefault(rid, []).append((pos[a:b], rows[a:b]))

    def take(self) -> dict:
        out, self.by_req = self.by_req, {}
        return out


def _worker_install_routes(worker) -> list[int]:
    """Runs inside the vLLM worker: install (or re-bind, after a weight reload) the route capture."""
    cap = getattr(worker, "_keep_routing", None)
    if cap is None:
        worker._keep_routing = cap = _WorkerRoutes(worker)
    else:
        cap.layers = cap.bind(worker)
    return cap.layers


def _worker_routes_enable(worker, on: bool) -> None:
    worker._keep_routing.enabled = on
    worker._keep_routing.by_req = {}


def _worker_routes_take(worker) -> dict:
    return worker._keep_routing.take()


def assemble_routes(chunks: list[tuple[np.ndarray, np.ndarray]], n_rows: int, n_layers: int, k: int) -> np.ndarray:
    """Per-sequence routes (``rollout.routes`` layout) from position-keyed chunks; later chunks win (a recompute),
    positions never run stay -1."""
    out = np.full((n_rows, n_layers, k), -1, dtype=ROUTE_DTYPE)
    for pos, rows in chunks:
        keep = pos < n_rows
        out[pos[keep]] = rows[keep]
    return out


def native_routes(routed_experts: np.ndarray | None, moe_layers: list[int], n_rows: int, k: int) -> np.ndarray:
    """vLLM's ``CompletionOutput.routed_experts`` (``[rows, every decoder layer, k]``, uint8/uint16) -> the
    ``rollout.routes`` layout: the MoE layers' rows, int16, exactly ``n_rows`` rows (-1 where vLLM gave none)."""
    out = np.full((n_rows, len(moe_layers), k), -1, dtype=ROUTE_DTYPE)
    if routed_experts is not None:
        re_ = np.asarray(routed_experts)
        m = min(n_rows, re_.shape[0])
        out[:m] = re_[:m][:, moe_layers].astype(ROUTE_DTYPE)
    return out
