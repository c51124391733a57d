"""Data parallelism over the global batch: 2 learner ranks (gloo, Ray actors) take the 1-rank step, for the SFT,
GRPO and distillation losses, for 8 steps each; and a checkpoint resumes at another world size only when it can.

Each side runs this file as a script in its own process (torch.distributed, DeepSpeed and accelerate keep
process-wide state); one process per world size trains the three losses one after the other, each from the same
tiny model:

* SFT: ``train.sft.sft_loop`` itself (each rank collates its share of the sampler's batch), think_max's SFT learner
  (Muon, MXFP4 QAT);
* GRPO: fixed rollouts (a random tiny policy cannot earn rewards), through the driver's own pieces --
  ``to_minibatches`` (each minibatch in one part per rank), ``old_policy``, ``make_loss_fn``, ``train_steps`` --
  two minibatches a step, the loss aggregation cycling through token_mean, seq_mean_token_mean and dr_grpo,
  entropy term and off-policy mask on;
* distill: fixed trajectories and teacher logits through ``distill.loss.micro_batches`` (split for the ranks) and
  ``make_loss_fn`` (the fused and the per-token KL: one route has two teachers of weights 0.7/0.3).

The 1-rank step sums the micro-batches' gradients in one process; 2 ranks sum their shares and all-reduce: only the
order of a few floating-point additions differs (and each rank's micro-batch is padded to its own longest row).
Measured here: SFT 2.0e-7, GRPO 2.8e-6, distill 8.2e-8 relative at most (the distill loss drifted by 4.1e-4 while
its forward bypassed the DDP wrapper), checked at 1e-5. SFT runs without MXFP4 QAT: QAT's rounding turns such
last-bit differences into jumps of a whole FP4 step (1.3e-5 at step 7 with ``qat: mxfp4``; docs/scaling.md).

    python tests/train/test_dp_global_batch.py JOB_JSON        # prints one line: RESULT {...}
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

STEPS = 8
SFT_LEARNER = {"optimizer": "muon", "lr": 1e-2, "muon_lr": 1e-2, "warmup_steps": 2}   # think_max's, without QAT
GRPO_LEARNER = {"optimizer": "adamw", "lr": 3e-3, "warmup_steps": 0, "schedule": "constant"}
DISTILL_LEARNER = {"optimizer": "adamw", "lr": 2e-3, "warmup_steps": 0, "schedule": "constant"}
AGGS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


class _Loop:
    """What ``sft_loop`` needs of ``StageContext.train_loop``: the steps, and ``log``."""

    def __init__(self, steps):
        self.steps, self.rows = steps, []

    def __iter__(self):
        return iter(range(self.steps))

    def log(self, extra=None, **row):
        self.rows.append(row)


def _sft(learner, tok) -> dict:
    from rewards.tasks import load_tasks
    from train.data import sft_examples
    from train.sft import sft_loop

    examples = sft_examples(tok, load_tasks("math", "train", 24, 0), ["non_think", "think_high"], 128)
    loop = _Loop(STEPS)
    sft_loop(loop, learner, examples, 6, 0, tok.pad_token_id)    # 6 rows a step: 3 per rank
    return {"losses": [r["loss"] for r in loop.rows], "metrics": [r["token_acc"] for r in loop.rows]}


def _rollouts(step: int, vocab: int, P: int = 3, G: int = 4):
    """P prompts x G completions of random tokens, the engine's log-probs near a random tiny policy's (so some
    ratios clip and some sequences fail the off-policy test)."""
    import torch

    from specialists.rollouts import Rollouts

    g = torch.Generator().manual_seed(1000 + step)
    seqs, plens, masks, logps, ntoks = [], [], [], [], []
    for _ in range(P * G):
        pl, n = int(torch.randint(4, 9, (1,), generator=g)), int(torch.randint(3, 17, (1,), generator=g))
        seqs.append(torch.randint(3, vocab, (pl + n,), generator=g).tolist())
        plens.append(pl)
        masks.append([1] * n)
        logps.append((-6.0 + 0.4 * torch.randn(n, generator=g)).tolist())
        ntoks.append(n)
    reward = torch.rand(P, G, generator=g)
    return Rollouts([{}] * P, seqs, plens, masks, logps, [[None] * n for n in ntoks], [""] * (P * G), ntoks,
                    [None] * (P * G), reward, reward, {}, [False] * (P * G))


def _grpo(learner, tok) -> dict:
    from specialists.algos import ADVANTAGES
    from specialists.config import GRPOConfig
    from specialists.grpo import make_loss_fn, old_policy, train_steps
    from specialists.rollouts import by_minibatch, to_minibatches

    vocab = learner.unwrapped.config.vocab_size
    losses, masked, parts = [], [], []
    for step in range(STEPS):
        g = GRPOConfig(loss_agg=AGGS[step % 3], entropy_coef=-0.1, offpolicy_delta=0.05, minibatches=2,
                       keep_routing=False)
        ro = _rollouts(step, vocab)
        mbs = to_minibatches(ro, ADVANTAGES["dr_grpo"](ro.reward_P_G), g.minibatches, tok.pad_token_id, False,
                             learner.device, learner.ranks)
        old_policy(learner, None, None, mbs, g, 16)
        steps = by_minibatch(mbs)
        parts.append([len(p) for p in steps])
        res = train_steps(learner, make_loss_fn(g, 16), steps, 1)
        losses += [r.loss for r in res]
        masked += [r.metrics["masked_seqs"] for r in res]
    return {"losses": losses, "metrics": masked, "parts": parts}


def _distill(learner, tok) -> dict:
    import torch

    from distill.loss import make_loss_fn, micro_batches
    from distill.rollouts import Trajectory
    from distill.routing import Draw

    class T:
        def __init__(self, name):
            self.name = name

    ta, tb = T("ta"), T("tb")
    vocab = learner.unwrapped.get_output_embeddings().weight.shape[0]
    losses, kls = [], []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(2000 + step)
        trajs = []
        for i in range(5):
            pl, n = int(torch.randint(4, 9, (1,), generator=g)), int(torch.randint(4, 14, (1,), generator=g))
            ids = torch.randint(3, vocab, (pl + n,), generator=g).tolist()
            trajs.append(Trajectory(Draw("math" if i % 2 else "code", "think_high", i), ids,
                                    list(range(pl - 1, pl + n - 1))))
        routes = {"math": [(ta, 1.0)], "code": [(ta, 0.7), (tb, 0.3)]}
        payloads: dict = {"ta": [], "tb": []}
        for t in trajs:
            for teacher, _ in routes[t.draw.domain]:
                payloads[teacher.name].append(2.0 * torch.randn(t.n_tokens, vocab, generator=g))
        mbs = micro_batches(trajs, lambda t: routes[t.draw.domain], payloads, tok.pad_token_id,
                            device=learner.device, ranks=learner.ranks)
        res = learner.step(make_loss_fn({}, "logits", 64, 1.0), mbs)
        losses.append(res.loss)
        kls.append(res.metrics["kl_w.tb"])
    return {"losses": losses, "metrics": kls}


def run_job(job: dict) -> dict:
    from transformers import AutoTokenizer

    from train.config import LearnerConfig
    from train.ranks import make_learner

    t0 = time.time()
    ranks = job["ranks"]
    if ranks > 1:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="warning")
    tok = AutoTokenizer.from_pretrained(job["tiny_dir"])
    out: dict = {"timings": {}}
    kinds = (("sft", _sft, job.get("sft_cfg", SFT_LEARNER)), ("grpo", _grpo, GRPO_LEARNER),
             ("distill", _distill, DISTILL_LEARNER))
    for name, fn, cfg in [k for k in kinds if k[0] in job.get("kinds", ("sft", "grpo", "distill"))]:
        t = time.time()
        learner = make_learner(job["tiny_dir"], LearnerConfig(**cfg), STEPS, seed=0, ranks=ranks,
                               start_timeout_s=120)
        out[name] = fn(learner, tok)
        out[name]["ranks"] = learner.ranks
        if name == "sft":   # a plain checkpoint; the 2-rank group then resumes the 1-rank one (another world size)
            Path(job["work"]).mkdir(parents=True, exist_ok=True)
            learner.save(Path(job["work"]), {"step": STEPS})
            if job.get("resume_from"):
                from safetensors.torch import save_file

                out["resumed_extra"] = learner.load(Path(job["resume_from"]))
                save_file({k: v.detach().float().cpu().contiguous() for k, v in learner.state_dict().items()},
                          job["work"] + "/resumed.safetensors")
        learner.close()
        out["timings"][name] = round(time.time() - t, 1)
    out["timings"]["total"] = round(time.time() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------------- the tests
def _rel(a: list, b: list) -> float:
    assert len(a) == len(b) and a
    return max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))


def _run(job: dict, timeout=300) -> dict:
    """This file as a script with ``job``, in a fresh process (as tests/train/test_ranks.py runs its jobs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_AUTH_MODE": "disabled"}
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True, text=True, timeout=timeout,
                       env=env, cwd=str(ROOT))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("dp")
    out = {1: _run({"tiny_dir": tiny_dir, "ranks": 1, "work": str(base / "r1")}, timeout=300)}
    out[2] = _run({"tiny_dir": tiny_dir, "ranks": 2, "work": str(base / "r2"), "resume_from": str(base / "r1")},
                  timeout=300)
    for r in (1, 2):
        out[r]["work"] = str(base / f"r{r}")
    return out


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("kind", ["sft", "grpo", "distill"])
def test_two_ranks_take_the_one_rank_step(runs, kind):
    one, two = runs[1][kind], runs[2][kind]
    assert one["ranks"] == 1 and two["ranks"] == 2
    n = STEPS * (2 if kind == "grpo" else 1)               # GRPO: two minibatches (optimizer steps) per step
    assert len(one["losses"]) == len(two["losses"]) == n
    assert len(set(one["losses"])) == n                     # the steps moved the weights (and the data changed)
    rel = _rel(one["losses"], two["losses"])
    print(f"{kind}: max relative loss difference 1 vs 2 ranks over {n} steps: {rel:.2e}")
    assert rel < 1e-5, (kind, one["losses"], two["losses"])
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5, abs=1e-6)
    if kind == "grpo":   # every optimizer step is split over both ranks; masked_seqs stays a count
        assert all(p == [1, 1] for p in one["parts"]) and all(p == [2, 2] for p in two["parts"])
        assert all(float(m).is_integer() for m in two["metrics"]) and sum(two["metrics"]) > 0


