"""One DeepSpeed ZeRO check of the shared learner, in its own process (distributed init is process-global).

    python tests/specialists/zero_worker.py STAGE TINY_DIR WORK_DIR [PRECISION [QAT]]

Prints one JSON line: the losses of a reference run (one step = two micro-batches), of a run on the full batch
whose first half is saved and resumed by a fresh learner, whether ZeRO-3 really partitioned the parameters,
and how the gathered ``state_dict()`` / ``save_pretrained`` compare with the model's full weights.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _fresh_accelerate_state():
    """A second Learner in the same process needs accelerate's singletons cleared (the DeepSpeed comm stays up)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def main(stage: int, tiny_dir: str, work: str, precision: str = "fp32", qat: str = "none") -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.config import LearnerConfig
    from rewards.tasks import generate
    from train.data import collate, sft_examples
    from train.learner import Learner
    from train.sft import sft_loss

    t0 = time.time()
    work = Path(work)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ex = sft_examples(tok, generate("math", "train", 20, 0), ["non_think"], 128)
    full = collate(ex[:4], tok.pad_token_id)
    halves = [collate(ex[:2], tok.pad_token_id), collate(ex[2:4], tok.pad_token_id)]
    cfg = LearnerConfig(optimizer="adamw", lr=1e-2, warmup_steps=2, schedule="cosine", zero_stage=stage,
                        precision=precision, qat=qat)
    n, cut = 6, 3
    # the full weights, loaded before DeepSpeed is configured (under live ZeRO-3 from_pretrained would partition)
    hf = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).state_dict().items()}
    out: dict = {"stage": stage}

    ref = Learner(tiny_dir, cfg, total_steps=n, seed=0)
    out["distributed_type"] = ref.accelerator.distributed_type.value
    out["engine"] = type(ref.model).__name__
    params = list(ref.unwrapped.parameters())  # right after init: ZeRO-3 holds only this rank's partition
    out["partitioned"] = sum(1 for p in params if hasattr(p, "ds_shape") and p.numel() < p.ds_numel)
    out["n_params"] = len(params)
    res = [ref.step(sft_loss, halves) for _ in range(n)]   # gradient accumulation over two micro-batches
    out["ref_losses"] = [r.loss for r in res]
    out["grad_norms"] = [r.grad_norm for r in res]
    out["step_count"] = ref.step_count
    ref_sd = ref.state_dict()
    del ref
    _fresh_accelerate_state()

    first = Learner(tiny_dir, cfg, total_steps=n, seed=0)
    got = [first.step(sft_loss, [full]).loss for _ in range(cut)]
    ckpt = work / f"ckpt-zero{stage}"
    ckpt.mkdir(parents=True, exist_ok=True)
    first.save(ckpt, {"step": cut})
    del first
    _fresh_accelerate_state()

    torch.manual_seed(999)  # the checkpoint restores the RNG state too
    second = Learner(tiny_dir, cfg, total_steps=n, seed=0)
    out["extra"] = second.load(ckpt)
    out["resumed_step_count"] = second.step_count
    got += [second.step(sft_loss, [full]).loss for _ in range(n - cut)]
    out["resumed_losses"] = got

    sd = second.state_dict()
    out["sd_missing"] = sorted(set(hf) - set(sd))
    out["sd_unchanged"] = sorted(k for k, v in hf.items() if k in sd and torch.equal(sd[k].float(), v))
    out["sd_shapes_match"] = all(tuple(sd[k].shape) == tuple(v.shape) for k, v in hf.items() if k in sd)
    out["sd_changed"] = sum(not torch.equal(sd[k].float(), v) for k, v in hf.items() if k in sd)
    out["sd_vs_ref_max_diff"] = max(float((sd[k].float() - ref_sd[k].float()).abs().max()) for k in sd)
    folder = work / f"hf-zero{stage}"
    second.save_pretrained(folder, tok)
    back = load_file(str(folder / "model.safetensors"))
    out["save_pretrained_max_diff"] = max(float((back[k] - sd[k].float()).abs().max()) for k in back if k in sd)
    out["wall_s"] = round(time.time() - t0, 1)
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]), sys.argv[2], sys.argv[3], *sys.argv[4:6])
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip the slow interpreter/process-group teardown
