"""Benchmark: chunked fused reverse-KL loss (distill/kl.py) against the naive full-logits loss.

For each T (tokens) it runs forward+backward of

* ``fused``     -- ``fused_reverse_kl_loss`` (hidden-state payload, gradients computed chunk by chunk in forward),
* ``per_token`` -- ``masked_mean(reverse_kl_per_token(...))`` (backward recomputes the chunks; optional),
* ``naive``     -- ``masked_mean(reverse_kl_from_logits(h_s @ W_s^T, h_t @ W_t^T))`` (materialises [T, V]),

each in a fresh subprocess, and prints the peak memory above the inputs (CPU: ``ru_maxrss`` minus the resident set
before the loss; CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before the loss), the wall time of
forward+backward, and the largest absolute difference of the loss and of both gradients against the fused result.
Naive cases whose estimated footprint exceeds ``--mem-limit-gb`` (or the memory available) are skipped.

Inputs are random, fp32 by default (``--dtype bf16`` for bf16 hidden states and heads), student and teacher of the
same hidden size unless ``--teacher-hidden`` is given; all tokens are unmasked except every 16th.

    python bench/opd_loss.py                      # T = 1k, 4k, 16k; V = 151,936; H = 1,024; CPU, fp32
    python bench/opd_loss.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

GB = 1024**3
# naive: ~6-7 live [T, V] fp32 tensors at the peak (log q, q, log q - log p saved for backward, plus the backward's
# gradients and temporaries).  Measured on CPU, V = 151,936: 6.1 at T = 1k, 6.8 at T = 4k; 7 errs on the safe side.
NAIVE_TV_TENSORS = 7.0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _make_inputs(torch, t, v, hs, ht, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float32)
        if scale != 1.0:
            x.mul_(scale)
        return x.to(device=device, dtype=dtype)

    sh = rnd(t, hs).requires_grad_(True)
    sw = rnd(v, hs, scale=2.0 / hs**0.5).requires_grad_(True)
    th = rnd(t, ht)
    tw = rnd(v, ht, scale=2.0 / ht**0.5)
    mask = (torch.arange(t, device=device) % 16) != 15
    return sh, sw, th, tw, mask


def child(args) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch

    from distill.kl import fused_reverse_kl_loss, masked_mean, reverse_kl_from_logits, reverse_kl_per_token

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = torch.device(args.device)
    t, v, hs = args.case_tokens, args.vocab, args.hidden
    ht = args.teacher_hidden or hs
    sh, sw, th, tw, mask = _make_inputs(torch, t, v, hs, ht, dtype, device)

    def run():
        if args.case_variant == "fused":
            loss = fused_reverse_kl_loss(sh, sw, th, tw, chunk_size=args.chunk_size, mask=mask)
        elif args.case_variant == "per_token":
            loss = masked_mean(reverse_kl_per_token(sh, sw, th, tw, chunk_size=args.chunk_size, mask=mask), mask)
        else:
            loss = masked_mean(reverse_kl_from_logits(sh @ sw.t(), th @ tw.t()), mask)
        loss.backward()
        return loss.detach()

    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        run()
        sh.grad = sw.grad = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
        base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    loss = run()
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, base_max) - base

    out = {"tokens": t, "variant": args.case_variant, "peak_bytes": int(peak), "seconds": elapsed, "loss": float(loss)}
    ref_path = os.path.join(args.workdir, f"fused_{t}.pt")
    if args.case_variant == "fused":
        torch.save({"loss": loss.cpu(), "gh": sh.grad.cpu(), "gw": sw.grad.cpu()}, ref_path)
    elif os.path.exists(ref_path):
        ref = torch.load(ref_path)
        out["diff_loss"] = float((loss.cpu().float() - ref["loss"].float()).abs())
        out["diff_grad_hidden"] = float((sh.grad.cpu().float() - ref["gh"].float()).abs().max())
        out["diff_grad_head"] = float((sw.grad.cpu().float() - ref["gw"].float()).abs().max())
        out["max_abs_grad_hidden"] = float(ref["gh"].float().abs().max())
        out["max_abs_grad_head"] = float(ref["gw"].float().abs().max())
    print("RESULT " + json.dumps(out), flush=True)


def naive_estimate_bytes(t: int, v: int, hs: int) -> int:
    return int(NAIVE_TV_TENSORS * t * v * 4 + v * hs * 4)


def _fmt_gb(b: float) -> str:
    return f"{b / GB:.2f} GiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--teacher-hidden", type=int, default=0, help="teacher hidden size (default: --hidden)")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default="fused,naive", help="comma list of fused, per_token, naive")
    p.add_argument("--mem-limit-gb", type=float, default=20.0,
                   help="skip naive cases estimated above this many GiB (or above 85%% of available memory)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each case (default: torch's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs before measuring (default 0 CPU, 1 CUDA)")
    p.add_argument("--json", default="", help="also write the results to this file")
    # internal: one case in a subprocess
    p.add_argument("--case-tokens", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--case-variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 1 if args.device.startswith("cuda") else 0
    if args.case_variant:
        child(args)
        return 0

    from distill.kl import teacher_payload_bytes

    variants = [x.strip() for x in args.variants.split(",") if x.strip()]
    order = [x for x in ("fused", "per_token", "naive") if x in variants]
    v, hs = args.vocab, args.hidden
    print(
        f"# reverse-KL loss, forward+backward: V={v:,} H_student={hs} H_teacher={args.teacher_hidden or hs} "
        f"dtype={args.dtype} device={args.device} chunk={args.chunk_size} (peak = memory above the inputs)",
        flush=True,
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    with tempfile.TemporaryDirectory(prefix="opd_bench_") as work:
        for t in args.tokens:
            for variant in order:
                row = {"tokens": t, "variant": variant}
                if variant == "naive":
                    need = naive_estimate_bytes(t, v, hs)
                    avail = _available_bytes() if args.device == "cpu" else 1 << 62
                    if need > args.mem_limit_gb * GB or need > 0.85 * avail:
                        why = (f"--mem-limit-gb {args.mem_limit_gb:g}" if need > args.mem_limit_gb * GB
                               else f"{avail / GB:.1f} GiB available")
                        row["skipped"] = f"skipped (would need {need / GB:.1f} GiB; {why})"
                        results.append(row)
                        print(f"T={t:>6} {variant:>9}: {row['skipped']}", flush=True)
                        continue
                cmd = [sys.executable, os.path.abspath(__file__), "--case-tokens", str(t), "--case-variant", variant,
                       "--workdir", work, "--vocab", str(v), "--hidden", str(hs), "--teacher-hidden",
                       str(args.teacher_hidden), "--chunk-size", str(args.chunk_size), "--dtype", args.dtype,
                       "--device", args.device, "--threads", str(args.threads), "--warmup", str(args.warmup)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    row["skipped"] = f"failed (rc={proc.returncode}): {proc.stderr.strip()[-300:]}"
                else:
                    row.update(json.loads(line[len("RESULT "):]))
                results.append(row)
                if "skipped" in row:
                    print(f"T={t:>6} {variant:>9}: {row['skipped']}", flush=True)
                else:
                    extra = ""
                    if "diff_loss" in row:
                        extra = (f"  |dloss|={row['diff_loss']:.2e} max|dgrad_h|={row['diff_grad_hidden']:.2e} "
                                 f"max|dgrad_W|={row['diff_grad_head']:.2e}")
                    print(f"T={t:>6} {variant:>9}: peak {_fmt_gb(row['peak_bytes'])}, {row['seconds']:.2f} s, "
                          f"loss {row['loss']:.6f}{extra}", flush=True)

    # summary table (markdown)
    by = {(r["tokens"], r["variant"]): r for r in results}
    print()
    print("| T (tokens) | fused peak | naive peak | fused/naive peak | fused time | naive time |"
          + (" per-token peak | per-token time |" if "per_token" in order else "")
          + " max abs diff loss / grad_h / grad_W (naive − fused) |")
    print("|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if "per_token" in order else "") + "---|")
    for t in args.tokens:
        f, n, pt = by.get((t, "fused"), {}), by.get((t, "naive"), {}), by.get((t, "per_token"), {})

        def peak(r):
            return _fmt_gb(r["peak_bytes"]) if "peak_bytes" in r else r.get("skipped", "—")

        def secs(r):
            return f"{r['seconds']:.2f} s" if "seconds" in r else "—"

        ratio = (f"1/{n['peak_bytes'] / f['peak_bytes']:.1f}"
                 if "peak_bytes" in f and "peak_bytes" in n and f["peak_bytes"] > 0 else "—")
        diff = (f"{n['diff_loss']:.1e} / {n['diff_grad_hidden']:.1e} / {n['diff_grad_head']:.1e}"
                if "diff_loss" in n else "—")
        cols = [f"{t:,}", peak(f), peak(n), ratio, secs(f), secs(n)]
        if "per_token" in order:
            cols += [peak(pt), secs(pt)]
        cols.append(diff)
        print("| " + " | ".join(cols) + " |")

    print()
    print("Teacher payload per token (hidden: bf16; logits: fp32):")
    for h in sorted({args.teacher_hidden or hs, 4096}):
        hb = teacher_payload_bytes(1, h, v, "hidden")
        lb = teacher_payload_bytes(1, h, v, "logits")
        print(f"  H={h:>5}: hidden {hb:,} B/token, logits {lb:,} B/token, ratio {lb / hb:.1f}x (2V/H = {2 * v / h:.1f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
