"""Full-vocabulary reverse KL for on-policy distillation, chunked and fused with the output heads.

Objective (DeepSeek-V4 OPD): for every completion position t of a student-generated trajectory,

    KL(q || p) = sum_v q(v) (log q(v) - log p(v)),   q = softmax(z / T) (student), p = softmax(u / T) (teacher)

and its gradient w.r.t. the (temperature-scaled) student logits is

    dKL/dz_j = q_j (log q_j - log p_j - KL)            (times 1/T w.r.t. the raw logits).

The naive way materialises ``[N, V]`` student and teacher logits (plus log-softmaxes, probabilities and
gradients: several ``[N, V]`` fp32 tensors; 16k tokens x 152k vocab is ~10 GB *each*).  The fused path takes the
*hidden states* and the *output heads* instead and walks over the tokens in chunks: for one chunk it computes
student and teacher logits ``[chunk, V]`` in fp32, the KL per token and, when gradients are wanted, the logit
gradient above, which it immediately contracts back into ``grad_hidden = g @ W_s`` and ``grad_head += g^T @ h``.
Nothing larger than a few ``[chunk, V]`` buffers is alive at any time, in forward or backward.

Two autograd flavours are provided:

* :func:`reverse_kl_per_token` returns the per-token KL ``[N]`` (any downstream reduction/weighting works).  Its
  backward recomputes the chunk logits (it cannot know the per-token upstream gradient in forward), so it costs
  6 head matmuls instead of 4.
* :func:`fused_reverse_kl_loss` returns the (masked) mean or sum directly.  Because the upstream gradient of each
  token is then known up to one scalar, it computes the gradients *during* the forward pass (Liger-style), so
  forward+backward costs the same 4 head matmuls as the naive loss and needs no recomputation.

The teacher side is always treated as a constant (no gradient), whether it is given as last hidden states plus the
teacher's head (the "hidden-state payload") or as full logits (``payload="logits"``, for comparison).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
from torch import Tensor

__all__ = [
    "reverse_kl_from_logits",
    "reverse_kl_per_token",
    "reverse_kl_per_token_from_teacher_logits",
    "fused_reverse_kl_loss",
    "masked_mean",
    "teacher_payload_bytes",
]

DEFAULT_CHUNK_SIZE = 1024


# --------------------------------------------------------------------------------------------------------------
# Naive reference
# --------------------------------------------------------------------------------------------------------------
def reverse_kl_from_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Naive reference: ``KL(q||p)`` over the last dim, ``q = softmax(student/T)``, ``p = softmax(teacher/T)``.

    Math in float32 (float64 inputs stay float64).  Returns ``[...]`` (the leading shape).  Differentiable in both
    arguments through plain autograd; materialises everything.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"shape mismatch: student {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}")
    _check_temperature(temperature)
    cdtype = _compute_dtype(student_logits.dtype)
    logq = torch.log_softmax(student_logits.to(cdtype) / temperature, dim=-1)
    logp = torch.log_softmax(teacher_logits.to(cdtype) / temperature, dim=-1)
    return (logq.exp() * (logq - logp)).sum(dim=-1)


def masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``values`` over positions where ``mask`` is true (all positions when ``mask`` is None).

    An all-masked input gives 0 (with a zero gradient), not NaN.
    """
    if mask is None:
        return values.mean()
    mask = mask.to(device=values.device, dtype=torch.bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != values shape {tuple(values.shape)}")
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1)


