"""GRPO's pure pieces, in named registries: advantage estimators, the policy loss and its aggregations.

Shapes: ``_P_G`` = prompts x group, ``_B_T`` = sequences x completion tokens. Nothing here touches a model.

>>> grpo_advantages(torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
tensor([[ 0.8660, -0.8660,  0.8660, -0.8660]])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.registry import Registry

ADVANTAGES: Registry[Callable] = Registry("advantage estimator")
LOSS_AGGREGATIONS: Registry[Callable] = Registry("loss aggregation")
register_advantage = ADVANTAGES.register
register_aggregation = LOSS_AGGREGATIONS.register


@register_advantage("grpo")
def grpo_advantages(rewards_P_G: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative: ``(r - mean(r)) / (std(r) + eps)`` within each prompt's group (sample std, as TRL)."""
    mean = rewards_P_G.mean(-1, keepdim=True)
    std = rewards_P_G.std(-1, keepdim=True, unbiased=True)
    return (rewards_P_G - mean) / (std + eps)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards_P_G: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: ``r - mean(r)``, no division by the group's std (which biases towards easy/hard prompts)."""
    return rewards_P_G - rewards_P_G.mean(-1, keepdim=True)


def asymmetric(adv_P_G: torch.Tensor, baseline_shift: float = 0.0, negative_weight: float = 1.0) -> torch.Tensor:
    """Asymmetric advantages: lower the baseline by ``baseline_shift`` (AsymRE) and scale negative advantages by
    ``negative_weight``. (0, 1) is the identity."""
    adv = adv_P_G + baseline_shift
    return torch.where(adv < 0, adv * negative_weight, adv)


@register_aggregation("token_mean")
def token_mean(loss_B_T: torch.Tensor, mask_B_T: torch.Tensor, max_len: int | None = None) -> tuple:
    """Σ loss over all tokens / number of tokens (DAPO's token-level mean). Returns (sum, denominator)."""
    return (loss_B_T * mask_B_T).sum(), mask_B_T.sum()


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(loss_B_T, mask_B_T, max_len=None) -> tuple:
    """Original GRPO: mean over each sequence's tokens, then mean over sequences."""
    per_seq = (loss_B_T * mask_B_T).sum(-1) / mask_B_T.sum(-1).clamp(min=1)
    return per_seq.sum(), torch.tensor(float(loss_B_T.size(0)))


@register_aggregation("dr_grpo")
def dr_grpo_aggregation(loss_B_T, mask_B_T, max_len=None) -> tuple:
    """Dr. GRPO: Σ loss / (sequences x a constant length budget): no length normalisation bias."""
    return (loss_B_T * mask_B_T).sum(), torch.tensor(float(loss_B_T.size(0) * (max_len or loss_B_T.size(1))))


def k3_kl(logp_B_T: torch.Tensor, ref_logp_B_T: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(π_θ‖π_ref) per token: ``π_ref/π_θ − log(π_ref/π_θ) − 1`` (≥ 0)."""
    d = ref_logp_B_T - logp_B_T
    return torch.exp(d) - d - 1


def offpolicy_sequence_mask(adv_B: torch.Tensor, old_logp_B_T, logp_B_T, mask_B_T, delta: float) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence masking: 0 for a sequence whose advantage is negative and whose mean
    ``log(π_old/π_θ)`` over its tokens exceeds ``delta``; 1 otherwise."""
    mean_log_ratio = ((old_logp_B_T - logp_B_T) * mask_B_T).sum(-1) / mask_B_T.sum(-1).clamp(min=1)
    return (~((adv_B < 0) & (mean_log_ratio > delta))).float()


@dataclass
class PolicyLossOut:
    loss_sum: torch.Tensor
    denom: torch.Tensor
    metrics: dict


def policy_loss(logp_B_T: torch.Tensor, old_logp_B_T: torch.Tensor, adv_B: torch.Tensor, mask_B_T: torch.Tensor, *,
                clip_low: float, clip_high: float, ref_logp_B_T: torch.Tensor | None = None, kl_coef: float = 0.0,
                offpolicy_delta: float | None = None, aggregation: str = "token_mean",
                max_len: int | None = None, entropy_B_T: torch.Tensor | None = None,
                entropy_coef: float = 0.0) -> PolicyLossOut:
    """The clipped surrogate with DeepSeek's stabilizers, per token, then aggregated.

    ``ratio = π_θ/π_old``; surrogate ``−min(ratio·A, clip(ratio, 1−clip_low, 1+clip_high)·A)``; plus
    ``kl_coef · ratio · k3(π_θ, π_ref)`` (the unbiased KL estimate under samples from π_old); sequences failing the
    off-policy test are masked out. With ``entropy_coef`` and the per-token entropy ``entropy_B_T`` (differentiable),
    ``− entropy_coef · H`` is added per token: a positive coefficient is the usual exploration bonus, a negative one
    minimises the entropy (sharpens the policy), as verl's ``entropy_coeff``.
    """
    log_ratio = logp_B_T - old_logp_B_T
    ratio = torch.exp(log_ratio)
    adv = adv_B[:, None]
    surr = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv)
    mask = mask_B_T.float()
    seq_keep = torch.ones_like(adv_B)
    if offpolicy_delta is not None:
        seq_keep = offpolicy_sequence_mask(adv_B, old_logp_B_T.detach(), logp_B_T.detach(), mask, offpolicy_delta)
        mask = mask * seq_keep[:, None]
    loss = surr
    kl = torch.zeros_like(surr)
    if ref_logp_B_T is not None and kl_coef > 0:
        kl = ratio * k3_kl(logp_B_T, ref_logp_B_T)
        loss = loss + kl_coef * kl
    if entropy_B_T is not None and entropy_coef:
        loss = loss - entropy_coef * entropy_B_T
    loss_sum, denom = LOSS_AGGREGATIONS[aggregation](loss, mask, max_len)
    with torch.no_grad():
        n = mask_B_T.float().sum().clamp(min=1)
        clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        metrics = {"clip_frac": float((clipped.float() * mask_B_T).sum() / n),
                   "kl": float((kl * mask_B_T).sum() / n),
                   "masked_frac": float(1 - seq_keep.mean()),
                   "masked_seqs": float((1 - seq_keep).sum()),
                   "ratio_mean": float((ratio * mask_B_T).sum() / n)}
    return PolicyLossOut(loss_sum, denom, metrics)


