"""Chunked fused reverse KL (distill/kl.py) against the naive full-logits reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from distill.kl import (
    fused_reverse_kl_loss,
    masked_mean,
    reverse_kl_from_logits,
    reverse_kl_per_token,
    reverse_kl_per_token_from_teacher_logits,
    teacher_payload_bytes,
)

torch.set_num_threads(1)  # tiny shapes; the machine's cores are shared


def _inputs(n, v, hs, ht, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    sh = (torch.randn(n, hs, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(True)
    sw = (torch.randn(v, hs, generator=g, dtype=torch.float64) / hs**0.5).to(dtype).requires_grad_(True)
    th = (torch.randn(n, ht, generator=g, dtype=torch.float64) * scale).to(dtype)
    tw = (torch.randn(v, ht, generator=g, dtype=torch.float64) / ht**0.5).to(dtype)
    return sh, sw, th, tw


def _naive(sh, sw, th, tw, temperature=1.0):
    return reverse_kl_from_logits(sh @ sw.t(), th @ tw.t(), temperature)


def _grads(out, params):
    return torch.autograd.grad(out, params)


def _close(a, b, rtol):
    # relative to the tensor's scale so tiny entries don't dominate
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.detach().abs().max().clamp_min(1e-30)))


# (n, v, hs, ht, chunk, temperature, masked)
CASES = [
    (37, 101, 8, 8, 8, 1.0, False),  # chunk does not divide N
    (50, 257, 16, 24, 7, 1.0, False),  # Hs != Ht
    (64, 300, 12, 5, 64, 0.7, True),  # one chunk, temperature < 1, masked
    (33, 129, 6, 20, 1, 2.0, True),  # chunk 1, temperature > 1, masked
    (90, 500, 32, 16, 25, 1.3, True),
]


@pytest.mark.parametrize("n,v,hs,ht,chunk,temp,masked", CASES)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_per_token_matches_naive_loss_and_grads(n, v, hs, ht, chunk, temp, masked, dtype, rtol):
    sh, sw, th, tw = _inputs(n, v, hs, ht, dtype, seed=n + v, scale=2.0)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(n, generator=g) < 0.7 if masked else None
    upstream = torch.rand(n, generator=g, dtype=torch.float64).to(dtype)  # non-uniform per-token weights

    kl = reverse_kl_per_token(sh, sw, th, tw, chunk_size=chunk, temperature=temp, mask=mask)
    ref = _naive(sh, sw, th, tw, temp)
    if mask is not None:
        ref = ref * mask.to(ref.dtype)
        assert torch.all(kl[~mask] == 0)
    assert kl.shape == (n,) and kl.dtype == dtype
    _close(kl, ref, rtol)
    gh, gw = _grads((kl * upstream).sum(), (sh, sw))
    rh, rw = _grads((ref * upstream).sum(), (sh, sw))
    _close(gh, rh, rtol)
    _close(gw, rw, rtol)
    if mask is not None:
        assert torch.all(gh[~mask] == 0)


@pytest.mark.parametrize("n,v,hs,ht,chunk,temp,masked", CASES)
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_fused_loss_matches_naive_masked_mean(n, v, hs, ht, chunk, temp, masked, dtype, rtol):
    sh, sw, th, tw = _inputs(n, v, hs, ht, dtype, seed=3 * n + v, scale=2.0)
    mask = (torch.rand(n, generator=torch.Generator().manual_seed(2)) < 0.6) if masked else None
    loss = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=chunk, temperature=temp, mask=mask)
    ref = masked_mean(_naive(sh, sw, th, tw, temp), mask)
    _close(loss, ref, rtol)
    # a non-unit upstream gradient is applied correctly
    gh, gw = _grads(3.0 * loss, (sh, sw))
    rh, rw = _grads(3.0 * ref, (sh, sw))
    _close(gh, rh, rtol)
    _close(gw, rw, rtol)

    total = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=chunk, temperature=temp, mask=mask, reduction="sum")
    ref_sum = (_naive(sh, sw, th, tw, temp) * (mask.to(dtype) if mask is not None else 1)).sum()
    _close(total, ref_sum, rtol)


def test_fused_loss_retain_graph_accumulates():
    sh, sw, th, tw = _inputs(20, 50, 6, 7, torch.float64, seed=23)
    loss = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=6)
    loss.backward(retain_graph=True)
    g1h, g1w = sh.grad.clone(), sw.grad.clone()
    loss.backward()
    _close(sh.grad, 2 * g1h, 1e-12)
    _close(sw.grad, 2 * g1w, 1e-12)


def test_logit_gradient_is_q_times_logq_minus_logp_minus_kl():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(6, 40, generator=g, dtype=torch.float64)
    for temp in (1.0, 0.5, 3.0):
        kl = reverse_kl_from_logits(z, u, temp)
        (grad,) = torch.autograd.grad(kl.sum(), z)
        logq = torch.log_softmax(z.detach() / temp, -1)
        logp = torch.log_softmax(u / temp, -1)
        q = logq.exp()
        expected = q * (logq - logp - kl.detach().unsqueeze(-1)) / temp
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)

    # and the fused path's effective logit gradient is the same formula: with an identity head (Hs = V) the gradient
    # w.r.t. the hidden state *is* the gradient w.r.t. the logits
    v = 40
    sh = z.detach().clone().requires_grad_(True)
    eye = torch.eye(v, dtype=torch.float64)
    kl = reverse_kl_per_token(sh, eye, u, eye, chunk_size=4)
    (gh,) = torch.autograd.grad(kl.sum(), sh)
    logq, logp = torch.log_softmax(sh.detach(), -1), torch.log_softmax(u, -1)
    q = logq.exp()
    torch.testing.assert_close(gh, q * (logq - logp - (q * (logq - logp)).sum(-1, keepdim=True)), rtol=1e-10, atol=1e-12)


def test_kl_nonnegative_and_zero_for_identical_models():
    sh, sw, th, tw = _inputs(70, 333, 10, 14, torch.float32, seed=5, scale=3.0)
    kl = reverse_kl_per_token(sh, sw, th, tw, chunk_size=16)
    assert torch.all(kl >= -1e-6)
    assert float(kl.detach().min()) < float(kl.detach().max())
    same = reverse_kl_per_token(sh, sw, sh.detach(), sw.detach(), chunk_size=16)
    assert torch.all(same.abs() <= 1e-6)
    (gh,) = torch.autograd.grad(same.sum(), sh)
    assert float(gh.abs().max()) <= 1e-6
    naive_same = reverse_kl_from_logits(sh @ sw.t(), sh @ sw.t())
    assert torch.all(naive_same.abs() <= 1e-6)


def test_teacher_logits_payload_matches_hidden_payload():
    sh, sw, th, tw = _inputs(41, 210, 9, 13, torch.float64, seed=7)
    mask = torch.arange(41) % 3 != 0
    tl = (th @ tw.t()).detach()
    tl_before = tl.clone()
    a = reverse_kl_per_token(sh, sw, th, tw, chunk_size=6, temperature=1.5, mask=mask)
    b = reverse_kl_per_token_from_teacher_logits(sh, sw, tl, chunk_size=6, temperature=1.5, mask=mask)
    _close(b, a, 1e-12)
    ga = _grads(a.sum(), (sh, sw))
    gb = _grads(b.sum(), (sh, sw))
    for x, y in zip(gb, ga):
        _close(x, y, 1e-12)
    c = fused_reverse_kl_loss(sh, sw, teacher_logits=tl, chunk_size=6, temperature=1.5, mask=mask)
    _close(c, masked_mean(a, mask), 1e-12)
    assert torch.equal(tl, tl_before)  # the caller's logits are not modified in place


def test_gradcheck_per_token():
    sh, sw, th, tw = _inputs(9, 17, 4, 3, torch.float64, seed=11)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    assert torch.autograd.gradcheck(
        lambda a, b: reverse_kl_per_token(a, b, th, tw, chunk_size=4, temperature=0.8, mask=mask), (sh, sw)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: fused_reverse_kl_loss(a, b, th, tw, chunk_size=2, temperature=1.2, mask=mask), (sh, sw)
    )


def test_bf16_inputs_compute_in_fp32():
    sh, sw, th, tw = _inputs(48, 256, 16, 32, torch.bfloat16, seed=13)
    kl = reverse_kl_per_token(sh, sw, th, tw, chunk_size=10)
    assert kl.dtype == torch.float32
    ref = reverse_kl_from_logits((sh @ sw.t()).float(), (th @ tw.t()).float())
    torch.testing.assert_close(kl, ref, rtol=1e-4, atol=1e-5)
    gh, gw = _grads(kl.sum(), (sh, sw))
    assert gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    rh, rw = _grads(reverse_kl_from_logits(sh.float() @ sw.float().t(), (th @ tw.t()).float()).sum(), (sh, sw))
    torch.testing.assert_close(gh.float(), rh.float(), rtol=3e-2, atol=3e-2 * float(rh.float().abs().max()))
    torch.testing.assert_close(gw.float(), rw.float(), rtol=3e-2, atol=3e-2 * float(rw.float().abs().max()))
    loss = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=10)
    torch.testing.assert_close(loss, kl.mean(), rtol=1e-5, atol=1e-6)


def test_all_masked_and_masked_mean():
    sh, sw, th, tw = _inputs(12, 30, 4, 4, torch.float32, seed=17)
    none = torch.zeros(12, dtype=torch.bool)
    kl = reverse_kl_per_token(sh, sw, th, tw, chunk_size=5, mask=none)
    assert torch.equal(kl, torch.zeros(12))
    gh, gw = _grads(kl.sum(), (sh, sw))
    assert torch.equal(gh, torch.zeros_like(gh)) and torch.equal(gw, torch.zeros_like(gw))
    loss = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=5, mask=none)
    assert float(loss.detach()) == 0.0
    gh, gw = _grads(loss, (sh, sw))
    assert torch.equal(gh, torch.zeros_like(gh)) and torch.equal(gw, torch.zeros_like(gw))
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(masked_mean(vals, torch.tensor([True, False, True, False]))) == 2.0
    assert float(masked_mean(vals, None)) == 2.5
    assert float(masked_mean(vals, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_input_validation():
    sh, sw, th, tw = _inputs(8, 20, 4, 6, torch.float32)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        reverse_kl_per_token(sh, sw, th, tw[:19], chunk_size=4)
    with pytest.raises(ValueError, match="tokens"):
        reverse_kl_per_token(sh, sw, th[:7], tw, chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size"):
        reverse_kl_per_token(sh, sw, th, tw, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        reverse_kl_per_token(sh, sw, th, tw, chunk_size=4, temperature=0.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        reverse_kl_per_token_from_teacher_logits(sh, sw, torch.zeros(8, 21), chunk_size=4)


def test_teacher_payload_bytes():
    v, h = 151_936, 4096
    hid = teacher_payload_bytes(1000, h, v, "hidden")
    log = teacher_payload_bytes(1000, h, v, "logits")
    assert hid == 1000 * h * 2 and log == 1000 * v * 4
    assert log / hid == pytest.approx(2 * v / h) and 74 <= log / hid < 75
    assert teacher_payload_bytes(10, 1024, v, "logits", dtype_bytes=2) / teacher_payload_bytes(
        10, 1024, v, "hidden", dtype_bytes=2
    ) == pytest.approx(v / 1024)
    with pytest.raises(ValueError):
        teacher_payload_bytes(1, 1, 1, "topk")  # type: ignore[arg-type]


class _AllocationRecorder(TorchDispatchMode):
    """Largest freshly allocated tensor (bytes) produced by any op, forward and backward (views excluded)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.largest_op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_ptrs = {
            t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
        }
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in in_ptrs:
                nbytes = t.untyped_storage().nbytes()
                if nbytes > self.largest:
                    self.largest, self.largest_op = nbytes, str(func)
        return out


@pytest.mark.parametrize("fn", ["per_token", "loss"])
def test_fused_never_allocates_n_by_v(fn):
    n, v, hs, ht, chunk = 256, 1024, 8, 12, 16  # [N, V] is 16x a [chunk, V] buffer
    sh, sw, th, tw = _inputs(n, v, hs, ht, torch.float32, seed=19)
    mask = torch.arange(n) % 5 != 0
    chunk_bytes = chunk * v * 4
    with _AllocationRecorder() as rec:
        if fn == "per_token":
            out = masked_mean(reverse_kl_per_token(sh, sw, th, tw, chunk_size=chunk, mask=mask), mask)
        else:
            out = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=chunk, mask=mask)
        out.backward()
    assert sh.grad is not None and sw.grad is not None
    assert rec.largest <= chunk_bytes, (rec.largest, rec.largest_op)

    # the recorder does see [N, V] allocations of the naive path
    with _AllocationRecorder() as rec_naive:
        masked_mean(_naive(sh, sw, th, tw), mask).backward()
    assert rec_naive.largest >= n * v * 4