def teacher_payload_bytes(
    n_tokens: int,
    hidden: int,
    vocab: int,
    payload: Literal["hidden", "logits"] = "hidden",
    dtype_bytes: Optional[int] = None,
) -> int:
    """Bytes a teacher returns for ``n_tokens`` positions.

    ``payload="hidden"``: last hidden states, ``n_tokens * hidden * dtype_bytes`` (default bf16, 2 bytes).
    ``payload="logits"``: full logits, ``n_tokens * vocab * dtype_bytes`` (default fp32, 4 bytes: full-vocabulary
    logits are kept in fp32 for the softmax).  With those defaults the ratio logits/hidden is ``2V/H`` -- about
    74x at H=4096, V=151,936 -- which is the saving the V4 report quotes.  Pass ``dtype_bytes`` to force one width
    for both (the ratio is then ``V/H``).
    """
    if n_tokens < 0 or hidden <= 0 or vocab <= 0:
        raise ValueError("n_tokens must be >= 0 and hidden, vocab > 0")
    if payload == "hidden":
        return int(n_tokens) * int(hidden) * (2 if dtype_bytes is None else int(dtype_bytes))
    if payload == "logits":
        return int(n_tokens) * int(vocab) * (4 if dtype_bytes is None else int(dtype_bytes))
    raise ValueError(f"payload must be 'hidden' or 'logits', got {payload!r}")


# --------------------------------------------------------------------------------------------------------------
# Chunked kernel
# --------------------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> None:
    if not (float(temperature) > 0.0):
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _head_logits(h: Tensor, head: Tensor, cdtype: torch.dtype, temperature: float) -> Tensor:
    """``(h @ head^T) / T`` as a fresh ``[c, V]`` tensor in the compute dtype (safe to modify in place).

    The matmul runs in the input dtype (bf16 matmuls accumulate in fp32) and the result is upcast.
    """
    if h.dtype != head.dtype:
        h = h.to(head.dtype)
    z = h @ head.t()
    if z.dtype != cdtype:
        z = z.to(cdtype)
    if temperature != 1.0:
        z.div_(temperature)
    return z