def _checkpoint(tmp_path, world: int, zero_stage: int) -> Path:
    from train.ckpt_world import write_world

    folder = tmp_path / f"step_{world}_{zero_stage}"
    folder.mkdir(exist_ok=True)
    write_world(folder, world, zero_stage)
    return folder


def test_world_size_rule_at_checkpoint_load(tmp_path):
    from train.ckpt_world import check_world, saved_world

    check_world(_checkpoint(tmp_path, 2, 0), 1, 0)         # plain: replicated, any world size
    check_world(_checkpoint(tmp_path, 1, 0), 4, 0)
    check_world(_checkpoint(tmp_path, 2, 3), 2, 3)         # ZeRO at its own world size
    with pytest.raises(ValueError) as e:
        check_world(_checkpoint(tmp_path, 4, 3), 2, 3)
    msg = str(e.value)
    assert "\n" not in msg and "4 ZeRO ranks, this learner has 2" in msg and "learner.ranks=4" in msg
    assert "--force" in msg
    with pytest.raises(ValueError, match="ZeRO-2 learner, this learner is plain"):
        check_world(_checkpoint(tmp_path, 2, 2), 2, 0)
    with pytest.raises(ValueError, match="plain .no ZeRO. learner, this learner is ZeRO-1"):
        check_world(_checkpoint(tmp_path, 1, 0), 1, 1)
    # a checkpoint from before world.json: DeepSpeed's per-rank optimizer shards give its world size
    old = tmp_path / "old" / "accelerate" / "pytorch_model"
    old.mkdir(parents=True)
    for r in range(3):
        (old / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert saved_world(tmp_path / "old") == {"world": 3, "zero_stage": None}
    with pytest.raises(ValueError, match="3 ZeRO ranks, this learner has 2"):
        check_world(tmp_path / "old", 2, 2)


def test_a_zero_checkpoint_at_another_world_size_fails_the_load_with_one_line(tiny_dir, tmp_path):
    """The real ``Learner.load``: the one line comes before anything is read; a plain checkpoint records its world."""
    from train.config import LearnerConfig
    from train.learner import Learner

    learner = Learner(tiny_dir, LearnerConfig(optimizer="adamw"), 2)
    plain = tmp_path / "plain"
    plain.mkdir()
    learner.save(plain, {"step": 0})
    assert json.loads((plain / "world.json").read_text()) == {"world": 1, "zero_stage": 0}
    assert learner.load(plain) == {"step": 0}
    with pytest.raises(ValueError, match="written by a ZeRO-3 learner, this learner is plain"):
        learner.load(_checkpoint(tmp_path, 2, 3))


@pytest.mark.slow
def test_a_plain_checkpoint_resumes_at_another_world_size(runs):
    """A 2-rank group loads the 1-rank run's plain checkpoint: every weight as saved (and the 2-rank run's own
    checkpoint holds the 1-rank run's weights, up to the float order above)."""
    import torch
    from safetensors.torch import load_file

    one, two = runs[1]["work"], runs[2]["work"]
    assert runs[2]["resumed_extra"] == {"step": STEPS}
    assert json.loads(Path(one, "world.json").read_text()) == {"world": 1, "zero_stage": 0}
    assert json.loads(Path(two, "world.json").read_text()) == {"world": 2, "zero_stage": 0}
    a, resumed, b = (load_file(f) for f in (f"{one}/model.safetensors", f"{two}/resumed.safetensors",
                                              f"{two}/model.safetensors"))
    assert a.keys() == resumed.keys() == b.keys()
    for k in a:
        assert torch.equal(resumed[k], a[k]), k
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_job(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # skip the slow interpreter/process-group/Ray teardown
