"""Engine-side Keep Routing: the experts every MoE router chose for every token an engine ran through the model.

An engine asked for routes (``SamplingParams.return_routed_experts``) returns them in ``Completion.routed_experts``;
the learner replays exactly those experts (``specialists.routing``). This module holds the engine side for
transformers models (find the router modules, record their choices with forward hooks over a generation loop,
assemble per-sequence routes); replaying (router families, gate weights) stays in ``specialists``.

Route layout (``Completion.routed_experts``, both engines)
-----------------------------------------------------------
A numpy ``int16`` array ``[len(prompt_ids) + len(token_ids) - 1, n_moe_layers, k]``:

* row ``p`` is the token at position ``p`` of ``prompt_ids + token_ids`` (prompt positions too: the prefill), i.e.
  the experts that token was routed to when the engine ran it. The last sampled token is never run through the
  model, so it has no row;
* the layer axis holds the MoE routers only, in model order (= decoder-layer order; dense layers have no entry) --
  the order of ``find_router_modules`` here and of ``specialists.routing.RouteReplay``. (vLLM's own output has one
  entry per decoder layer; the ``vllm`` engine keeps the MoE layers only.) ``moe_layer_ids`` names the decoder
  layer of each entry;
* ``k`` slots: the experts in the order the router returned them;
* ``-1`` in a row: no route (the learner's router chooses there).

This is the per-sequence layout ``specialists.routing.routes_from_sequences(per_seq, seq_len)`` consumes with the
default ``starts`` (0) and no ``layer_ids`` (the layer axis already is the MoE routers).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch

ROUTE_DTYPE = np.int16

_ROUTER_NAME = re.compile(r"(Router|Gating)$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def find_router_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every MoE router of a transformers model, in model order: a module whose class name ends in
    ``Router``/``Gating``, or the ``gate``/``router`` child of a module with an ``experts`` child. Raises a one-line
    ValueError for an MoE block whose routing is not a separate module (nothing to hook). Whether a router's choice
    can be *replayed* is ``specialists.router_families``' business."""
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    for name, m in model.named_modules():
        if _ROUTER_NAME.search(type(m).__name__):
            found.setdefault(id(m), (name, m))
        children = dict(m.named_children())
        if "experts" in children:
            key = next((k for k in ("gate", "router") if k in children), None)
            if key is None:
                raise ValueError(f"routes: {type(m).__name__} ({name}) has experts but no gate/router module to "
                                 f"record its routing from")
            found.setdefault(id(children[key]), (f"{name}.{key}" if name else key, children[key]))
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(found.values(), key=lambda nm: order[id(nm[1])])


def moe_layer_ids(names: Sequence[str]) -> list[int]:
    """The decoder layer of each router name (``model.layers.3.mlp.gate`` -> 3); its index when the name has none."""
    return [int(x.group(1)) if (x := _LAYER.search(n + ".")) else i for i, n in enumerate(names)]


def _indices(module: torch.nn.Module, out) -> torch.Tensor:
    idx = out[2] if isinstance(out, (tuple, list)) and len(out) >= 3 else None
    if not isinstance(idx, torch.Tensor) or idx.is_floating_point() or idx.dtype == torch.bool:
        raise RuntimeError(f"routes: cannot read the chosen experts of {type(module).__name__} (expected its output "
                           f"(logits, weights, indices))")
    return idx


@contextmanager
def capture(routers: Sequence[torch.nn.Module], names: Sequence[str] | None = None,
            dtype: torch.dtype | None = None):
    """Record every call of ``routers`` inside the block: yields a list that holds, after the block, one token-major
    ``[N_call, n_routers, k]`` tensor per forward run inside it (a prefill, then every decode step), in the rows the
    routers saw (``b*T + t``), as the routers' index dtype or ``dtype`` (kept on the routers' device);
    ``stitch_steps`` assembles them. Raises (one line) when some router was not called in every forward (an MoE
    block that bypasses its router module)."""
    steps: list[torch.Tensor] = []
    calls: list[list[torch.Tensor]] = [[] for _ in routers]

    def make(i):
        def hook(module, args, out):
            idx = _indices(module, out).detach()
            calls[i].append(idx.to(dtype) if dtype is not None else idx)
        return hook

    handles = [r.register_forward_hook(make(i)) for i, r in enumerate(routers)]
    try:
        yield steps
    finally:
        for h in handles:
            h.remove()
    counts = {len(c) for c in calls}
    if len(counts) > 1:
        names = list(names) if names is not None else [type(r).__name__ for r in routers]
        missed = [names[i] for i, c in enumerate(calls) if len(c) < max(counts)]
        raise RuntimeError(f"routes: routers {missed} were not called in every forward (the MoE block bypasses its "
                           f"router module, e.g. a fused kernel)")
    for j in range(counts.pop() if counts else 0):
        steps.append(torch.stack([c[j] for c in calls], dim=1))