def _chunk_kl_and_grad(zs: Tensor, zt: Tensor, scale: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Per-token reverse KL of one chunk and (if ``scale`` is given) ``scale * dKL/dz``.

    ``zs``/``zt`` are the temperature-scaled student/teacher logits ``[c, V]``; both buffers are consumed (reused in
    place), so at most ~3 ``[c, V]`` buffers are alive here (the two inputs + one temporary).
    Returns ``kl [c]`` and the logit gradient ``[c, V]`` (living in ``zt``'s buffer) or None.
    """
    zs.sub_(torch.logsumexp(zs, dim=-1, keepdim=True))  # zs := log q
    zt.sub_(torch.logsumexp(zt, dim=-1, keepdim=True))  # zt := log p
    zt.neg_().add_(zs)  # zt := log q - log p
    q = zs.exp_()  # zs := q
    # (a [c, V] temporary, but einsum/bmm's long fp32 dot products lose ~100x more precision than sum's cascade)
    kl = torch.mul(q, zt).sum(dim=-1)
    if scale is None:
        return kl, None
    # g_j = q_j (log q_j - log p_j - KL) * scale   (scale = upstream grad / T)
    g = zt.sub_(kl.unsqueeze(1)).mul_(q).mul_(scale.to(zt.dtype).unsqueeze(1))
    return kl, g


TeacherFn = Callable[[int, int], Tensor]  # (start, stop) over the active rows -> fresh [c, V] scaled logits


def _run_chunks(
    sh: Tensor,
    sw: Tensor,
    teacher: TeacherFn,
    chunk_size: int,
    temperature: float,
    row_scale: Optional[Tensor],
    want_grad_hidden: bool,
    want_grad_head: bool,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Loop over contiguous chunks of the (already mask-compacted) rows.

    ``row_scale`` ``[n]``: per-token upstream gradient; when given (and a gradient is wanted) the gradients
    ``grad_hidden [n, Hs]`` and ``grad_head [V, Hs]`` of ``sum_n row_scale_n * KL_n`` are accumulated.
    """
    n = sh.shape[0]
    vocab = sw.shape[0]
    cdtype = _compute_dtype(sh.dtype)
    kl_out = torch.empty(n, dtype=cdtype, device=sh.device)
    want_grad = row_scale is not None and (want_grad_hidden or want_grad_head)
    grad_hidden = torch.empty_like(sh) if (want_grad and want_grad_hidden) else None
    grad_head_acc = (
        torch.zeros(vocab, sw.shape[1], dtype=_compute_dtype(sw.dtype), device=sw.device)
        if (want_grad and want_grad_head)
        else None
    )
    inv_t = 1.0 / float(temperature)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        h = sh[start:stop]
        zs = _head_logits(h, sw, cdtype, temperature)
        zt = teacher(start, stop)
        scale = row_scale[start:stop] * inv_t if want_grad else None
        kl, g = _chunk_kl_and_grad(zs, zt, scale)
        kl_out[start:stop] = kl
        del zs, zt
        if g is None:
            continue
        g_in = g if g.dtype == sh.dtype else g.to(sh.dtype)
        del g
        if grad_hidden is not None:
            torch.mm(g_in, sw, out=grad_hidden[start:stop])
        if grad_head_acc is not None:
            if g_in.dtype == grad_head_acc.dtype and h.dtype == grad_head_acc.dtype:
                grad_head_acc.addmm_(g_in.t(), h)
            else:
                grad_head_acc.add_((g_in.t() @ h.to(g_in.dtype)).to(grad_head_acc.dtype))
        del g_in
    grad_head = None
    if grad_head_acc is not None:
        grad_head = grad_head_acc if grad_head_acc.dtype == sw.dtype else grad_head_acc.to(sw.dtype)
    return kl_out, grad_hidden, grad_head


def _prepare(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_rows: Tensor,
    mask: Optional[Tensor],
    chunk_size: int,
    temperature: float,
) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """Validate and compact: returns ``(idx or None, active student hidden, active teacher rows)``."""
    if student_hidden.dim() != 2 or student_head.dim() != 2:
        raise ValueError("student_hidden must be [N, Hs] and student_head [V, Hs]")
    if student_hidden.dtype != student_head.dtype:
        raise ValueError(f"student_hidden dtype {student_hidden.dtype} != student_head dtype {student_head.dtype}")
    if student_hidden.shape[1] != student_head.shape[1]:
        raise ValueError(
            f"student hidden size {student_hidden.shape[1]} != student head in-features {student_head.shape[1]}"
        )
    if teacher_rows.shape[0] != student_hidden.shape[0]:
        raise ValueError(f"teacher has {teacher_rows.shape[0]} tokens, student has {student_hidden.shape[0]}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_temperature(temperature)
    if mask is None:
        return None, student_hidden, teacher_rows
    mask = mask.to(device=student_hidden.device, dtype=torch.bool).reshape(-1)
    if mask.shape[0] != student_hidden.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} entries, expected {student_hidden.shape[0]}")
    idx = mask.nonzero().squeeze(1)
    return idx, student_hidden.index_select(0, idx), teacher_rows.index_select(0, idx)


def _teacher_from_hidden(th: Tensor, tw: Tensor, cdtype: torch.dtype, temperature: float) -> TeacherFn:
    return lambda a, b: _head_logits(th[a:b], tw, cdtype, temperature)


def _teacher_from_logits(tl: Tensor, cdtype: torch.dtype, temperature: float) -> TeacherFn:
    def fn(a: int, b: int) -> Tensor:
        z = tl[a:b].to(cdtype, copy=True)  # a fresh buffer: the kernel works in place
        if temperature != 1.0:
            z.div_(temperature)
        return z

    return fn


def _scatter_rows(active: Tensor, idx: Optional[Tensor], n: int) -> Tensor:
    if idx is None:
        return active
    out = active.new_zeros((n,) + tuple(active.shape[1:]))
    return out.index_copy_(0, idx, active)


# --------------------------------------------------------------------------------------------------------------
# Per-token KL (backward recomputes chunk by chunk)
# --------------------------------------------------------------------------------------------------------------
class _ReverseKLPerToken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, t_a, t_b, chunk_size, temperature, mask, payload):  # type: ignore[override]
        n = sh.shape[0]
        t_rows = t_a.detach()
        idx, sh_a, t_rows_a = _prepare(sh, sw, t_rows, mask, chunk_size, temperature)
        teacher = _make_teacher(payload, t_rows_a, t_b, sh.dtype, temperature)
        with torch.no_grad():
            kl_a, _, _ = _run_chunks(sh_a, sw, teacher, int(chunk_size), temperature, None, False, False)
        ctx.save_for_backward(sh_a, sw, t_rows_a, t_b if t_b is not None else None, idx)
        ctx.chunk_size, ctx.temperature, ctx.payload, ctx.n = int(chunk_size), float(temperature), payload, n
        return _scatter_rows(kl_a, idx, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kl):  # type: ignore[override]
        sh_a, sw, t_rows_a, t_b, idx = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_h or want_w):
            return None, None, None, None, None, None, None, None
        scale = grad_kl if idx is None else grad_kl.index_select(0, idx)
        teacher = _make_teacher(ctx.payload, t_rows_a, t_b, sh_a.dtype, ctx.temperature)
        with torch.no_grad():
            _, g_h_a, g_w = _run_chunks(
                sh_a, sw, teacher, ctx.chunk_size, ctx.temperature, scale.to(_compute_dtype(sh_a.dtype)), want_h, want_w
            )
        g_h = _scatter_rows(g_h_a, idx, ctx.n) if g_h_a is not None else None
        if g_w is None and want_w:
            g_w = torch.zeros_like(sw)
        return g_h, g_w, None, None, None, None, None, None


