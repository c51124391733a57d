"""Rollout throughput of the ``hf`` and ``vllm`` engines, full-precision vs FP4 weights, and weight-sync time.

Models (both Qwen3-MoE, random init, the embedded tokenizer trained like ``pipeline/bootstrap.py``):
  tiny  the embedded default (``pipeline.recipe.TinyModel()``: 2 layers, hidden 128, 4 experts top-2)
  512   4 layers, hidden 512, 8 heads x 64, 4 KV heads, 8 experts top-2, moe_intermediate 512

Weights: ``full`` = the dtype's own weights (fp32 or bf16); ``fp4`` = MXFP4-dequantized expert weights, pushed
through the engine's weight sync (``load_weights(quantized_state_dict(model))``). On CPU both engines compute FP4
as dequantized weights in the model dtype, so FP4 and full run the same kernels here; vLLM's real W4A16 MXFP4
kernels (packed weights, ``compressed-tensors`` MXFP4A16) are GPU-only. bf16 on CPU is usually slower than fp32
(no fast bf16 GEMM on most CPUs); fp32 rows are the CPU reference, bf16 rows what a GPU would run.

Sync = seconds for one ``load_weights`` of the whole state dict: ``hf`` in-process ``load_state_dict``; ``vllm``
Ray object-store transfer to the actor + vLLM's in-place ``reload_weights`` + prefix-cache reset.

    python bench/rollout.py                                   # everything (~6-8 min on 2 cores)
    python bench/rollout.py --engines hf --models tiny --dtypes float32
    python bench/rollout.py --prompts 16 --n 8 --max-tokens 64 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

MODELS = {
    "tiny": {},
    "512": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                num_experts=8, num_experts_per_tok=2, moe_intermediate_size=512, intermediate_size=1024),
}


def build(name: str, folder: Path, seed: int = 0):
    from train.bootstrap import tiny_model, train_tokenizer
    from train.config import TinyModel
    from rewards.tasks import corpus

    cfg = TinyModel(**MODELS[name])
    tok = train_tokenizer(corpus(seed, cfg.tokenizer_corpus_per_domain), cfg.vocab_size)
    model = tiny_model(cfg, tok, seed).eval()
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model, tok


def prompts_for(tok, n: int) -> list[list[int]]:
    from rewards.tasks import generate as gen_tasks
    from rollout.encoding import encode_prompt

    per = -(-n // 2)
    samples = gen_tasks("math", "test", per, 0) + gen_tasks("code", "test", per, 0)
    return [encode_prompt(tok, [{"role": "user", "content": s["prompt"][:300]}], "non_think")
            for s in samples[:n]]


def timed_generate(engine, prompts, params) -> tuple[float, int]:
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    dt = time.perf_counter() - t
    return dt, sum(len(c.token_ids) for g in outs for c in g)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--models", default="tiny,512")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--big", default="4,4,32",
                    help="prompts,n,max-tokens for the 512 model (slow on CPU); 'same' = the main workload")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    from rollout.engine import SamplingParams
    from rollout.engines import make_engine
    from rollout.fp4 import master_state_dict, quantized_state_dict

    engines, models, dtypes = (args.engines.split(","), args.models.split(","), args.dtypes.split(","))
    params = SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at start; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"# workload: {args.prompts} prompts x n={args.n} x {args.max_tokens} new tokens, temperature 1")
    print("# FP4 = MXFP4-dequantized expert weights; on CPU both engines run them as dequantized weights in the "
          "model dtype (vLLM's W4A16 MXFP4 kernels are GPU-only)")
    rows = []
    bench_t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    if "vllm" in engines:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    header = f"{'engine':6} {'model':5} {'dtype':9} {'weights':7} {'tokens':>7} {'s':>7} {'tok/s':>8} {'sync s':>8}"
    print(header)

    def emit(**r):
        rows.append(r)
        print(f"{r['engine']:6} {r['model']:5} {r['dtype']:9} {r['weights']:7} {r['tokens']:7d} {r['seconds']:7.2f} "
              f"{r['tokens_per_s']:8.0f} {r['sync_s'] if r['sync_s'] is None else format(r['sync_s'], '8.3f'):>8}",
              flush=True)

    built = {}
    for mname in models:
        base, tok = build(mname, root / mname)
        nparams = sum(p.numel() for p in base.parameters()) / 1e6
        if mname == "512" and args.big != "same":
            bp, bn, bt = map(int, args.big.split(","))
            mparams = SamplingParams(n=bn, temperature=1.0, max_tokens=bt, seed=0)
        else:
            bp, mparams = args.prompts, params
        print(f"# model {mname}: {nparams:.2f} M parameters, vocab {len(tok)}; workload {bp} prompts x "
              f"n={mparams.n} x {mparams.max_tokens} tokens", flush=True)
        built[mname] = (base, tok, prompts_for(tok, bp), mparams)
    for dtype in dtypes:                                   # fp32 first: the CPU reference
        for mname in models:
            base, tok, prompts, mparams = built[mname]
            tdt = getattr(torch, dtype)
            model = copy.deepcopy(base).to(tdt)
            full_sd = master_state_dict(model)
            fp4_sd = quantized_state_dict(model)
            for ename in engines:
                if ename == "hf":
                    eng = make_engine("hf", model=copy.deepcopy(model), tokenizer=tok)
                    eng.generate(prompts[:1], SamplingParams(n=1, max_tokens=4, seed=0))     # warm-up
                    startup = None
                else:
                    try:
                        eng = make_engine("vllm", model_path=str(root / mname), dtype=dtype, max_model_len=512,
                                          seed=0)
                    except Exception as e:        # e.g. the actor dies at start-up (bf16 on this CPU)
                        print(f"# vllm {mname} {dtype}: engine failed to start: {type(e).__name__}", flush=True)
                        continue
                    startup = eng.startup_s
                    print(f"# vllm {mname} {dtype}: start-up {startup:.1f} s", flush=True)
                try:
                    sync_full = eng.load_weights(full_sd)                     # sync of the full-precision weights
                    dt, n = timed_generate(eng, prompts, mparams)
                    emit(engine=ename, model=mname, dtype=dtype, weights="full", tokens=n, seconds=dt,
                         tokens_per_s=n / dt, sync_s=sync_full, startup_s=startup)
                    if ename == "vllm":
                        eng.quantized = True          # CPU: dequantized FP4 tensors are loaded as they are
                    sync_fp4 = eng.load_weights(fp4_sd)
                    dt, n = timed_generate(eng, prompts, mparams)
                    emit(engine=ename, model=mname, dtype=dtype, weights="fp4", tokens=n, seconds=dt,
                         tokens_per_s=n / dt, sync_s=sync_fp4, startup_s=startup)
                finally:
                    eng.close()
    print(f"# total {time.perf_counter() - bench_t0:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "load_start": load, "rows": rows}, indent=1))
    if "vllm" in engines:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
