"""A first check for a bare GPU machine: torch + transformers + accelerate only (no vLLM, Ray, DeepSpeed, pydantic).

    OUT=/some/dir python bench/gpu_first_check.py          # on the GPU machine, from the repository root (< 8 min)
    python bench/gpu_first_check.py --dry                  # every section on the CPU, small sizes (~30 s)

Sections, each printing one line ``VERDICT <section> <ok|FAIL|skip> <reason>`` (figures in ``$OUT/gpu_first_check.json``,
``$OUT`` defaulting to a fresh temporary folder):

  ipc      a tensor handed to a second process (torch.multiprocessing reductions: CUDA IPC handles on a GPU, shared
           memory on the CPU analogue of --dry), once through a queue and once as the explicit ``reduce_tensor``
           handle vLLM's ``ipc`` weight-transfer backend sends; the child's view equals the parent's bit for bit and
           an in-place write by the child is seen by the parent (a shared buffer, not a copy)
  fp4      rollout/fp4.py on the device equals the CPU bit for bit: MXFP4 packing and scales, dequantize, the QAT
           fake-quant forward and its straight-through gradient, a QAT module's forward and quantized_state_dict
  routing  Keep Routing (specialists/routing.py) on a tiny random Qwen3-MoE on the device: record, replay with the same
           weights reproduces the logits exactly, replay after the routers moved routes to the recorded experts and
           gradients reach the routers
  opd      distill/kl.py's chunked fused reverse-KL loss against the naive full-softmax one: value and gradients
           (fp32 and bf16), and on a GPU the peak memory of both at a realistic vocabulary

The exit code is 0 only if no section failed. Only project modules that need nothing beyond torch and numpy are
imported (rollout.fp4, rollout.routes, specialists.routing, specialists.router_families, distill.kl*); the run
records any of vllm/ray/deepspeed/pydantic that got imported anyway and fails on it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("vllm", "ray", "deepspeed", "pydantic")
SECTIONS = ("ipc", "fp4", "routing", "opd")


# ------------------------------------------------------------------------------------------------------------- ipc
def _ipc_child(inq, outq):
    """Second process: receive two tensors (one through the queue, one as an explicit reduce_tensor handle), send
    back CPU copies, then write into both in place."""
    import torch
    try:
        a = inq.get(timeout=120)
        func, args = inq.get(timeout=120)
        b = func(*args)
        outq.put(("copies", a.cpu().clone(), b.cpu().clone(), str(a.device), str(b.device)))
        with torch.no_grad():
            a.add_(1)
            b.mul_(2)
        if a.is_cuda:
            torch.cuda.synchronize(a.device)
        outq.put(("written",))
        inq.get(timeout=120)          # the parent's "done": keep the child (and its mappings) until it has looked
    except Exception as e:            # pragma: no cover - reported by the parent
        outq.put(("error", f"{type(e).__name__}: {e}"))


def check_ipc(dev, dry):
    import torch
    import torch.multiprocessing as mp
    from torch.multiprocessing.reductions import reduce_tensor

    ctx = mp.get_context("spawn")
    inq, outq = ctx.Queue(), ctx.Queue()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 257, generator=g).to(dev)
    b = torch.randn(4096, generator=g).to(torch.bfloat16).to(dev)
    if dev.type == "cpu":
        a.share_memory_()
        b.share_memory_()
    a0, b0 = a.cpu().clone(), b.cpu().clone()
    t0 = time.time()
    p = ctx.Process(target=_ipc_child, args=(inq, outq), daemon=True)
    p.start()
    try:
        inq.put(a)
        inq.put(reduce_tensor(b))
        msg = outq.get(timeout=180)
        if msg[0] == "error":
            return "FAIL", f"child: {msg[1]}", {}
        _, ca, cb, dev_a, dev_b = msg
        msg = outq.get(timeout=60)
        if msg[0] == "error":
            return "FAIL", f"child: {msg[1]}", {}
        if dev.type == "cuda":
            torch.cuda.synchronize()
        figs = {"mode": "cuda_ipc" if dev.type == "cuda" else "cpu_shared_memory", "child_devices": [dev_a, dev_b],
                "received_equal": [_bits_equal(ca, a0), _bits_equal(cb, b0)],
                "child_write_seen": [_bits_equal(a.cpu(), a0 + 1), _bits_equal(b.cpu(), b0 * 2)],
                "seconds": round(time.time() - t0, 2)}
        inq.put("done")
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    ok = all(figs["received_equal"]) and all(figs["child_write_seen"])
    what = "CUDA IPC" if dev.type == "cuda" else "CPU shared-memory analogue (no CUDA IPC here)"
    return ("ok" if ok else "FAIL"), f"{what}: received equal {figs['received_equal']}, " \
                                     f"child writes seen {figs['child_write_seen']}", figs


# ------------------------------------------------------------------------------------------------------------- fp4
def _bits_equal(x, y) -> bool:
    """Bit-for-bit equality (so -0.0 != 0.0 and NaN payloads count), on the CPU."""
    import torch
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if x.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
        x, y = x.contiguous().view(view), y.contiguous().view(view)
    return bool(torch.equal(x, y))


def _fp4_cases(big):
    import torch
    g = torch.Generator().manual_seed(1)
    grid = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0])
    mid = torch.cat([grid, -grid]).repeat(16).reshape(16, 32) * (2.0 ** torch.arange(-8, 8)).reshape(16, 1)
    special = torch.zeros(8, 64)
    special[1] = 1e-40                                   # subnormals
    special[2, :32] = 3e38                               # near fp32 max
    special[3] = -0.0
    special[4, ::2] = torch.randn(32, generator=g) * 1e-30
    special[5] = torch.randn(64, generator=g) * 1e6
    rows, cols = (2048, 4096) if big else (128, 256)
    cases = {"midpoints_fp32": mid, "special_fp32": special,
             "linear_fp32": torch.randn(rows, cols, generator=g) * 0.02,
             "linear_bf16": (torch.randn(rows, cols, generator=g) * 0.02).bfloat16(),
             "experts_bf16": torch.randn(8, rows // 8, cols // 2, generator=g).bfloat16(),
             "mixed_scale_fp32": torch.randn(64, 256, generator=g) * torch.logspace(-20, 20, 256).reshape(1, 256)}
    return cases


def check_fp4(dev, dry):
    import torch
    from rollout import fp4

    results, figs = {}, {}
    for name, w in _fp4_cases(big=not dry).items():
        packed_c, scales_c = fp4.quantize_mxfp4(w)
        packed_d, scales_d = fp4.quantize_mxfp4(w.to(dev))
        deq_c = fp4.dequantize_mxfp4(packed_c, scales_c, w.dtype)
        deq_d = fp4.dequantize_mxfp4(packed_d, scales_d, w.dtype)
        wd = w.to(dev).clone().requires_grad_(True)
        fq_d = fp4.fake_quant_mxfp4(wd)
        grad_out = torch.randn(w.shape, generator=torch.Generator().manual_seed(2)).to(w.dtype)
        fq_d.backward(grad_out.to(dev))
        results[name] = {"packed": _bits_equal(packed_c, packed_d), "scales": _bits_equal(scales_c, scales_d),
                         "dequant": _bits_equal(deq_c, deq_d),
                         "fake_quant": _bits_equal(fp4.fake_quant_mxfp4(w), fq_d),
                         "fake_quant_is_dequant": _bits_equal(deq_c, fq_d),
                         "ste_grad": _bits_equal(wd.grad, grad_out)}
    # a QAT module (dense MLP target names) on the device vs the CPU: forward and the quantized state dict
    torch.manual_seed(3)
    cpu_model = _tiny_mlp(torch)
    dev_model = _tiny_mlp(torch)
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(dev)
    t_c, t_d = fp4.enable_qat(cpu_model), fp4.enable_qat(dev_model)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        yc, yd = cpu_model(x), dev_model(x.to(dev))
    qc, qd = fp4.quantized_state_dict(cpu_model), fp4.quantized_state_dict(dev_model)
    results["qat_module"] = {"targets": t_c == t_d and len(t_c) == 3,
                             "state_dict": sorted(qc) == sorted(qd) and all(_bits_equal(qc[k], qd[k]) for k in qc),
                             "forward_close": bool(torch.allclose(yc, yd.cpu(), rtol=1e-4, atol=1e-5))}
    if dev.type == "cuda":
        w = torch.randn(14336, 4096, device=dev, dtype=torch.bfloat16)
        fp4.quantize_mxfp4(w)
        torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(5):
            fp4.quantize_mxfp4(w)
        torch.cuda.synchronize()
        figs["quantize_14336x4096_bf16_ms"] = round((time.time() - t0) / 5 * 1000, 2)
    figs["checks"] = results
    bad = [f"{c}.{k}" for c, r in results.items() for k, v in r.items() if not v]
    n = sum(len(r) for r in results.values())
    return ("FAIL", f"{len(bad)}/{n} differ: {', '.join(bad[:6])}", figs) if bad else \
        ("ok", f"{n} checks bit for bit equal to the CPU on {dev.type} ({len(results)} cases)", figs)


def _tiny_mlp(torch):
    nn = torch.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj = nn.Linear(64, 128, bias=False), nn.Linear(64, 128, bias=False)
            self.down_proj = nn.Linear(128, 64, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    m = nn.Module()
    m.mlp = MLP()
    m.forward = lambda x: m.mlp(x)
    return m


# --------------------------------------------------------------------------------------------------------- routing
def check_routing(dev, dry):
    import torch
    import transformers as T
    from specialists.routing import RouteReplay, route_agreement

    cfg = T.Qwen3MoeConfig(vocab_size=64, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                           max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           intermediate_size=32, moe_intermediate_size=16, num_hidden_layers=2, num_experts=8,
                           num_experts_per_tok=2, head_dim=16, norm_topk_prob=True)
    torch.manual_seed(5)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(dev).eval()
    rr = RouteReplay(model)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for m in rr.routers:
            m.weight.copy_((torch.randn(m.weight.shape, generator=g) * 0.5).to(dev))
    ids = torch.randint(3, 64, (4, 24), generator=g).to(dev)
    with torch.no_grad(), rr.record() as rec:
        ref = model(input_ids=ids).logits
    with torch.no_grad(), rr.replay(rec):
        same = model(input_ids=ids).logits
    with torch.no_grad():
        for m in rr.routers:
            m.weight.add_((torch.randn(m.weight.shape, generator=g) * 2.0).to(dev))
        with rr.record() as moved:
            plain = model(input_ids=ids).logits
    with rr.replay(rec), rr.record() as replayed:
        out = model(input_ids=ids).logits
    out.float().pow(2).mean().backward()
    router_grads = [float(m.weight.grad.abs().sum()) if m.weight.grad is not None else 0.0 for m in rr.routers]
    figs = {"routers": len(rr), "replay_exact": _bits_equal(ref, same),
            "replay_max_abs_diff": float((ref - same).abs().max()),
            "moved_agreement_without_replay": round(route_agreement(moved, rec), 4),
            "replayed_agreement": route_agreement(replayed, rec),
            "replay_changes_output": not bool(torch.equal(out.detach(), plain)),
            "router_grad_abs_sum": router_grads}
    ok = (len(rr) == 2 and figs["replay_max_abs_diff"] <= 1e-5 and figs["replayed_agreement"] == 1.0
          and figs["moved_agreement_without_replay"] < 1.0 and all(x > 0 for x in router_grads))
    return ("ok" if ok else "FAIL"), (f"{len(rr)} routers on {dev.type}: replay exact {figs['replay_exact']}, "
                                      f"recorded experts used {figs['replayed_agreement']:.3f} (moved routers alone "
                                      f"{figs['moved_agreement_without_replay']:.3f}), router grads > 0 "
                                      f"{all(x > 0 for x in router_grads)}"), figs


# ------------------------------------------------------------------------------------------------------------- opd
def _opd_case(torch, dev, dtype, n, h, ht, v, chunk, seed):
    from distill.kl import fused_reverse_kl_loss, masked_mean, reverse_kl_from_logits
    g = torch.Generator().manual_seed(seed)
    hs = (torch.randn(n, h, generator=g)).to(dev, dtype)
    ws = (torch.randn(v, h, generator=g) * h ** -0.5).to(dev, dtype)
    ht_ = (torch.randn(n, ht, generator=g)).to(dev, dtype)
    wt = (torch.randn(v, ht, generator=g) * ht ** -0.5).to(dev, dtype)
    mask = (torch.rand(n, generator=g) > 0.25).to(dev)
    out = {}
    for how in ("naive", "fused"):
        a, b = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.time()
        if how == "naive":
            loss = masked_mean(reverse_kl_from_logits(a @ b.T, ht_ @ wt.T, temperature=1.0), mask)
        else:
            loss = fused_reverse_kl_loss(a, b, ht_, wt, chunk_size=chunk, mask=mask)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()
            out[f"{how}_peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
        out[f"{how}_seconds"] = round(time.time() - t0, 4)
        out[how] = (loss.detach().float().cpu(), a.grad.float().cpu(), b.grad.float().cpu())
    (ln, gh_n, gw_n), (lf, gh_f, gw_f) = out.pop("naive"), out.pop("fused")

    def rel(x, y):
        return float((x - y).norm() / y.norm().clamp_min(1e-30))
    out.update(loss_naive=float(ln), loss_fused=float(lf), loss_rel=abs(float(lf - ln)) / max(abs(float(ln)), 1e-30),
               grad_hidden_rel=rel(gh_f, gh_n), grad_head_rel=rel(gw_f, gw_n),
               masked_rows_zero_grad=bool((gh_f[~mask.cpu()] == 0).all()))
    return out


def check_opd(dev, dry):
    import torch
    small = dict(n=96, h=64, ht=48, v=1000, chunk=40)
    cases = {"fp32": _opd_case(torch, dev, torch.float32, seed=7, **small),
             "bf16": _opd_case(torch, dev, torch.bfloat16, seed=8, **small)}
    if dev.type == "cuda" and not dry:
        cases["bf16_4k_x_151936"] = _opd_case(torch, dev, torch.bfloat16, n=4096, h=2048, ht=2048, v=151936,
                                              chunk=1024, seed=9)
    tol = {"fp32": 1e-4}
    bad = []
    for name, c in cases.items():
        t = tol.get(name, 3e-2)
        for k in ("loss_rel", "grad_hidden_rel", "grad_head_rel"):
            if not c[k] <= t:           # NaN fails too
                bad.append(f"{name}.{k}={c[k]:.2e}>{t:g}")
        if not c["masked_rows_zero_grad"]:
            bad.append(f"{name}.masked_rows_zero_grad")
    worst = max(c["grad_hidden_rel"] for c in cases.values())
    return ("FAIL", "; ".join(bad), cases) if bad else \
        ("ok", f"fused == naive on {dev.type} ({', '.join(cases)}; worst grad rel err {worst:.1e})", cases)


# ------------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="every section on the CPU with small sizes (auto without CUDA)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    args = ap.parse_args(argv)
    t_start = time.time()
    before = set(sys.modules)
    sys.path.insert(0, str(ROOT))
    import torch

    dry = args.dry or not torch.cuda.is_available()
    dev = torch.device("cpu" if dry else "cuda")
    out_dir = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu_first_check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"dry": dry, "device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
              "gpu": torch.cuda.get_device_name(0) if not dry else None, "sections": {}}
    try:
        import transformers
        report["transformers"] = transformers.__version__
    except ImportError as e:
        report["transformers"] = f"missing: {e}"
    print(f"gpu_first_check: device={dev} dry={dry} torch={torch.__version__} out={out_dir}", flush=True)
    checks = {"ipc": check_ipc, "fp4": check_fp4, "routing": check_routing, "opd": check_opd}
    for name in SECTIONS:
        if name not in args.only.split(","):
            verdict, reason, figs = "skip", "not selected (--only)", {}
        else:
            t0 = time.time()
            try:
                verdict, reason, figs = checks[name](dev, dry)
            except Exception as e:
                verdict, reason, figs = "FAIL", f"{type(e).__name__}: {e}".splitlines()[0][:300], \
                    {"traceback": traceback.format_exc()}
            figs = {**figs, "section_seconds": round(time.time() - t0, 2)}
        report["sections"][name] = {"verdict": verdict, "reason": reason, "figures": figs}
        print(f"VERDICT {name} {verdict} {reason}", flush=True)
        (out_dir / "gpu_first_check.json").write_text(json.dumps(report, indent=1, default=str))
    leaked = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in BLOCKED and sys.modules[m] is not None)
    report.update(blocked_modules_imported=leaked, seconds=round(time.time() - t_start, 1))
    verdict = "FAIL" if leaked else "ok"
    print(f"VERDICT imports {verdict} {'imported ' + ', '.join(leaked[:5]) if leaked else 'none of ' + ', '.join(BLOCKED)}")
    report["sections"]["imports"] = {"verdict": verdict, "reason": ", ".join(leaked), "figures": {}}
    (out_dir / "gpu_first_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu_first_check: {report['seconds']} s, figures in {out_dir / 'gpu_first_check.json'}")
    return 1 if any(s["verdict"] == "FAIL" for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