def _make_teacher(payload: str, t_rows: Tensor, t_head: Optional[Tensor], dtype: torch.dtype, temperature: float):
    cdtype = _compute_dtype(dtype)
    if payload == "hidden":
        assert t_head is not None
        return _teacher_from_hidden(t_rows, t_head.detach(), cdtype, temperature)
    return _teacher_from_logits(t_rows, cdtype, temperature)


def _check_teacher_hidden(student_head: Tensor, teacher_hidden: Tensor, teacher_head: Tensor) -> None:
    if teacher_hidden.dim() != 2 or teacher_head.dim() != 2:
        raise ValueError("teacher_hidden must be [N, Ht] and teacher_head [V, Ht]")
    if teacher_head.shape[0] != student_head.shape[0]:
        raise ValueError(
            f"vocabulary mismatch: student head has {student_head.shape[0]} rows, teacher head {teacher_head.shape[0]}"
        )
    if teacher_hidden.shape[1] != teacher_head.shape[1]:
        raise ValueError(
            f"teacher hidden size {teacher_hidden.shape[1]} != teacher head in-features {teacher_head.shape[1]}"
        )


def _check_teacher_logits(student_head: Tensor, teacher_logits: Tensor) -> None:
    if teacher_logits.dim() != 2 or teacher_logits.shape[1] != student_head.shape[0]:
        raise ValueError(
            f"teacher_logits must be [N, V={student_head.shape[0]}], got {tuple(teacher_logits.shape)}"
        )