def kept_ids(allowed: list, k: int | None = None) -> list[int]:
    """One token's Keep-Sampling-Mask row, padded to ``k`` with -1 (``allowed`` None: no truncation, all -1)."""
    row = list(allowed) if allowed is not None else []
    return row + [-1] * ((k if k is not None else len(row)) - len(row))


def _scaled(logits_B_T_V: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits_B_T_V.float() / (temperature if temperature > 0 else 1.0)


def _kept(x_B_T_V: torch.Tensor, keep_ids_B_T_K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled logits of the kept ids ``[B, T, K]`` with -inf at padding, which positions have a kept set ``[B, T]``)."""
    pad = keep_ids_B_T_K < 0
    g = x_B_T_V.gather(-1, keep_ids_B_T_K.clamp(min=0)).masked_fill(pad, float("-inf"))
    return g, ~pad[..., 0]


def masked_logprobs(logits_B_T_V: torch.Tensor, tokens_B_T: torch.Tensor, temperature: float = 1.0,
                    keep_ids_B_T_K: torch.Tensor | None = None) -> torch.Tensor:
    """log π(token) under temperature-scaled logits, renormalised over the sampler's kept set where one is given
    (Keep Sampling Mask: π_θ sees the same truncated support the sampler drew from).

    ``keep_ids_B_T_K``: per position, the ids top-k/top-p kept, padded with -1 (a row of -1: no truncation); ``K``
    is the largest kept set, so the mask costs ``B·T·K`` ids instead of a dense ``B·T·V`` boolean."""
    x = _scaled(logits_B_T_V, temperature)
    lse = torch.logsumexp(x, -1)
    if keep_ids_B_T_K is not None:
        g, has = _kept(x, keep_ids_B_T_K)
        lse = torch.where(has, torch.logsumexp(g, -1), lse)
    return x.gather(-1, tokens_B_T[..., None]).squeeze(-1) - lse


def token_entropy(logits_B_T_V: torch.Tensor, temperature: float = 1.0,
                  keep_ids_B_T_K: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token entropy ``[B, T]`` of the distribution the sampler drew from (the kept set where one is given);
    differentiable."""
    x = _scaled(logits_B_T_V, temperature)
    lp = torch.log_softmax(x, -1)
    h = -(lp.exp() * lp).sum(-1)
    if keep_ids_B_T_K is not None:
        g, has = _kept(x, keep_ids_B_T_K)
        lpk = torch.log_softmax(g, -1)
        hk = -(lpk.exp() * lpk.masked_fill(~torch.isfinite(lpk), 0.0)).sum(-1)
        h = torch.where(has, hk, h)
    return h


def entropy(logits_B_T_V: torch.Tensor, mask_B_T: torch.Tensor) -> float:
    """Mean per-token entropy over ``mask_B_T`` (a metric: no gradient)."""
    with torch.no_grad():
        return float((token_entropy(logits_B_T_V) * mask_B_T).sum() / mask_B_T.sum().clamp(min=1))
