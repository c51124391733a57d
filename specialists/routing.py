"""Keep Routing for MoE models: record the experts each token was routed to, then replay them in training.

transformers' MoE routers (``*TopKRouter`` modules, e.g. Qwen3-MoE's ``mlp.gate``) return
``(router_logits, routing_weights, expert_indices)``. ``record()`` captures the indices of every router call;
``replay(routes)`` forces the same indices on a later forward and recomputes their weights from the current router
logits (softmax, then renormalised over the chosen experts when the model normalises top-k), so the gate still
gets gradients while the discrete choice stays fixed. Models without such routers are left untouched.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("TopKRouter")]


class RouteReplay:
    def __init__(self, model: torch.nn.Module):
        self.routers = routers(model)

    @property
    def active(self) -> bool:
        return bool(self.routers)

    @contextmanager
    def record(self):
        routes: list[torch.Tensor] = []

        def hook(module, args, out):
            routes.append(out[2].detach().clone())

        handles = [r.register_forward_hook(hook) for r in self.routers]
        try:
            yield routes
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def replay(self, routes: list[torch.Tensor]):
        it = iter(routes)

        def hook(module, args, out):
            logits = out[0]
            idx = next(it)
            probs = torch.softmax(logits, dim=-1, dtype=torch.float)
            w = probs.gather(-1, idx)
            if getattr(module, "norm_topk_prob", False):
                w = w / w.sum(-1, keepdim=True)
            return logits, w.to(out[1].dtype), idx

        handles = [r.register_forward_hook(hook) for r in self.routers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def route_agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of (token, slot) expert choices two recordings share (1.0 = identical routing)."""
    same = sum(int((x.sort(-1).values == y.sort(-1).values).sum()) for x, y in zip(a, b))
    total = sum(x.numel() for x in a)
    return same / max(total, 1)
