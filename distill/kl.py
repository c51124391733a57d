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

Shapes: ``N`` loss positions, ``M`` of them active under a mask, ``H`` the student's hidden size, ``Ht`` the
teacher's, ``V`` the vocabulary, ``X`` = ``Ht`` (hidden-state payload) or ``V`` (logits payload).

The teacher side is always treated as a constant (no gradient), whether it is given as last hidden states plus the
teacher's head (the "hidden-state payload") or as full logits (``payload="logits"``, for comparison).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from .kl_chunks import _check_temperature, _compute_dtype, _make_teacher, _prepare, _run_chunks, _scatter_rows

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
# Per-token KL (backward recomputes chunk by chunk)
# --------------------------------------------------------------------------------------------------------------
class _ReverseKLPerToken(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_N_H, head_V_H, teacher_N_X, teacher_head_V_Ht, chunk_size, temperature, mask, payload):  # type: ignore[override]
        n = h_N_H.shape[0]
        teacher_rows_N_X = teacher_N_X.detach()
        idx, h_act_M_H, teacher_act_M_X = _prepare(h_N_H, head_V_H, teacher_rows_N_X, mask, chunk_size, temperature)
        teacher = _make_teacher(payload, teacher_act_M_X, teacher_head_V_Ht, h_N_H.dtype, temperature)
        with torch.no_grad():
            kl_act_M, _, _ = _run_chunks(h_act_M_H, head_V_H, teacher, int(chunk_size), temperature, None, False, False)
        ctx.save_for_backward(h_act_M_H, head_V_H, teacher_act_M_X, teacher_head_V_Ht if teacher_head_V_Ht is not None else None, idx)
        ctx.chunk_size, ctx.temperature, ctx.payload, ctx.n = int(chunk_size), float(temperature), payload, n
        return _scatter_rows(kl_act_M, idx, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_kl):  # type: ignore[override]
        h_act_M_H, head_V_H, teacher_act_M_X, teacher_head_V_Ht, idx = ctx.saved_tensors
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_h or want_w):
            return None, None, None, None, None, None, None, None
        scale = grad_kl if idx is None else grad_kl.index_select(0, idx)
        teacher = _make_teacher(ctx.payload, teacher_act_M_X, teacher_head_V_Ht, h_act_M_H.dtype, ctx.temperature)
        with torch.no_grad():
            _, grad_h_act_M_H, grad_head_V_H = _run_chunks(
                h_act_M_H, head_V_H, teacher, ctx.chunk_size, ctx.temperature, scale.to(_compute_dtype(h_act_M_H.dtype)), want_h, want_w
            )
        grad_h_N_H = _scatter_rows(grad_h_act_M_H, idx, ctx.n) if grad_h_act_M_H is not None else None
        if grad_head_V_H is None and want_w:
            grad_head_V_H = torch.zeros_like(head_V_H)
        return grad_h_N_H, grad_head_V_H, None, None, None, None, None, None


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
    def forward(ctx, h_N_H, head_V_H, teacher_N_X, teacher_head_V_Ht, chunk_size, temperature, mask, payload, reduction):  # type: ignore[override]
        idx, h_act_M_H, teacher_act_M_X = _prepare(h_N_H, head_V_H, teacher_N_X.detach(), mask, chunk_size, temperature)
        n_active = h_act_M_H.shape[0]
        cdtype = _compute_dtype(h_N_H.dtype)
        coef = 1.0 / max(n_active, 1) if reduction == "mean" else 1.0
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = torch.full((n_active,), coef, dtype=cdtype, device=h_N_H.device) if (want_h or want_w) else None
        teacher = _make_teacher(payload, teacher_act_M_X, teacher_head_V_Ht, h_N_H.dtype, temperature)
        with torch.no_grad():
            kl_act_M, grad_h_act_M_H, grad_head_V_H = _run_chunks(h_act_M_H, head_V_H, teacher, int(chunk_size), temperature, scale, want_h, want_w)
        grad_h_N_H = _scatter_rows(grad_h_act_M_H, idx, h_N_H.shape[0]) if grad_h_act_M_H is not None else None
        if want_w and grad_head_V_H is None:
            grad_head_V_H = torch.zeros_like(head_V_H)
        if want_h and grad_h_N_H is None:
            grad_h_N_H = torch.zeros_like(h_N_H)
        ctx.save_for_backward(grad_h_N_H, grad_head_V_H)
        return kl_act_M.sum() * coef

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        grad_h_N_H, grad_head_V_H = ctx.saved_tensors
        # the usual case (the loss is the final scalar) needs no rescaling: skip a [V, Hs] copy
        if not torch.equal(grad_out, torch.ones_like(grad_out)):
            grad_h_N_H = grad_h_N_H * grad_out.to(grad_h_N_H.dtype) if grad_h_N_H is not None else None
            grad_head_V_H = grad_head_V_H * grad_out.to(grad_head_V_H.dtype) if grad_head_V_H is not None else None
        return grad_h_N_H, grad_head_V_H, None, None, None, None, None, None, None


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
