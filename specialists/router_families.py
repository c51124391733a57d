"""Keep Routing's router families: how each transformers MoE router chooses experts and weights them.

Families
--------
Every transformers MoE router we can replay belongs to a *family*: a pure ``select`` (the router's own choice of
experts and their gate weights, from its logits) and a pure ``weights_for`` (the family's own gate weighting for
*given* experts). Replay runs the router's own forward (so its logits, and with them the gradient path to the gate
parameters, are the module's own), swaps the indices for the given ones and recomputes their weights with
``weights_for``: the discrete choice is fixed, the weighting is the family's, and when the given indices are the ones
the router would pick the output is bit-identical to the router's. Families (transformers 5.x sources under
``transformers/models/<name>/modeling_<name>.py``):

``softmax_topk``      Qwen2/Qwen3-MoE, Qwen3-Next, OLMoE, FlexOlmo, ... (``Qwen3MoeTopKRouter.forward``): softmax over
                      all experts in fp32, top-k, renormalised over the k when ``norm_topk_prob``, cast to the logits'
                      dtype. ``softmax_topk_norm``: same, always renormalised (``Qwen3_5MoeTopKRouter``).
``mixtral``           Mixtral, MiniMax (``MixtralTopKRouter``): as above, always renormalised, left in fp32.
``deepseek_v2``       DeepSeek-V2 (``DeepseekV2TopkRouter``): softmax scores, greedy or group-limited greedy choice,
                      weights = chosen scores × ``routed_scaling_factor`` (no renormalisation).
``sigmoid_grouped``   DeepSeek-V3, GLM-4-MoE (+ GLM-4.5V/4.7-Lite/5, Dots1, Kimi-Linear, MiMo-V2-Flash, Nemotron-H, ...)
                      (``DeepseekV3TopkRouter`` / ``Glm4MoeTopkRouter``): fp32 logits, sigmoid scores; the choice
                      uses ``scores + e_score_correction_bias`` restricted to the ``topk_group`` best of ``n_group``
                      groups (a group scored by its 2 best experts); weights = the *unbiased* sigmoid scores of the
                      chosen experts, renormalised (+1e-20) when ``norm_topk_prob``, × ``routed_scaling_factor``.
``deepseek_v4``       DeepSeek-V4 top-k layers (``DeepseekV4TopKRouter``): scores = ``score_fn(logits)``
                      (``sqrtsoftplus`` = sqrt(softplus), or sigmoid/softmax per ``config.scoring_func``), choice
                      top-k of ``scores + e_score_correction_bias``, weights = chosen scores renormalised (+1e-20)
                      × ``routed_scaling_factor``.
``deepseek_v4_hash``  DeepSeek-V4 hash layers (``DeepseekV4HashRouter``, the first ``mlp_layer_types == "hash_moe"``
                      layers): choice = the frozen ``tid2eid[input_ids]`` table, weights as ``deepseek_v4``. These are
                      recorded and replayed like any other layer, so layer ``i`` of a route list is always layer ``i``.
``gpt_oss``           GPT-OSS (``GptOssTopKRouter``): logits with router bias, top-k on the logits, softmax over the k
                      chosen logits only.

A module is an MoE router when its class name ends in ``Router``/``Gating``, or when it is the ``gate``/``router``
child of a module that has an ``experts`` child. ``RouteReplay(model)`` raises a one-line ``ValueError`` naming the
class for any MoE router (or MoE block without a router module) outside these families, and checks each router
against its family once on a random probe (indices and weights must agree exactly), so a transformers version that
changes a router's maths fails at stage start rather than replaying the wrong weights.

"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------------------ families
def _renorm(w: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    return w / (w.sum(dim=-1, keepdim=True) + eps) if eps else w / w.sum(dim=-1, keepdim=True)


def _softmax_weights(module, logits, idx, *, norm: bool | None, cast: bool):
    w = F.softmax(logits, dim=-1, dtype=torch.float).gather(-1, idx)
    if getattr(module, "norm_topk_prob", True) if norm is None else norm:
        w = _renorm(w)
    return w.to(logits.dtype) if cast else w


def _softmax_select(module, logits, input_ids=None, *, norm: bool | None, cast: bool):
    probs = F.softmax(logits, dim=-1, dtype=torch.float)
    w, idx = torch.topk(probs, module.top_k, dim=-1)
    if getattr(module, "norm_topk_prob", True) if norm is None else norm:
        w = _renorm(w)
    return idx, (w.to(logits.dtype) if cast else w)


def _dsv2_weights(module, logits, idx):
    return logits.softmax(dim=-1, dtype=torch.float32).gather(-1, idx) * module.routed_scaling_factor


def _dsv2_select(module, logits, input_ids=None):
    scores = logits.softmax(dim=-1, dtype=torch.float32)
    if module.topk_method == "group_limited_greedy":
        g = module.num_group
        group_scores = scores.view(-1, g, module.num_experts // g).max(dim=-1).values
        group_idx = torch.topk(group_scores, k=module.topk_group, dim=-1, sorted=False)[1]
        mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        mask = mask.unsqueeze(-1).expand(-1, g, module.num_experts // g).reshape(-1, module.num_experts)
        scores = scores.masked_fill(~mask.bool(), 0.0)
    w, idx = torch.topk(scores, k=module.top_k, dim=-1, sorted=False)
    return idx, w * module.routed_scaling_factor


def _sigmoid_weights(module, logits, idx):
    w = logits.sigmoid().gather(-1, idx)
    if module.norm_topk_prob:
        w = _renorm(w, 1e-20)
    return w * module.routed_scaling_factor


def _sigmoid_select(module, logits, input_ids=None):
    scores = logits.sigmoid() + module.e_score_correction_bias
    g, per = module.num_group, module.num_experts // module.num_group
    group_scores = scores.view(-1, g, per).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=module.topk_group, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    mask = mask.unsqueeze(-1).expand(-1, g, per).reshape(-1, module.num_experts)
    scores = scores.masked_fill(~mask.bool(), float("-inf"))
    idx = torch.topk(scores, k=module.top_k, dim=-1, sorted=False)[1]
    return idx, _sigmoid_weights(module, logits, idx)


def _v4_weights(module, logits, idx):
    w = module.score_fn(logits).gather(1, idx)
    return _renorm(w, 1e-20) * module.routed_scaling_factor


def _v4_select(module, logits, input_ids=None):
    idx = torch.topk(module.score_fn(logits) + module.e_score_correction_bias, module.top_k, dim=-1,
                     sorted=False).indices
    return idx, _v4_weights(module, logits, idx)


def _v4_hash_select(module, logits, input_ids=None):
    if input_ids is None:
        raise ValueError(f"{type(module).__name__} routes by token id and needs input_ids")
    idx = module.tid2eid[input_ids.reshape(-1)].long()
    return idx, _v4_weights(module, logits, idx)


def _gpt_oss_weights(module, logits, idx):
    top = logits.gather(-1, idx)
    return F.softmax(top, dim=-1, dtype=top.dtype)


def _gpt_oss_select(module, logits, input_ids=None):
    top, idx = torch.topk(logits, module.top_k, dim=-1)
    return idx, F.softmax(top, dim=-1, dtype=top.dtype)


@dataclass(frozen=True)
class RouterFamily:
    """How one family of routers chooses experts and weights them.

    ``select(module, logits, input_ids=None) -> (indices [N, k], weights [N, k])`` is the module's own choice;
    ``weights_for(module, logits, indices) -> weights`` is its gate weighting of given indices (differentiable in
    the logits, hence in the router's parameters). ``logits`` are the router's own first output (``router_logits``).
    ``matches(module)`` says whether the family can replay that module (class, plus the config it needs)."""
    name: str
    classes: tuple[str, ...]
    select: Callable
    weights_for: Callable
    requires: Callable[[torch.nn.Module], bool] = lambda m: True
    needs_input_ids: bool = False

    def matches(self, module: torch.nn.Module) -> bool:
        return type(module).__name__ in self.classes and self.requires(module)


# class lists: routers whose forward (and __init__) is textually the reference one in the installed transformers
FAMILIES: list[RouterFamily] = [
    RouterFamily("softmax_topk",
                 ("Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter", "OlmoeTopKRouter", "FlexOlmoTopKRouter",
                  "Qwen3NextTopKRouter", "Qwen3OmniMoeThinkerTextTopKRouter", "Qwen3OmniMoeTalkerTextTopKRouter",
                  "Qwen4ExpTextTopKRouter", "MellumTopKRouter"),
                 partial(_softmax_select, norm=None, cast=True), partial(_softmax_weights, norm=None, cast=True),
                 requires=lambda m: hasattr(m, "norm_topk_prob")),
    RouterFamily("softmax_topk_norm",
                 ("Qwen3_5MoeTopKRouter", "Qwen3VLMoeTextTopKRouter", "Qwen3OmniMoeTextTopKRouter"),
                 partial(_softmax_select, norm=True, cast=True), partial(_softmax_weights, norm=True, cast=True)),
    RouterFamily("mixtral", ("MixtralTopKRouter", "MiniMaxTopKRouter"),
                 partial(_softmax_select, norm=True, cast=False), partial(_softmax_weights, norm=True, cast=False)),
    RouterFamily("deepseek_v2", ("DeepseekV2TopkRouter", "DeepseekOcr2TextTopkRouter"), _dsv2_select, _dsv2_weights,
                 requires=lambda m: getattr(m, "topk_method", None) in ("greedy", "group_limited_greedy")),
    RouterFamily("sigmoid_grouped",
                 ("DeepseekV3TopkRouter", "Glm4MoeTopkRouter", "Glm4MoeLiteTopkRouter", "Glm4vMoeTextTopkRouter",
                  "Glm5NextTextTopkRouter", "GlmMoeDsaTopkRouter", "DeepseekV32TopkRouter", "Dots1TopkRouter",
                  "KimiLinearTopkRouter", "MiMoV2FlashTopkRouter", "NemotronHTopkRouter", "SolarOpenTopkRouter",
                  "HYV4TopkRouter", "AXK1TopkRouter"),
                 _sigmoid_select, _sigmoid_weights,
                 requires=lambda m: getattr(m, "num_group", 0) > 0 and m.num_experts % m.num_group == 0
                 and m.num_experts // m.num_group >= 2),
    RouterFamily("deepseek_v4", ("DeepseekV4TopKRouter",), _v4_select, _v4_weights),
    RouterFamily("deepseek_v4_hash", ("DeepseekV4HashRouter",), _v4_hash_select, _v4_weights, needs_input_ids=True),
    RouterFamily("gpt_oss", ("GptOssTopKRouter",), _gpt_oss_select, _gpt_oss_weights),
]

_ROUTER_NAME = re.compile(r"(Router|Gating)$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def family_of(module: torch.nn.Module) -> RouterFamily | None:
    return next((f for f in FAMILIES if f.matches(module)), None)


def find_routers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every MoE router in model order. Raises ValueError (one line) for MoE routing it cannot
    replay: a router class outside FAMILIES, or an MoE block (a module with an ``experts`` child) whose routing is
    not a separate ``gate``/``router`` module."""
    found: dict[int, tuple[str, torch.nn.Module]] = {}
    supported = ", ".join(f.name for f in FAMILIES)
    for name, m in model.named_modules():
        children = dict(m.named_children())
        cands = [(name, m, "")] if _ROUTER_NAME.search(type(m).__name__) else []
        if "experts" in children:
            key = next((k for k in ("gate", "router") if k in children), None)
            if key is None:
                raise ValueError(f"Keep Routing cannot replay {type(m).__name__} ({name}): its routing is not a "
                                 f"separate gate/router module; supported router families: {supported}")
            cands.append((f"{name}.{key}" if name else key, children[key], f" of {type(m).__name__}"))
        for rname, r, of in cands:
            if family_of(r) is None:
                raise ValueError(f"Keep Routing cannot replay router class {type(r).__name__}{of} ({rname}); "
                                 f"supported router families: {supported}")
            found.setdefault(id(r), (rname, r))
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(found.values(), key=lambda nm: order[id(nm[1])])


def routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for _, m in find_routers(model)]


