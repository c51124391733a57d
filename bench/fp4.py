"""MXFP4 micro-benchmarks: quantize / dequantize throughput and QAT fake-quant overhead on a 512-hidden layer.

    .venv/bin/python bench/fp4.py [--threads N] [--rows 4096] [--cols 4096] [--tokens 2048]

Throughput is reported in GB/s of the *high-precision* side (bytes of the weight read by quantize, bytes written by
dequantize), so quantize and dequantize figures are comparable.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rollout.fp4 import dequantize_mxfp4, enable_qat, fake_quant_mxfp4, quantize_mxfp4  # noqa: E402


def timeit(fn, min_time=1.0, warmup=2):
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


class MLP(nn.Module):
    """Qwen/Llama-style SwiGLU MLP."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1536)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--min-time", type=float, default=1.0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device cpu")

    print(f"\n== quantize / dequantize, weight [{args.rows}, {args.cols}] ==")
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(args.rows, args.cols).to(dtype)
        nbytes = w.numel() * w.element_size()
        tq = timeit(lambda: quantize_mxfp4(w), args.min_time)
        packed, scales = quantize_mxfp4(w)
        td = timeit(lambda: dequantize_mxfp4(packed, scales, dtype), args.min_time)
        tf = timeit(lambda: fake_quant_mxfp4(w), args.min_time)
        comp = nbytes / (packed.numel() + scales.numel())
        print(f"{str(dtype):15s} quantize {nbytes / tq / 1e9:6.2f} GB/s ({tq * 1e3:7.1f} ms) | "
              f"dequantize {nbytes / td / 1e9:6.2f} GB/s ({td * 1e3:7.1f} ms) | "
              f"fake-quant {nbytes / tf / 1e9:6.2f} GB/s | packed {comp:.2f}x smaller "
              f"({(packed.numel() + scales.numel()) * 8 / w.numel():.2f} bits/weight)")

    print(f"\n== fake-quant overhead: SwiGLU MLP hidden {args.hidden}, intermediate {args.inter}, "
          f"{args.tokens} tokens, fp32, forward+backward ==")
    mlp = MLP(args.hidden, args.inter)
    x = torch.randn(args.tokens, args.hidden)

    def step(m):
        m.zero_grad(set_to_none=True)
        m(x).square().mean().backward()

    def fwd(m):
        with torch.no_grad():
            m(x)

    t_fb = timeit(lambda: step(mlp), args.min_time)
    t_f = timeit(lambda: fwd(mlp), args.min_time)
    enable_qat(mlp, [r"proj\.weight$"])
    t_fb_q = timeit(lambda: step(mlp), args.min_time)
    t_f_q = timeit(lambda: fwd(mlp), args.min_time)
    print(f"forward          {t_f * 1e3:7.2f} ms -> QAT {t_f_q * 1e3:7.2f} ms  (+{(t_f_q / t_f - 1) * 100:5.1f}%)")
    print(f"forward+backward {t_fb * 1e3:7.2f} ms -> QAT {t_fb_q * 1e3:7.2f} ms  (+{(t_fb_q / t_fb - 1) * 100:5.1f}%)")
    n_w = sum(p.numel() for p in mlp.parameters())
    print(f"({n_w / 1e6:.2f} M weights fake-quantized once per forward; the overhead does not grow with tokens)")


if __name__ == "__main__":
    main()