def stitch_steps(steps: Sequence[torch.Tensor], batch_size: int, prefill_batch: int | None = None) -> torch.Tensor:
    """``capture()`` steps of one batched generation -> ``[batch_size, T, n_routers, k]`` in input-position order.

    ``steps[0]`` is the prefill ``[prefill_batch*T0, n, k]``, each later step one decode step ``[batch_size*t, n, k]``.
    When the engine shares the prefill across a group of ``n`` samples (``batch_size = prefill_batch * n``, rows
    ``repeat_interleave``d), the prefill rows are repeated the same way. Left padding stays where the engine put it:
    strip it per sequence before ``routes_from_sequences``."""
    if not steps:
        raise ValueError("no steps captured")
    pb = prefill_batch or batch_size
    if batch_size % pb:
        raise ValueError(f"batch size {batch_size} is not a multiple of the prefill batch {pb}")
    out = []
    for j, s in enumerate(steps):
        b = pb if j == 0 else batch_size
        if s.shape[0] % b:
            raise ValueError(f"step {j} has {s.shape[0]} tokens, not a multiple of its batch size {b}")
        s = s.reshape(b, s.shape[0] // b, *s.shape[1:])
        out.append(s.repeat_interleave(batch_size // pb, dim=0) if b != batch_size else s)
    return torch.cat(out, dim=1)


def sequence_routes(steps: Sequence[torch.Tensor], prompt_lens: Sequence[int], n: int,
                    gen_lens: Sequence[int]) -> list[np.ndarray]:
    """Per-sequence routes (the module's layout) from the ``capture()`` steps of one left-padded batched generation:
    a prefill of ``len(prompt_lens)`` prompts padded on the left to ``max(prompt_lens)``, shared by groups of ``n``
    (rows ``repeat_interleave``d), then decode steps over all ``len(prompt_lens) * n`` sequences, step ``j`` feeding
    sampled token ``j``. Sequence ``b`` (prompt ``b // n``, ``gen_lens[b]`` sampled tokens) gets its prompt rows
    without the padding and the rows of decode steps ``0 .. gen_lens[b] - 2`` (later steps fed padding to a sequence
    that had finished)."""
    P, T = len(prompt_lens), max(prompt_lens)
    B = P * n
    full = stitch_steps(steps, batch_size=B, prefill_batch=P).to(device="cpu", dtype=torch.int16).numpy()
    out = []
    for b in range(B):
        lp, lg = prompt_lens[b // n], gen_lens[b]
        end = T + max(lg - 1, 0)
        if end > full.shape[1]:
            raise ValueError(f"sequence {b}: {lg} sampled tokens need {end - T} decode steps, "
                             f"{full.shape[1] - T} were captured")
        out.append(np.ascontiguousarray(full[b, T - lp:end]))
    return out


# ------------------------------------------------------------------------------------ which models have routes
_NUM_EXPERTS_KEYS = ("num_experts", "moe_num_experts", "n_routed_experts", "num_local_experts")   # vLLM 0.32's order


def config_num_experts(cfg: dict) -> int:
    """The routed experts of a model's ``config.json`` (0: dense), as vLLM 0.32 counts them
    (``ModelArchConfigConvertor.get_num_experts`` on the text config; ``ModelConfig.is_moe`` is ``> 0``)."""
    text = cfg.get("text_config") or cfg
    for key in _NUM_EXPERTS_KEYS:
        if text.get(key) is not None:
            n = text[key]
            n = n[0] if isinstance(n, list) else n
            if n:
                return int(n)
            break
    return max([int(b.get("n_routed_experts", 0) or 0) for b in text.get("block_configs") or []
                if isinstance(b, dict) and b.get("block_type") == "moe"] or [0])


def engine_routes(asked: bool, model_path) -> bool:
    """Whether an engine starts with routed-expert capture: asked for (the fleet defaults it on) *and* the model is
    MoE -- vLLM 0.32 refuses ``enable_return_routed_experts`` for a dense model ("AuxOutput Connector only supports
    MoE models"), and a dense model has no routes to keep."""
    if not asked:
        return False
    import json
    from pathlib import Path

    path = Path(model_path) / "config.json"
    return config_num_experts(json.loads(path.read_text())) > 0 if path.is_file() else True