@torch.no_grad()
def verify_family(module: torch.nn.Module, family: RouterFamily, n_tokens: int = 32, seed: int = 0) -> None:
    """Check on a random probe that ``family`` reproduces ``module``'s own output exactly; ValueError otherwise."""
    p = next(module.parameters())
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_tokens, module.hidden_dim, generator=g).to(device=p.device, dtype=p.dtype)
    ids = None
    if family.needs_input_ids:
        ids = torch.randint(0, module.tid2eid.shape[0], (n_tokens,), generator=g).to(p.device)
    try:
        logits, w, idx = module(h, ids) if ids is not None else module(h)
        sel_idx, sel_w = family.select(module, logits, ids)
        rew = family.weights_for(module, logits, idx)
        ok = (torch.equal(sel_idx.sort(-1).values, idx.sort(-1).values)
              and torch.allclose(sel_w.gather(-1, sel_idx.argsort(-1)).float(), w.gather(-1, idx.argsort(-1)).float(),
                                 rtol=1e-6, atol=1e-7)
              and rew.dtype == w.dtype and torch.equal(rew, w))
    except Exception as e:  # noqa: BLE001 — any failure means we cannot vouch for the replay
        raise ValueError(f"Keep Routing cannot replay {type(module).__name__}: probe failed ({type(e).__name__}: "
                         f"{e})".replace("\n", " ")) from e
    if not ok:
        raise ValueError(f"Keep Routing cannot replay {type(module).__name__}: its output no longer matches the "
                         f"{family.name} family (transformers changed its router?)")
