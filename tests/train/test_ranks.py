"""The learner as a group of ranks (train.ranks): 2 ranks (gloo, Ray actors) == 1 rank on the same global batch.

The slow cases run this file as a script in their own processes (torch.distributed, DeepSpeed and accelerate keep
process-wide state): one process trains the 1-rank references, one per configuration trains a 2-rank group, saves
it part-way, closes it, and resumes a fresh 2-rank group from the checkpoint.

    python tests/train/test_ranks.py JOB_JSON        # prints one line: RESULT {...}

Tolerances. Each micro-batch's forward and backward are the same computation on either side; what differs is the
order of a few reductions. Plain data parallel (DDP): rank 0 accumulates micro-batches 0-1, rank 1 micro-batch 2
(plus a weight-0 padding one), each scaled by 2, and the all-reduce adds the two partial sums and halves them: the
1-rank order ((g0 + g1) + g2), exactly; it came out bit-identical here, and is checked at 1e-6. ZeRO-3 reduce-scatters
after every backward, so the partitions sum (g0 + g2) + g1; its clipping norm is summed from per-rank partition
norms; and AdamW's per-coordinate normalisation turns the last-bit differences of coordinates whose gradient nearly
cancels into update differences of up to ~lr x their relative error: measured 9e-7 at most in the weights after 4
steps at lr 1e-2, 1e-7 relative in the map() log-probs, 4e-8 in the grad norms. ZeRO-3 is checked at 1e-5. A resumed
group repeats the very same computation as the uninterrupted one: compared exactly.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- shared by both
def make_batches(vocab: int, steps: int, n_mb: int = 3, rows: int = 2, seed: int = 0) -> list[list[dict]]:
    """``steps`` global batches of ``n_mb`` micro-batches (``rows`` sequences of 12-30 tokens each, loss on a
    random suffix), as collated SFT batches: input_ids, attention_mask, loss_mask and weight."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        mbs = []
        for _ in range(n_mb):
            lens = torch.randint(12, 31, (rows,), generator=g).tolist()
            T = max(lens)
            ids = torch.zeros(rows, T, dtype=torch.long)
            attn = torch.zeros(rows, T, dtype=torch.long)
            mask = torch.zeros(rows, T)
            for i, n in enumerate(lens):
                ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
                attn[i, :n] = 1
                mask[i, n // 3:n] = 1.0
            mbs.append({"input_ids": ids, "attention_mask": attn, "loss_mask": mask,
                        "weight": float(mask[:, 1:].sum())})
        out.append(mbs)
    return out


def ce_loss(model, mb):
    """Token cross-entropy summed over the loss mask; metric: token accuracy."""
    import torch

    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1].float()
    tgt, mask = mb["input_ids"][:, 1:], mb["loss_mask"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                            reduction="none").view_as(mask)
    acc = float(((logits.argmax(-1) == tgt).float() * mask).sum() / mask.sum().clamp(min=1))
    return (nll * mask).sum(), {"acc": acc}


def seq_logp(model, mb):
    """Per-sequence summed log-probability of the masked tokens (a no-grad forward, as GRPO's π_old)."""
    import torch

    logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, mb["input_ids"][:, 1:, None])[..., 0]
    return (lp * mb["loss_mask"][:, 1:]).sum(-1)


def fail_on_rank1(model, mb):
    import torch

    if torch.distributed.get_rank() == 1:
        raise ValueError("rank 1 fails")
    return ce_loss(model, mb)


def rank_info(learner, tag):
    return [tag, learner.accelerator.process_index, learner.step_count]


