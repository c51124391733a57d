"""The chunked kernel behind ``distill.kl``: student and teacher logits ``[chunk, V]`` one chunk at a time, the
per-token reverse KL and (when asked) its logit gradient contracted straight back into the hidden states and the
head, so nothing larger than a few ``[chunk, V]`` buffers is ever alive. Shapes as in ``distill/kl.py``."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


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
    h_N_H: Tensor,
    head_V_H: Tensor,
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
    n = h_N_H.shape[0]
    vocab = head_V_H.shape[0]
    cdtype = _compute_dtype(h_N_H.dtype)
    kl_out = torch.empty(n, dtype=cdtype, device=h_N_H.device)
    want_grad = row_scale is not None and (want_grad_hidden or want_grad_head)
    grad_hidden = torch.empty_like(h_N_H) if (want_grad and want_grad_hidden) else None
    grad_head_acc = (
        torch.zeros(vocab, head_V_H.shape[1], dtype=_compute_dtype(head_V_H.dtype), device=head_V_H.device)
        if (want_grad and want_grad_head)
        else None
    )
    inv_t = 1.0 / float(temperature)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        h = h_N_H[start:stop]
        zs = _head_logits(h, head_V_H, cdtype, temperature)
        zt = teacher(start, stop)
        scale = row_scale[start:stop] * inv_t if want_grad else None
        kl, g = _chunk_kl_and_grad(zs, zt, scale)
        kl_out[start:stop] = kl
        del zs, zt
        if g is None:
            continue
        g_in = g if g.dtype == h_N_H.dtype else g.to(h_N_H.dtype)
        del g
        if grad_hidden is not None:
            torch.mm(g_in, head_V_H, out=grad_hidden[start:stop])
        if grad_head_acc is not None:
            if g_in.dtype == grad_head_acc.dtype and h.dtype == grad_head_acc.dtype:
                grad_head_acc.addmm_(g_in.t(), h)
            else:
                grad_head_acc.add_((g_in.t() @ h.to(g_in.dtype)).to(grad_head_acc.dtype))
        del g_in
    grad_head = None
    if grad_head_acc is not None:
        grad_head = grad_head_acc if grad_head_acc.dtype == head_V_H.dtype else grad_head_acc.to(head_V_H.dtype)
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


def _teacher_from_hidden(teacher_h_N_Ht: Tensor, teacher_head_V_Ht: Tensor, cdtype: torch.dtype, temperature: float) -> TeacherFn:
    return lambda a, b: _head_logits(teacher_h_N_Ht[a:b], teacher_head_V_Ht, cdtype, temperature)


def _teacher_from_logits(teacher_logits_N_V: Tensor, cdtype: torch.dtype, temperature: float) -> TeacherFn:
    def fn(a: int, b: int) -> Tensor:
        z = teacher_logits_N_V[a:b].to(cdtype, copy=True)  # a fresh buffer: the kernel works in place
        if temperature != 1.0:
            z.div_(temperature)
        return z

    return fn


def _scatter_rows(active: Tensor, idx: Optional[Tensor], n: int) -> Tensor:
    if idx is None:
        return active
    out = active.new_zeros((n,) + tuple(active.shape[1:]))
    return out.index_copy_(0, idx, active)


def _make_teacher(payload: str, teacher_rows_N_X: Tensor, t_head: Optional[Tensor], dtype: torch.dtype, temperature: float):
    cdtype = _compute_dtype(dtype)
    if payload == "hidden":
        assert t_head is not None
        return _teacher_from_hidden(teacher_rows_N_X, t_head.detach(), cdtype, temperature)
    return _teacher_from_logits(teacher_rows_N_X, cdtype, temperature)
