"""A training stage with ``learner.ranks: 2`` through the CLI: ``pipeline run recipes/think_max.yaml --only sft.math
--set learner.ranks=2`` runs on a fresh run directory (bootstrap first), its losses match the 1-rank run step for
step, and after a SIGKILL of the whole run (Ray and the rank actors included) the rerun resumes exactly: the same
losses and the same final weights as the uninterrupted 2-rank run."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from rel_helpers import cli, kill_group, lines, metrics, start, wait_for  # noqa: E402

STEPS = 8
SMALL = ["--only", "sft.math", "--set", "sft.init_from=bootstrap", "--set", f"sft.per_domain.math.steps={STEPS}", "--set", "sft.save_every=2",
         "--set", "tasks.math.n_eval=2", "--set", "eval.samples=1", "--set", "eval.pass_k=[1]", "--set", "eval.greedy=false",
         "--set", "eval.engine.kind=hf", "--set", "ray.num_cpus=2"]


def _run(run_dir, ranks, timeout=600):
    r = cli("run", "recipes/think_max.yaml", "--run-dir", run_dir, *SMALL, "--set", f"learner.ranks={ranks}",
            timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in metrics(run_dir, "sft.math") if "loss" in m}


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(next((Path(run_dir) / "sft.math" / "final").glob("*.safetensors"))))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_two_rank_stage_matches_one_rank_and_resumes_exactly_after_sigkill(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    r = _run(two, 2)
    assert "[deps] also running bootstrap" in r.stdout      # a fresh --only runs what it needs first
    _run(one, 1)
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, STEPS + 1)), (l1, l2)
    for s in range(1, STEPS + 1):          # data parallel over the same global batch: the same step
        assert l2[s] == pytest.approx(l1[s], rel=2e-4, abs=1e-5), (s, l1[s], l2[s])

    # SIGKILL the whole 2-rank run after its second checkpoint, then run the same command again
    ck = killed / "sft.math" / "ckpt" / "checkpoints.jsonl"
    proc = start("run", "recipes/think_max.yaml", "--run-dir", killed, *SMALL, "--set", "learner.ranks=2",
                 log=tmp_path / "killed.log")
    try:
        wait_for(lambda: lines(ck) >= 2, proc, 600, "the second checkpoint of sft.math", poll=0.05)
    finally:
        kill_group(proc)
    assert lines(ck) < STEPS // 2 + 1, "the run finished before the kill"
    _run(killed, 2)
    lk = _losses(killed)
    assert sorted(lk) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert lk[s] == pytest.approx(l2[s], rel=1e-6, abs=1e-7), (s, l2[s], lk[s])
    wa, wb = _weights(two), _weights(killed)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=0, msg=k)