# ------------------------------------------------------------------------------------------ the job (script)
def run_job(job: dict) -> dict:
    """Train ``job["ranks"]`` ranks for ``steps`` steps (saving after ``cut`` when given), then, for a group, resume
    a fresh group from that checkpoint and continue to ``steps``."""
    import torch
    from safetensors.torch import save_file

    from train.config import LearnerConfig
    from train.ranks import LearnerGroup, make_learner

    t0 = time.time()
    cfg = LearnerConfig(**job["cfg"])
    steps, cut, ranks = job["steps"], job.get("cut"), job["ranks"]
    batches = make_batches(job["vocab"], steps)
    Path(job["work"]).mkdir(parents=True, exist_ok=True)
    out: dict = {"timings": {}}
    if ranks > 1:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="warning")
        out["timings"]["ray_init"] = round(time.time() - t0, 1)

    def train(learner, first, last, ckpt=None):
        res, maps = [], []
        for s in range(first, last):
            maps.append([x.tolist() for x in learner.map(seq_logp, batches[s])])
            res.append(learner.step(ce_loss, batches[s]))
            if ckpt is not None and s + 1 == cut:
                ckpt.mkdir(parents=True, exist_ok=True)
                learner.save(ckpt, {"step": cut})
        return res, maps

    t = time.time()
    learner = make_learner(job["tiny_dir"], cfg, steps, seed=0, ranks=ranks, start_timeout_s=120)
    out["timings"]["start"] = round(time.time() - t, 1)
    out["kind"] = type(learner).__name__
    if isinstance(learner, LearnerGroup):
        out["devices"] = learner.devices
    t = time.time()
    ckpt = Path(job["work"]) / "ckpt" if cut else None
    res, maps = train(learner, 0, steps, ckpt)
    out["timings"]["train"] = round(time.time() - t, 1)
    out.update(losses=[r.loss for r in res], lrs=[r.lr for r in res], grad_norms=[r.grad_norm for r in res],
               metrics=[r.metrics for r in res], maps=maps, step_count=learner.step_count)
    sd = learner.state_dict()
    save_file({k: v.detach().float().cpu().contiguous() for k, v in sd.items()}, job["work"] + "/final.safetensors")
    rsd = learner.rollout_state_dict(True)           # MXFP4-dequantized targets (gathered first under ZeRO-3)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in rsd.items()}, job["work"] + "/fp4.safetensors")
    out["on_ranks"] = learner.on_ranks(rank_info, "x")
    if isinstance(learner, LearnerGroup) and cut:
        learner.save_pretrained(Path(job["work"]) / "hf")
        learner.close()
        del learner
        t = time.time()
        torch.manual_seed(999)            # the checkpoint restores the RNG state too
        fresh = make_learner(job["tiny_dir"], cfg, steps, seed=0, ranks=ranks, start_timeout_s=120)
        out["timings"]["restart"] = round(time.time() - t, 1)
        out["resumed_extra"] = fresh.load(ckpt)
        out["resumed_step_count"] = fresh.step_count
        res, maps = train(fresh, cut, steps)
        out.update(resumed_losses=[r.loss for r in res], resumed_maps=maps)
        sd = fresh.state_dict()
        save_file({k: v.detach().float().cpu().contiguous() for k, v in sd.items()},
                  job["work"] + "/resumed.safetensors")
        if job.get("fail"):           # one rank fails: the error comes back at once, the group is then unusable
            t = time.time()
            try:
                fresh.step(fail_on_rank1, batches[0])
                out["failure"] = "no error"
            except Exception as e:  # noqa: BLE001
                out["failure"] = f"{type(e).__name__}: {e}"
            out["failure_s"] = round(time.time() - t, 1)
            out["broken"] = fresh.broken
        fresh.close()
    out["timings"]["total"] = round(time.time() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------------- the tests
def _run(job: dict, timeout=600) -> dict:   # a fresh machine first builds DeepSpeed's CPU comm op (~2 min)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_AUTH_MODE": "disabled"}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    Path(job["work"]).mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=str(ROOT))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


PLAIN = {"optimizer": "muon", "lr": 3e-3, "muon_lr": 2e-2, "warmup_steps": 1, "schedule": "cosine"}
ZERO3 = {"optimizer": "adamw", "lr": 1e-2, "warmup_steps": 1, "schedule": "cosine", "zero_stage": 3}
STEPS, CUT = 4, 2


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """The 1-rank references (plain with Muon, ZeRO-3 with AdamW) and the 2-rank groups, run once per module."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(tiny_dir).vocab_size
    base = tmp_path_factory.mktemp("ranks")
    out = {}
    for name, cfg, ranks in (("plain1", PLAIN, 1), ("zero1", ZERO3, 1), ("plain2", PLAIN, 2), ("zero2", ZERO3, 2)):
        job = {"tiny_dir": tiny_dir, "vocab": vocab, "cfg": cfg, "ranks": ranks, "steps": STEPS,
               "cut": CUT if ranks > 1 else None, "work": str(base / name), "fail": name == "plain2"}
        out[name] = _run(job)
        out[name]["work"] = job["work"]
    out["tiny_dir"] = tiny_dir
    return out


def _weights(run, name="final"):
    from safetensors.torch import load_file

    return load_file(f"{run['work']}/{name}.safetensors")


def _close_weights(a, b, rtol, atol):
    import torch

    assert a.keys() == b.keys() and len(a) > 5
    bad = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.allclose(a[k], b[k], rtol=rtol, atol=atol)}
    assert not bad, bad


def _same_step_results(one, two, rel):
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    assert two["losses"] == pytest.approx(one["losses"], rel=rel)
    assert two["lrs"] == pytest.approx(one["lrs"], rel=1e-12)     # the schedule advances once per step
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=rel)
    for m1, m2 in zip(one["metrics"], two["metrics"]):
        assert m2 == pytest.approx(m1, rel=rel, abs=rel)
    for s1, s2 in zip(one["maps"], two["maps"]):                   # map: every micro-batch, in order
        assert len(s1) == len(s2) == 3
        for a, b in zip(s1, s2):
            assert b == pytest.approx(a, rel=rel)


def _initial(runs) -> dict:
    from transformers import AutoModelForCausalLM

    return {k: v.float() for k, v in AutoModelForCausalLM.from_pretrained(runs["tiny_dir"]).state_dict().items()}


@pytest.mark.slow
def test_two_ranks_data_parallel_match_one_rank(runs):
    import torch

    one, two = runs["plain1"], runs["plain2"]
    assert one["kind"] == "Learner" and two["kind"] == "LearnerGroup" and all(d.startswith("cpu") for d in two["devices"])
    initial = _initial(runs)
    assert sum(not torch.equal(initial[k], v) for k, v in _weights(one).items()) > 5      # the steps moved weights
    _same_step_results(one, two, rel=1e-6)
    _close_weights(_weights(one), _weights(two), rtol=1e-6, atol=1e-6)   # state_dict() of the group == 1 rank
    _close_weights(_weights(one, "fp4"), _weights(two, "fp4"), rtol=1e-6, atol=1e-6)
    assert one["on_ranks"] == [["x", 0, STEPS]] and two["on_ranks"] == [["x", 0, STEPS], ["x", 1, STEPS]]


@pytest.mark.slow
def test_two_ranks_zero3_match_one_rank(runs):
    import torch

    one, two, plain = runs["zero1"], runs["zero2"], runs["plain1"]
    assert two["kind"] == "LearnerGroup"
    _same_step_results(one, two, rel=1e-5)
    _close_weights(_weights(one), _weights(two), rtol=1e-5, atol=1e-5)   # gathered from both ranks' partitions
    assert two["on_ranks"] == [["x", 0, STEPS], ["x", 1, STEPS]]
    # rollout_state_dict(fp4) quantizes the gathered weights (MXFP4 rounding is discontinuous, so it is checked
    # against the quantization of the group's own weights rather than against the 1-rank run)
    from rollout.fp4 import quantized_state_dict
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs["tiny_dir"], dtype=torch.float32)
    model.load_state_dict(_weights(two))
    want, got = quantized_state_dict(model), _weights(two, "fp4")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert any(not torch.equal(got[k], v) for k, v in _weights(two).items())      # some targets were quantized
    assert one["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-6)   # same model, same first batch


@pytest.mark.slow
def test_a_failing_rank_fails_the_step_at_once(runs):
    run = runs["plain2"]                       # rank 1 raises while rank 0 waits in the gradient all-reduce
    assert "rank 1 fails" in run["failure"] and run["failure_s"] < 30
    assert run["broken"] and "rank 1 fails" in run["broken"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain2", "zero2"])
def test_two_ranks_resume_exactly(runs, name):
    """Saved by a 2-rank group after step 2, loaded by a fresh 2-rank group: steps 3-4 as if uninterrupted."""
    import torch

    run = runs[name]
    assert run["resumed_extra"] == {"step": CUT} and run["resumed_step_count"] == CUT
    assert run["resumed_losses"] == run["losses"][CUT:]
    assert run["resumed_maps"] == run["maps"][CUT:]
    a, b = _weights(run), _weights(run, "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    from transformers import AutoModelForCausalLM                # save_pretrained: rank 0 wrote the full weights

    hf = AutoModelForCausalLM.from_pretrained(f"{run['work']}/hf", dtype=torch.float32).state_dict()
    assert hf.keys() == a.keys() and all(torch.equal(hf[k], a[k]) for k in a)


# ------------------------------------------------------------------------------------------ fast unit tests
def test_shares_split_in_order():
    from train.ranks import shares

    assert [list(r) for r in shares(3, 2)] == [[0, 1], [2]]
    assert [list(r) for r in shares(1, 2)] == [[0], []]
    assert [list(r) for r in shares(7, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert sum(len(r) for r in shares(10, 4)) == 10


def test_resolve_ranks_and_single_rank_factory(tiny_dir):
    from train.config import LearnerConfig
    from train.learner import Learner
    from train.ranks import make_learner, resolve_ranks

    assert resolve_ranks(None, 0) == 1 and resolve_ranks(3, 0) == 3
    assert resolve_ranks(None, 4) == (4 if __import__("torch").cuda.is_available() else 1)
    with pytest.raises(ValueError):
        resolve_ranks(0)
    # one rank: exactly the in-process Learner, no Ray, no process group
    learner = make_learner(tiny_dir, LearnerConfig(), 2, seed=0)
    assert type(learner) is Learner


def test_to_device_copies_nested_batches():
    from dataclasses import dataclass

    import torch

    from train.ranks import to_device

    @dataclass
    class B:
        x: torch.Tensor
        weight: float
        extra: dict

    b = B(torch.ones(2), 3.0, {"y": [torch.zeros(1)]})
    m = to_device(b, "meta")
    assert m is not b and m.x.device.type == "meta" and m.extra["y"][0].device.type == "meta" and m.weight == 3.0
    assert b.x.device.type == "cpu"                               # the original is left where it was


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_job(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip the slow interpreter/process-group/Ray teardown