def reverse_kl_per_token(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Tensor,
    teacher_head: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Per-token reverse KL ``KL(student || teacher)`` from hidden states and output heads, ``[N]``.

    ``student_hidden [N, Hs]``, ``student_head [V, Hs]``, ``teacher_hidden [N, Ht]``, ``teacher_head [V, Ht]``
    (Hs and Ht may differ; V must match).  Differentiable w.r.t. ``student_hidden`` and ``student_head``; the
    teacher is a constant.  Never holds more than a few ``[chunk_size, V]`` fp32 buffers, in forward or backward
    (backward recomputes the chunk logits).  bf16/fp16 inputs: matmuls in the input dtype, softmax/KL in fp32.
    ``mask [N]`` (bool): masked rows are skipped entirely (KL 0, gradient 0, no compute).
    """
    _check_teacher_hidden(student_head, teacher_hidden, teacher_head)
    return _ReverseKLPerToken.apply(
        student_hidden, student_head, teacher_hidden, teacher_head, chunk_size, temperature, mask, "hidden"
    )


def reverse_kl_per_token_from_teacher_logits(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_logits: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Like :func:`reverse_kl_per_token` but the teacher sends full logits ``[N, V]`` (``payload="logits"``).

    The student side is still chunked and fused; the teacher logits are read one chunk at a time.
    """
    _check_teacher_logits(student_head, teacher_logits)
    return _ReverseKLPerToken.apply(
        student_hidden, student_head, teacher_logits, None, chunk_size, temperature, mask, "logits"
    )


# --------------------------------------------------------------------------------------------------------------
# Reduced loss (gradients computed during forward: no recomputation)
# --------------------------------------------------------------------------------------------------------------
class _FusedReverseKLLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, t_a, t_b, chunk_size, temperature, mask, payload, reduction):  # type: ignore[override]
        idx, sh_a, t_rows_a = _prepare(sh, sw, t_a.detach(), mask, chunk_size, temperature)
        n_active = sh_a.shape[0]
        cdtype = _compute_dtype(sh.dtype)
        coef = 1.0 / max(n_active, 1) if reduction == "mean" else 1.0
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = torch.full((n_active,), coef, dtype=cdtype, device=sh.device) if (want_h or want_w) else None
        teacher = _make_teacher(payload, t_rows_a, t_b, sh.dtype, temperature)
        with torch.no_grad():
            kl_a, g_h_a, g_w = _run_chunks(sh_a, sw, teacher, int(chunk_size), temperature, scale, want_h, want_w)
        g_h = _scatter_rows(g_h_a, idx, sh.shape[0]) if g_h_a is not None else None
        if want_w and g_w is None:
            g_w = torch.zeros_like(sw)
        if want_h and g_h is None:
            g_h = torch.zeros_like(sh)
        ctx.save_for_backward(g_h, g_w)
        return kl_a.sum() * coef

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        g_h, g_w = ctx.saved_tensors
        # the usual case (the loss is the final scalar) needs no rescaling: skip a [V, Hs] copy
        if not torch.equal(grad_out, torch.ones_like(grad_out)):
            g_h = g_h * grad_out.to(g_h.dtype) if g_h is not None else None
            g_w = g_w * grad_out.to(g_w.dtype) if g_w is not None else None
        return g_h, g_w, None, None, None, None, None, None, None


def fused_reverse_kl_loss(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_hidden: Optional[Tensor] = None,
    teacher_head: Optional[Tensor] = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    mask: Optional[Tensor] = None,
    reduction: Literal["mean", "sum"] = "mean",
    teacher_logits: Optional[Tensor] = None,
) -> Tensor:
    """Scalar reverse-KL loss: ``masked_mean(reverse_kl_per_token(...), mask)`` (or the sum), in one pass.

    Same inputs as :func:`reverse_kl_per_token` (or ``teacher_logits [N, V]`` instead of teacher hidden+head).
    Gradients w.r.t. ``student_hidden``/``student_head`` are computed chunk by chunk *during the forward* and
    stored (they are ``[N, Hs]`` and ``[V, Hs]``, never ``[N, V]``), so forward+backward costs 4 head matmuls like the
    naive loss.  Use this in the training step; use :func:`reverse_kl_per_token` when you need per-token values with
    arbitrary downstream weighting.  Only first-order gradients.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_head is not None:
            raise ValueError("pass either teacher_logits or teacher_hidden + teacher_head, not both")
        _check_teacher_logits(student_head, teacher_logits)
        return _FusedReverseKLLoss.apply(
            student_hidden, student_head, teacher_logits, None, chunk_size, temperature, mask, "logits", reduction
        )
    if teacher_hidden is None or teacher_head is None:
        raise ValueError("teacher_hidden and teacher_head are required (or teacher_logits)")
    _check_teacher_hidden(student_head, teacher_hidden, teacher_head)
    return _FusedReverseKLLoss.apply(
        student_hidden, student_head, teacher_hidden, teacher_head, chunk_size, temperature, mask, "hidden", reduction
    )
