"""The ZeRO-3 weight push of a 2-rank learner group, in its own process (DeepSpeed's distributed init is
process-global).

    python tests/train/zero3_push_worker.py TINY_DIR OUT_JSON [RANKS]

RANKS (default 2) learner ranks (rank 1 a Ray actor, gloo, DeepSpeed's CPU accelerator; 1: the in-process learner,
no Ray) take one ZeRO-3 step; then the push: rank 0's
``rollout_state_dict`` planned in buckets and sent through a real gloo ``WeightSender`` to a ``WeightReceiver`` (a
thread of this process standing in for the engine). Every rank counts its ``GatheredParameters`` calls (how many
at once, how many bytes each); the driver records what each rank returned per bucket. Writes a JSON summary, and the FP4 push (read as a Mapping) and the whole-model gather beside it (safetensors).""" 
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def install_counter(learner) -> int:
    """Wrap ``deepspeed.zero.GatheredParameters`` in this rank's process: record each gather's full bytes and how
    many gathers are open at once."""
    import deepspeed

    real = getattr(deepspeed.zero, "_real_gathered", deepspeed.zero.GatheredParameters)
    deepspeed.zero._real_gathered = real
    stats = deepspeed.zero._push_stats = {"gathers": [], "open": 0, "max_open": 0}

    class Counted:
        def __init__(self, params, *a, **k):
            ps = [params] if hasattr(params, "ds_id") else list(params)
            self.bytes = sum(int(p.ds_numel) * p.element_size() for p in ps if hasattr(p, "ds_id"))
            self.inner = real(params, *a, **k)

        def __enter__(self):
            stats["open"] += 1
            stats["max_open"] = max(stats["max_open"], stats["open"])
            stats["gathers"].append(self.bytes)
            return self.inner.__enter__()

        def __exit__(self, *exc):
            stats["open"] -= 1
            return self.inner.__exit__(*exc)

    deepspeed.zero.GatheredParameters = Counted
    return learner.accelerator.process_index


def read_counter(learner) -> dict:
    import deepspeed

    s = deepspeed.zero._push_stats
    return {"rank": learner.accelerator.process_index, "gathers": list(s["gathers"]), "max_open": s["max_open"]}


def loss_fn(model, mb):
    out = model(input_ids=mb["input_ids"], labels=mb["input_ids"])
    return out.loss * mb["weight"], {}


def main(tiny_dir: str, out_file: str, ranks: int = 2) -> dict:
    import torch

    from rollout.weight_sync import RolloutWeights, WeightReceiver, WeightSender, plan_for
    from train.config import LearnerConfig
    from train.ranks import LearnerGroup, make_learner

    if ranks > 1:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="warning")
    cfg = LearnerConfig(optimizer="adamw", lr=1e-2, warmup_steps=0, schedule="constant", zero_stage=3)
    learner = make_learner(tiny_dir, cfg, 2, seed=0, ranks=ranks, start_timeout_s=300)
    assert isinstance(learner, LearnerGroup) == (ranks > 1)
    g = torch.Generator().manual_seed(0)
    mbs = [{"input_ids": torch.randint(3, 300, (2, 12), generator=g), "weight": 1.0} for _ in range(2)]
    learner.step(loss_fn, mbs)
    ref = {k: v.detach().float().clone() for k, v in learner.state_dict().items()}   # the whole-model gather

    learner.on_ranks(install_counter)
    returned: list[list[bool]] = []                   # per rank-gather call: which ranks returned tensors
    if ranks > 1:
        all_ = learner._all

        def recording_all(name, remote_args, local_args):
            res = all_(name, remote_args, local_args)
            if name == "rollout_gather":
                returned.append([r is not None for r in res])
            return res
        learner._all = recording_all

    weights = learner.rollout_state_dict(False)
    assert isinstance(weights, RolloutWeights)
    largest = max(int(torch.Size(s).numel()) * torch.empty((), dtype=d).element_size()
                  for s, d in weights.meta.values())
    total = sum(int(torch.Size(s).numel()) * torch.empty((), dtype=d).element_size() for s, d in weights.meta.values())
    bucket_bytes = 2 * largest
    plan = plan_for(weights, bucket_bytes)

    sender = WeightSender("127.0.0.1", "gloo", timeout_s=60, sync_timeout_s=60)
    got: dict = {}

    def engine():
        receiver = WeightReceiver(**sender.join_args(), own_address="127.0.0.1")
        got["sd"] = receiver.receive(plan)
        receiver.close()
    t = threading.Thread(target=engine)
    t.start()
    sender.connect()
    sender.send(plan, weights, keep=False)
    t.join(120)
    sender.close()
    counters = learner.on_ranks(read_counter)
    if ranks > 1:
        learner._all = all_                           # the push's calls only
    # the FP4 push read as a plain Mapping (what an in-process engine's load_state_dict does): bucket by bucket
    from safetensors.torch import save_file

    fp4 = {k: v.detach().float().contiguous() for k, v in learner.rollout_state_dict(True).items()}
    save_file(fp4, str(Path(out_file).with_suffix(".fp4.safetensors")))
    save_file({k: v.contiguous() for k, v in ref.items()}, str(Path(out_file).with_suffix(".ref.safetensors")))
    received = got["sd"]
    diff = {k: float((received[k].float() - ref[k]).abs().max()) for k in ref}
    from safetensors.torch import load_file

    start = load_file(str(Path(tiny_dir) / "model.safetensors"))     # (from_pretrained would partition it here)
    out = {"ranks": learner.ranks, "buckets": len(plan.buckets), "bucket_bytes": bucket_bytes, "model_bytes": total,
           "names_equal": list(received) == list(ref), "max_diff": max(diff.values()),
           "moved": max(float((start[k].float() - ref[k]).abs().max()) for k in ref if k in start),
           "returned": returned, "counters": counters}
    learner.close()
    Path(out_file).write_text(json.dumps(out))
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))))
