"""One distill-loss learner run in its own process (DeepSpeed's distributed init is process-global).

    python tests/zero3_distill_worker.py ZERO_STAGE TINY_DIR OUT_FILE

Three optimizer steps of ``distill.loss.make_loss_fn`` (fused reverse KL against a random hidden-state teacher) on a
fixed batch; prints ``RESULT {json}`` (losses, whether the head was partitioned) and saves the gathered weights."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(stage: int, tiny_dir: str, out_file: str) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from distill.loss import DistillBatch, TeacherRows, make_loss_fn
    from train.config import LearnerConfig
    from train.learner import Learner

    V = AutoConfig.from_pretrained(tiny_dir).vocab_size
    g = torch.Generator().manual_seed(0)
    B, L, Ht = 2, 12, 24
    ids = torch.randint(3, V, (B, L), generator=g)
    attn = torch.ones(B, L, dtype=torch.long)
    attn[1, 9:] = 0
    flat = torch.tensor([b * L + p for b, n in ((0, 12), (1, 9)) for p in range(4, n)])
    n = flat.numel()
    teacher = TeacherRows(torch.arange(n), torch.randn(n, Ht, generator=g), torch.ones(n))
    mb = DistillBatch(ids, attn, flat, {"t": teacher}, weight=float(n))
    heads = {"t": torch.randn(V, Ht, generator=g) * Ht ** -0.5}
    cfg = LearnerConfig(optimizer="adamw", lr=1e-2, warmup_steps=1, schedule="constant", zero_stage=stage)
    learner = Learner(tiny_dir, cfg, total_steps=3, seed=0)
    head = learner.unwrapped.get_output_embeddings().weight
    out = {"stage": stage, "head_partitioned": hasattr(head, "ds_shape") and head.numel() < head.ds_numel}
    loss_fn = make_loss_fn(heads, "hidden", chunk_size=8, temperature=1.0)
    res = [learner.step(loss_fn, [mb]) for _ in range(3)]
    out["losses"] = [r.loss for r in res]
    out["grad_norms"] = [r.grad_norm for r in res]
    save_file({k: v.float().contiguous() for k, v in learner.state_dict().items()}, out_file)
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)
