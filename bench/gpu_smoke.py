"""GPU smoke checks, one section per call; needs only torch, transformers and accelerate (plus numpy).

    python bench/gpu_smoke.py learner|fp4|grpo [--device cuda|cpu] [--small]

* ``learner``: the shared learner (train/learner.py) takes bf16 steps on a ~0.5B-parameter Qwen3 built from a
  config (random weights, nothing downloaded); prints step time, tokens/s and peak memory.
* ``fp4``: MXFP4 quantize / dequantize / fake-quant throughput (rollout/fp4.py) on a bf16 matrix, and the QAT
  overhead on a SwiGLU MLP forward+backward.
* ``grpo``: one tiny GRPO step end to end without the stage (no Ray, no pydantic): a small Qwen3 samples a group per
  prompt, rewards are a rule on the sampled tokens, then ``grpo_advantages`` + ``policy_loss``
  (specialists/algos.py) + backward + optimizer step; prints the phases' times and the loss metrics.

The distillation loss benchmark is bench/opd_loss.py (run by bench/gpu_smoke.sh). ``--device cpu --small`` runs the
same code paths on a CPU with small sizes (how it was checked without a GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gb(device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device.startswith("cuda") else None


def _timeit(fn, device, reps: int) -> float:
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / reps


def _qwen3(folder: Path, small: bool, vocab: int = 151_936):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=vocab if not small else 2048, hidden_size=1024 if not small else 128,
                      intermediate_size=3072 if not small else 256, num_hidden_layers=16 if not small else 2,
                      num_attention_heads=16 if not small else 2, num_key_value_heads=8 if not small else 1,
                      head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(str(folder))
    return cfg, sum(p.numel() for p in model.parameters())


def learner(args) -> dict:
    from train.learner import Learner

    dev = args.device
    with tempfile.TemporaryDirectory() as d:
        cfg, n = _qwen3(Path(d), args.small)
        lcfg = SimpleNamespace(optimizer="adamw", lr=1e-4, muon_lr=0.02, weight_decay=0.0, betas=(0.9, 0.95),
                               warmup_steps=0, schedule="constant", min_lr_ratio=0.1, grad_clip=1.0,
                               precision="bf16", zero_stage=0, qat="none")
        out = {"params_m": round(n / 1e6, 1)}
        for opt in ("adamw", "muon"):
            lcfg.optimizer = opt
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            lr = Learner(d, lcfg, total_steps=10, seed=0)
            b, t = (8, 1024) if not args.small else (2, 64)
            ids = torch.randint(0, cfg.vocab_size, (b, t), device=lr.accelerator.device)
            mb = {"input_ids": ids, "weight": b * (t - 1)}

            def loss_fn(model, mb):
                logits = model(input_ids=mb["input_ids"]).logits[:, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                         mb["input_ids"][:, 1:].reshape(-1), reduction="sum")
                return loss, {}

            losses = [lr.step(loss_fn, [mb]).loss for _ in range(2)]   # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            steps = 5 if not args.small else 2
            losses += [lr.step(loss_fn, [mb]).loss for _ in range(steps)]
            _sync(dev)
            dt = (time.perf_counter() - t0) / steps
            out[opt] = {"step_s": round(dt, 4), "tokens_per_s": round(b * t / dt), "peak_gb": _peak_gb(dev),
                        "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
                        "device": str(lr.accelerator.device)}
            del lr
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


def fp4(args) -> dict:
    from rollout.fp4 import dequantize_mxfp4, enable_qat, fake_quant_mxfp4, quantize_mxfp4

    dev = args.device
    rows = cols = 8192 if not args.small else 512
    w = torch.randn(rows, cols, device=dev, dtype=torch.bfloat16)
    nbytes = w.numel() * w.element_size()
    reps = 20 if not args.small else 2
    tq = _timeit(lambda: quantize_mxfp4(w), dev, reps)
    packed, scales = quantize_mxfp4(w)
    td = _timeit(lambda: dequantize_mxfp4(packed, scales, torch.bfloat16), dev, reps)
    tf = _timeit(lambda: fake_quant_mxfp4(w), dev, reps)
    err = (dequantize_mxfp4(packed, scales, torch.float32) - w.float()).abs().mean() / w.float().abs().mean()
    out = {"matrix": [rows, cols], "quantize_gb_s": round(nbytes / tq / 1e9, 2),
           "dequantize_gb_s": round(nbytes / td / 1e9, 2), "fake_quant_gb_s": round(nbytes / tf / 1e9, 2),
           "fake_quant_ms": round(tf * 1e3, 3), "rel_mean_abs_err": round(float(err), 4)}

    h, inter, tokens = (4096, 12288, 8192) if not args.small else (128, 384, 256)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = torch.nn.Linear(h, inter, bias=False)
            self.up_proj = torch.nn.Linear(h, inter, bias=False)
            self.down_proj = torch.nn.Linear(inter, h, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    mlp = MLP().to(dev, torch.bfloat16)
    x = torch.randn(tokens, h, device=dev, dtype=torch.bfloat16)

    def step():
        mlp.zero_grad(set_to_none=True)
        mlp(x).float().square().mean().backward()

    t0 = _timeit(step, dev, reps)
    enable_qat(mlp, [r"proj\.weight$"])
    t1 = _timeit(step, dev, reps)
    out["qat_mlp"] = {"hidden": h, "inter": inter, "tokens": tokens, "fwd_bwd_ms": round(t0 * 1e3, 3),
                      "fwd_bwd_qat_ms": round(t1 * 1e3, 3), "overhead_pct": round((t1 / t0 - 1) * 100, 1)}
    return out


def grpo(args) -> dict:
    from transformers import Qwen3ForCausalLM

    from specialists.algos import grpo_advantages, masked_logprobs, policy_loss

    dev = args.device
    with tempfile.TemporaryDirectory() as d:
        cfg, n = _qwen3(Path(d), True if args.small else False, vocab=32_000)
        model = Qwen3ForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to(dev)
    model.generation_config.pad_token_id = 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    P, G, prompt_len, new = (8, 8, 64, 128) if not args.small else (2, 4, 8, 8)
    torch.manual_seed(0)
    prompts = torch.randint(1, cfg.vocab_size, (P, prompt_len), device=dev)
    t = {}
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        seqs = model.generate(prompts.repeat_interleave(G, 0), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=new, min_new_tokens=new)
    _sync(dev)
    t["generate_s"] = time.perf_counter() - t0
    comp = seqs[:, prompt_len:]
    rewards = (comp % 2 == 0).float().mean(-1).view(P, G)          # a rule-based reward on the sampled tokens
    adv = grpo_advantages(rewards).view(-1)
    mask = torch.ones_like(comp, dtype=torch.bool)
    t0 = time.perf_counter()
    with torch.no_grad():
        old = masked_logprobs(model(seqs).logits[:, prompt_len - 1:-1], comp)
    _sync(dev)
    t["old_logprobs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16):
        logits = model(seqs).logits[:, prompt_len - 1:-1]
    logp = masked_logprobs(logits, comp)
    out = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, offpolicy_delta=0.5,
                      aggregation="token_mean")
    (out.loss_sum / out.denom.clamp(min=1)).backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync(dev)
    t["train_step_s"] = time.perf_counter() - t0
    return {"params_m": round(n / 1e6, 1), "prompts": P, "group": G, "new_tokens": new,
            "gen_tokens_per_s": round(P * G * new / t["generate_s"]), **{k: round(v, 3) for k, v in t.items()},
            "loss": round(float(out.loss_sum.detach() / out.denom.clamp(min=1)), 5), "grad_norm": round(float(gn), 4),
            "reward_mean": round(float(rewards.mean()), 4), **{k: round(v, 4) for k, v in out.metrics.items()},
            "peak_gb": _peak_gb(dev)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("section", choices=["learner", "fp4", "grpo"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny sizes (CPU check of the code paths)")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_smoke: --device cuda but torch sees no CUDA device")
    t0 = time.time()
    res = {"learner": learner, "fp4": fp4, "grpo": grpo}[args.section](args)
    res["wall_s"] = round(time.time() - t0, 1)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"{args.section} [{name}]: " + json.dumps(res), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
