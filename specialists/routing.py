"""Keep Routing for MoE models: the experts a token was routed to when sampled are the experts it uses in training.

Router families (how each router's choice and gate weights are recomputed) live in
``specialists/router_families.py``.

Route layout
------------
``Routes`` = a list with one tensor per MoE router, in model order (``model.named_modules()`` order = decoder-layer
order; dense layers have no entry; ``RouteReplay.names`` / ``.layer_ids`` say which module / decoder layer each
entry is). Entry ``i`` is an integer tensor ``[N, k]``: the ``k`` experts of each of the ``N = B*T`` tokens of the
learner's ``[B, T]`` input, row ``b*T + t`` for batch row ``b`` and position ``t`` (the row-major flattening every
router sees). A row holding any negative value means "no route given": the router chooses for that token itself
(used for padding positions and for tokens the engine never ran, e.g. the last sampled token). ``record()`` produces
this layout; ``routes_from_engine`` (per layer ``[B, T, k]`` or ``[N, k]``) and ``routes_from_sequences`` (per
sequence ``[L_i, n_layers, k]``, the token-major layout vLLM/SGLang return as ``routed_experts``) build it from an
engine's output. The engine side (the engines' ``Completion.routed_experts``, already in ``routes_from_sequences``'
per-sequence layout with the MoE routers as layer axis; recording a transformers generation loop with
``rollout.routes.capture`` / ``stitch_steps``) lives in ``rollout.routes``; ``RouteReplay.capture()`` is
``rollout.routes.capture`` on this model's routers.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from functools import partial
from typing import Callable, Sequence

import torch

from rollout.routes import capture as _capture_steps

from .router_families import _LAYER, family_of, find_routers, verify_family

Routes = list  # list[torch.Tensor], one [N, k] integer tensor per MoE router, see the module docstring
_REPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> its RouteReplay (RouteReplay.of)


# --------------------------------------------------------------------------------------------- route builders
def _int_rows(t) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"routes are expert indices: expected an integer tensor, got {t.dtype}")
    return t.long().reshape(-1, t.shape[-1])


def routes_from_engine(per_layer: Sequence, attention_mask: torch.Tensor | None = None) -> Routes:
    """Routes from an engine's per-layer indices, one entry per MoE router in model order, each ``[B, T, k]`` or
    already flattened ``[B*T, k]`` and aligned with the learner's ``[B, T]`` input (position t = input token t).
    Positions where ``attention_mask`` is 0 (the learner's padding) and rows with a negative index become "no route"
    (-1 in every slot: the learner's router chooses there)."""
    pad = None if attention_mask is None else attention_mask.reshape(-1) == 0
    out = []
    for t in per_layer:
        rows = _int_rows(t).clone()
        if pad is not None:
            if pad.numel() != rows.shape[0]:
                raise ValueError(f"routes have {rows.shape[0]} tokens, attention_mask {pad.numel()}")
            rows[pad.to(rows.device)] = -1
        rows[(rows < 0).any(-1)] = -1
        out.append(rows)
    return out


def routes_from_sequences(per_seq: Sequence, seq_len: int, layer_ids: Sequence[int] | None = None,
                          starts: Sequence[int] | None = None) -> Routes:
    """Routes for a right-padded ``[B, seq_len]`` learner batch from per-sequence engine routes.

    ``per_seq[b]`` is ``[L_b, n_layers, k]`` (token, layer, slot: vLLM's ``CompletionOutput.routed_experts``, any
    integer dtype) for the tokens of sequence b from position ``starts[b]`` (default 0; vLLM's
    ``routed_experts_prompt_start``) on: prompt then completion. An engine has no route for the last sampled token
    (it is never fed back), so ``L_b`` is usually ``len - 1``. Positions without a route (before the start, past
    ``L_b``, the padding) get -1: the learner's router chooses there, which cannot change the log-probs of earlier
    tokens. ``n_layers`` is either the number of MoE routers (model order) or every decoder layer (vLLM: dense
    layers included, their rows meaningless); then ``layer_ids`` (``RouteReplay.layer_ids``) picks the MoE rows."""
    B = len(per_seq)
    seqs = [torch.as_tensor(s) for s in per_seq]
    shapes = {tuple(s.shape[1:]) for s in seqs if s.numel()}
    if len(shapes) != 1:
        raise ValueError(f"per-sequence routes must share (n_layers, k), got {sorted(shapes) or 'no routes'}")
    n_layers, k = shapes.pop()
    sel = list(range(n_layers)) if layer_ids is None or len(layer_ids) == n_layers else list(layer_ids)
    if max(sel) >= n_layers:
        raise ValueError(f"routes have {n_layers} layers, need rows for decoder layers {sel}")
    starts = list(starts) if starts is not None else [0] * B
    full = torch.full((B, seq_len, len(sel), k), -1, dtype=torch.long)
    for b, s in enumerate(seqs):
        if not s.numel():
            continue
        end = starts[b] + s.shape[0]
        if end > seq_len:
            raise ValueError(f"sequence {b} has routes up to position {end}, the batch has {seq_len} positions")
        full[b, starts[b]:end] = _int_rows(s).reshape(s.shape)[:, sel]
    return routes_from_engine([full[:, :, i] for i in range(len(sel))])


def route_agreement(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Fraction of (token, slot) expert choices two recordings share (1.0 = identical routing). Rows that are "no
    route" (-1) in either recording are left out."""
    same = total = 0
    for x, y in zip(a, b):
        x, y = x.to(y.device).sort(-1).values, y.sort(-1).values
        valid = (x >= 0).all(-1) & (y >= 0).all(-1)
        same += int((x == y)[valid].sum())
        total += int(valid.sum()) * x.shape[-1]
    return same / max(total, 1)


# -------------------------------------------------------------------------------------------------- RouteReplay
class RouteReplay:
    """Record the experts every MoE router of ``model`` picks, and replay given experts in a later forward.

    ``RouteReplay(model)`` finds the routers (``.names``, ``.layer_ids``, ``.families``), checks each against its
    family on a probe (``verify=False`` skips that) and raises a one-line ValueError for MoE routing it cannot replay.
    A model without MoE gives ``active == False`` (record/replay are then no-ops yielding ``[]``)."""

    def __init__(self, model: torch.nn.Module, verify: bool = True):
        found = find_routers(model)
        self.model = model
        self.names = [n for n, _ in found]
        self.routers = [m for _, m in found]
        self.families = [family_of(m) for m in self.routers]
        self.layer_ids = [int(x.group(1)) if (x := _LAYER.search(n + ".")) else i
                          for i, n in enumerate(self.names)]
        if verify:
            for m, f in zip(self.routers, self.families):
                verify_family(m, f)

    @classmethod
    def of(cls, model: torch.nn.Module) -> "RouteReplay":
        """The model's RouteReplay, built (and verified) once per model: loss functions running on every learner
        rank call this with their own rank's model."""
        rr = _REPLAYS.get(model)
        if rr is None:
            rr = _REPLAYS[model] = cls(model)
        return rr

    @property
    def active(self) -> bool:
        return bool(self.routers)

    def __len__(self) -> int:
        return len(self.routers)

    # ------------------------------------------------------------------------------------------ recording
    def _hooks(self, calls: list[list[torch.Tensor]]):
        def make(i):
            def hook(module, args, out):
                calls[i].append(out[2].detach().clone())
            return hook
        return [r.register_forward_hook(make(i)) for i, r in enumerate(self.routers)]

    def _check_calls(self, calls, what: str) -> int:
        n = {len(c) for c in calls}
        if n <= {0}:
            return 0
        if len(n) > 1:
            missed = [self.names[i] for i, c in enumerate(calls) if len(c) < max(n)]
            raise RuntimeError(f"Keep Routing {what}: routers {missed} were not called in every forward "
                               f"(the MoE block bypasses its router module, e.g. a fused kernel)")
        return n.pop()

    @contextmanager
    def record(self):
        """Yields a list that holds, after the block, one ``[N, k]`` index tensor per router (model order) for the
        single forward run inside the block (see the module docstring for the layout)."""
        routes: Routes = []
        calls: list[list[torch.Tensor]] = [[] for _ in self.routers]
        handles = self._hooks(calls)
        try:
            yield routes
        finally:
            for h in handles:
                h.remove()
        n = self._check_calls(calls, "record")
        if n == 0 and self.routers:
            raise RuntimeError("Keep Routing record: no MoE router ran inside record() (no forward, or the MoE "
                               "blocks bypass their router modules)")
        if n > 1:
            raise RuntimeError(f"Keep Routing record: {n} forwards inside one record(); record one forward, or use "
                               "capture() for a generation loop")
        if n:
            routes.extend(c[0] for c in calls)

    def capture(self):
        """Engine side: yields a list that holds, after the block, one token-major ``[N_call, n_routers, k]`` tensor
        per forward run inside it (a prefill, then every decode step); ``stitch_steps`` assembles them. This is
        ``rollout.routes.capture`` on this model's routers."""
        return _capture_steps(self.routers, self.names)

    # ------------------------------------------------------------------------------------------ replay
    def _check_routes(self, routes) -> None:
        if len(routes) != len(self.routers):
            raise ValueError(f"Keep Routing: {len(routes)} route tensors for {len(self.routers)} MoE routers")
        for name, r, t in zip(self.names, self.routers, routes):
            k = getattr(r, "top_k", t.shape[-1])
            if t.dim() != 2 or t.shape[-1] != k:
                raise ValueError(f"Keep Routing: routes for {name} have shape {tuple(t.shape)}, expected [N, {k}]")
            if t.numel() and int(t.max()) >= r.num_experts:
                raise ValueError(f"Keep Routing: routes for {name} name expert {int(t.max())} of {r.num_experts}")

    @contextmanager
    def replay(self, routes: Routes):
        """Force ``routes`` (one ``[N, k]`` tensor per router, model order) in every forward run inside the block,
        with each router family's own gate weights. Gradients reach the router parameters; rows marked -1 keep the
        router's own choice. Raises if a router is never reached (a bypassing fused MoE kernel)."""
        if not self.routers:
            yield
            return
        if getattr(self.model, "is_gradient_checkpointing", False):
            raise RuntimeError("Keep Routing replay with gradient checkpointing: the backward recomputation runs "
                               "after the replay ends and would route by itself; disable gradient checkpointing")
        self._check_routes(routes)
        calls = [0] * len(self.routers)
        restore = []
        for i, (r, fam, given) in enumerate(zip(self.routers, self.families, routes)):
            restore.append(self._patch(r, partial(self._replay_forward, i, r, fam, given, calls)))
        ok = False
        try:
            yield
            ok = True
        finally:
            for undo in reversed(restore):
                undo()
        if ok and not (calls[0] > 0 and all(c == calls[0] for c in calls)):
            missed = [self.names[i] for i, c in enumerate(calls) if c < max(max(calls), 1)]
            raise RuntimeError(f"Keep Routing replay never reached routers {missed} (the MoE block bypasses its "
                               f"router module, e.g. a fused kernel): the replay would be a no-op")

    @staticmethod
    def _patch(module: torch.nn.Module, fn) -> Callable[[], None]:
        # patch the instance's forward, so hooks around __call__ (DeepSpeed ZeRO-3 gathering, output recorders,
        # record()) still run; under an accelerate hook the wrapped forward is ``_old_forward``
        attr = "_old_forward" if hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__ else "forward"
        had = attr in module.__dict__
        prev = module.__dict__.get(attr)
        orig = prev if had else type(module).forward.__get__(module)
        setattr(module, attr, partial(fn, orig))

        def undo():
            if had:
                setattr(module, attr, prev)
            else:
                delattr(module, attr)
        return undo

    def _replay_forward(self, i, module, family, given, calls, orig, *args, **kwargs):
        out = orig(*args, **kwargs)
        logits, own_w, own_idx = out[0], out[1], out[2]
        if given.shape != own_idx.shape:
            raise ValueError(f"Keep Routing: routes for {self.names[i]} are {tuple(given.shape)}, the forward routes "
                             f"{tuple(own_idx.shape)} (same [B, T] batch as recorded?)")
        given = given.to(device=own_idx.device)
        none = (given < 0).any(-1, keepdim=True)
        idx = torch.where(none, own_idx, given.to(own_idx.dtype)) if bool(none.any()) else given.to(own_idx.dtype)
        calls[i] += 1
        return (logits, family.weights_for(module, logits, idx).to(own_w.dtype), idx, *out[3:])
