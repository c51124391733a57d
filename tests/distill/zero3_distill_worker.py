"""One distill-loss learner run in its own process (DeepSpeed's distributed init is process-global).

    python tests/distill/zero3_distill_worker.py ZERO_STAGE TINY_DIR OUT_FILE [RANKS]

Three optimizer steps of ``distill.loss.make_loss_fn`` (fused reverse KL against two random hidden-state teachers, one
route weighting them 0.7/0.3) on fixed trajectories through ``micro_batches`` (split for the ranks), with 1 learner or
a group of ``RANKS`` (rank 1.. Ray actors, gloo); prints ``RESULT {json}`` and saves the gathered weights."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(stage: int, tiny_dir: str, out_file: str, ranks: int = 1) -> dict:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    from distill.loss import make_loss_fn, micro_batches
    from distill.rollouts import Trajectory
    from distill.routing import Draw
    from train.config import LearnerConfig
    from train.ranks import make_learner

    if ranks > 1:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="warning")
    V = AutoConfig.from_pretrained(tiny_dir).vocab_size        # the config's: under ZeRO-3 the head has 0 rows here
    pad = AutoTokenizer.from_pretrained(tiny_dir).pad_token_id
    g = torch.Generator().manual_seed(0)
    Ht = 24
    heads = {"ta": torch.randn(V, Ht, generator=g) * Ht ** -0.5, "tb": torch.randn(V, Ht, generator=g) * Ht ** -0.5}
    routes = {"math": [("ta", 1.0)], "code": [("ta", 0.7), ("tb", 0.3)]}
    steps = []
    for step in range(3):
        trajs, payloads = [], {"ta": [], "tb": []}
        for i in range(4):
            pl, n = int(torch.randint(3, 7, (1,), generator=g)), int(torch.randint(4, 10, (1,), generator=g))
            ids = torch.randint(3, V, (pl + n,), generator=g).tolist()
            t = Trajectory(Draw("math" if i % 2 else "code", "think_high", i), ids, list(range(pl - 1, pl + n - 1)))
            trajs.append(t)
            for name, _ in routes[t.draw.domain]:
                payloads[name].append(torch.randn(t.n_tokens, Ht, generator=g))
        steps.append((trajs, payloads))
    cfg = LearnerConfig(optimizer="adamw", lr=1e-2, warmup_steps=0, schedule="constant", zero_stage=stage)
    learner = make_learner(tiny_dir, cfg, 3, seed=0, ranks=ranks, start_timeout_s=120)
    out = {"stage": stage, "ranks": learner.ranks}
    if ranks == 1:
        head = learner.unwrapped.get_output_embeddings().weight
        out["head_partitioned"] = hasattr(head, "ds_shape") and head.numel() < head.ds_numel
    named = {k: SimpleNamespace(name=k) for k in heads}       # what routes_of returns: teachers with a .name
    loss_fn = make_loss_fn(heads, "hidden", chunk_size=8, temperature=1.0)
    res = []
    for trajs, payloads in steps:
        mbs = micro_batches(trajs, lambda t: [(named[n], w) for n, w in routes[t.draw.domain]], payloads, pad,
                            device=learner.device, ranks=learner.ranks)
        res.append(learner.step(loss_fn, mbs))
    out["losses"] = [r.loss for r in res]
    save_file({k: v.detach().float().cpu().contiguous() for k, v in learner.state_dict().items()}, out_file)
    if ranks > 1:
        learner.close()
    return out


if __name__ == "__main__":
    result = main(int(sys.argv[1]), sys.argv[2], sys.argv[3], *[int(x) for x in sys.argv[4:5]])
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)
