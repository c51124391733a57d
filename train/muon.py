"""Muon with DeepSeek-V4's hybrid Newton–Schulz schedule, built on ``torch.optim.Muon``.

``torch.optim.Muon`` runs one Newton–Schulz schedule (``ns_steps`` iterations of one coefficient triple) on 2-D
parameters. DeepSeek-V4 orthogonalizes with 8 iterations of (3.4445, −4.7750, 2.0315) — fast growth of small
singular values — then 2 iterations of (2, −1.5, 0.5), which converge them to 1. This subclass keeps torch's
momentum/Nesterov update, learning-rate adjustment, weight decay and state layout, and replaces only the
orthogonalization: a multi-stage schedule, applied batched to 3-D parameters (fused MoE experts ``[E, out, in]``
are orthogonalized expert by expert).
"""
from __future__ import annotations

import torch
from torch.optim import Muon
from torch.optim._muon import _adjust_lr

V4_SCHEDULE: tuple[tuple[tuple[float, float, float], int], ...] = (
    ((3.4445, -4.7750, 2.0315), 8),
    ((2.0, -1.5, 0.5), 2),
)


def newton_schulz(g: torch.Tensor, schedule=V4_SCHEDULE, eps: float = 1e-7) -> torch.Tensor:
    """Orthogonalize the last two dims of ``g`` (any leading batch dims) with a multi-stage quintic schedule.

    Normalizes once (spectral norm ≤ 1 via the Frobenius norm), then runs each stage's iterations
    ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ``, working on the wide orientation.
    """
    x = g.float()
    transpose = x.size(-2) > x.size(-1)
    if transpose:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for (a, b, c), steps in schedule:
        for _ in range(steps):
            gram = x @ x.mT
            x = a * x + (b * gram + c * gram @ gram) @ x
    if transpose:
        x = x.mT
    return x.to(g.dtype)


class HybridMuon(Muon):
    """``torch.optim.Muon`` with a multi-stage Newton–Schulz schedule and support for 3-D (expert) parameters."""

    def __init__(self, params, lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True,
                 schedule=V4_SCHEDULE, eps=1e-7, adjust_lr_fn="match_rms_adamw"):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        # torch's constructor rejects non-2-D tensors; hand it 2-D views for the check, then restore the originals
        views = [{**g, "params": [p.detach().flatten(0, -2) if p.ndim > 2 else p for p in g["params"]]} for g in groups]
        super().__init__(views, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                         ns_coefficients=schedule[0][0], eps=eps, ns_steps=schedule[0][1],
                         adjust_lr_fn=adjust_lr_fn)
        for group, orig in zip(self.param_groups, groups):
            group["params"] = list(orig["params"])
            group["schedule"] = tuple((tuple(c), int(n)) for c, n in schedule)
        for p in (p for g in self.param_groups for p in g["params"]):
            if p.ndim < 2:
                raise ValueError(f"Muon needs matrix parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - group["momentum"])
                update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(update, group["schedule"], group["eps"])
                lr = _adjust_lr(group["lr"], group["adjust_lr_fn"], p.shape[-2:])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-lr)
        return loss
