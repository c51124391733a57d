"""Verifier failures are never a silent 0: each site where the verifier itself fails (a worker that dies under a
job twice, a pool that cannot serve, a worker that cannot read its job, the code sandbox lost after the stage's
start check) gives a verdict flagged ``verifier_error`` -- told apart from a genuine wrong answer -- which the stage
counts (``count_unscored``) and which stops it past the recipe's limit (``check_reward_errors``)."""
import os
import signal
import threading
import time

import pytest

from rewards import pool as pool_mod
from rewards.base import score
from rewards.pool import WorkerPool
from rewards.reward_errors import RewardErrorsExceeded, check_reward_errors
from rewards.verdict import Verdict, count_unscored

MATH = {"domain": "math", "completion": "The answer is \\boxed{4}", "sample": {"answer": "4"}, "mode": "non_think"}
WRONG = {**MATH, "completion": "The answer is \\boxed{5}"}
CODE = {"prompt": "def add(a, b):\n", "entry_point": "add",
        "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "timeout_s": 10}
DEFAULT = {"first_step": 0, "max_fraction": 0.05}


def _fails(verdicts, step=0, **limits) -> str:
    """The one line the stage would fail with on these verdicts (``""``: it goes on)."""
    n, why = count_unscored(verdicts)
    try:
        check_reward_errors(n, len(verdicts), step, **{**DEFAULT, **limits}, first_reason=why, where="grpo.x.y")
    except RewardErrorsExceeded as e:
        assert "\n" not in str(e)
        return str(e)
    return ""


# ---- the threshold -----------------------------------------------------------------------------------------------
def test_threshold_any_error_in_the_first_step_then_a_fraction():
    bad, good = Verdict(0.0, {"verifier_error": "pool error: X"}), Verdict(0.0, {"error": "answer_mismatch"})
    assert not good.unscored and bad.unscored
    assert _fails([good] * 64) == "" and _fails([good] * 64, step=5) == ""       # wrong answers are not errors
    msg = _fails([bad] + [good] * 63)
    assert msg.startswith("grpo.x.y step 0: 1 of 64 rewards were verifier failures") and "pool error: X" in msg
    assert "reward_errors.first_step" in msg
    assert _fails([bad] + [good] * 63, first_step=1) == ""
    assert _fails([bad] * 3 + [good] * 61, step=4) == ""                          # 4.7% <= 5%
    msg = _fails([bad] * 4 + [good] * 60, step=4)                                  # 6.25% > 5%
    assert "step 4: 4 of 64" in msg and "reward_errors.max_fraction" in msg
    assert _fails([bad] * 64, step=4, max_fraction=1.0) == ""


# ---- the worker pool (math, instruct, agent) ---------------------------------------------------------------------
@pytest.fixture
def one_worker():
    p = WorkerPool(1)
    yield p
    p.close()


def test_a_worker_that_dies_under_a_job_twice_is_a_counted_failure(one_worker, monkeypatch):
    ok = one_worker.run(MATH, 20.0)
    wrong = one_worker.run(WRONG, 20.0)
    assert ok.score == 1.0 and not ok.unscored and wrong.score == 0.0 and not wrong.unscored
    real_send = pool_mod._Worker.send

    def send_and_die(self, obj):                   # the worker is killed from outside while it holds the job
        sent = real_send(self, obj)
        os.kill(self.proc.pid, signal.SIGKILL)
        return sent

    monkeypatch.setattr(pool_mod._Worker, "send", send_and_die)
    v = one_worker.run(MATH, 20.0)
    assert v.score == 0.0 and v.unscored and v.details["verifier_error"].startswith("worker crashed"), v
    assert one_worker.replaced == 2
    assert "worker crashed" in _fails([v, ok, wrong])
    monkeypatch.setattr(pool_mod._Worker, "send", real_send)
    assert one_worker.run(MATH, 20.0).score == 1.0                                 # the pool recovers


def test_a_pool_that_cannot_serve_is_a_counted_failure(one_worker, monkeypatch):
    def never_ready(self):
        raise RuntimeError("verifier worker did not start")

    monkeypatch.setattr(pool_mod._Worker, "wait_ready", never_ready)
    v = one_worker.run(MATH, 20.0)
    assert v.score == 0.0 and v.unscored, v
    assert v.details["verifier_error"] == "pool error: RuntimeError: verifier worker did not start"
    assert "pool error" in _fails([v]) and _fails([v], step=3, max_fraction=1.0) == ""


def test_a_job_the_worker_cannot_read_is_a_counted_failure(one_worker):
    v = one_worker.run({"domain": "math", "mode": "non_think"}, 20.0)        # no completion: the worker's own error
    assert v.score == 0.0 and v.unscored and v.details["verifier_error"] == "worker error: KeyError", v
    assert "worker error: KeyError" in _fails([v])


def test_a_verifier_that_raises_is_a_counted_failure(monkeypatch):
    from rewards import base

    def broken(completion, sample, mode):
        raise ZeroDivisionError("bug")

    monkeypatch.setitem(base.VERIFIERS, "boom", base._Entry(broken, "inline"))
    monkeypatch.setitem(base._MODULES, "boom", "rewards.math_verifier")
    v = base.score_batch("boom", ["x"], [{}], "non_think")[0]
    assert v.unscored and v.details["verifier_error"] == "verifier error: ZeroDivisionError: bug", v


# ---- the code sandbox --------------------------------------------------------------------------------------------
@pytest.fixture
def sandbox(monkeypatch):
    from rewards import sandbox as sb

    st = sb.sandbox_status()
    if st.startswith("unavailable"):
        pytest.skip(st)
    p = sb.SandboxPool(1)
    monkeypatch.setattr(sb, "get_pool", lambda workers=None: p)       # what rewards.code scores with
    yield p
    p.close()


def test_the_sandbox_lost_after_the_start_check_is_a_counted_failure(sandbox):
    good = score("code", "    return a + b\n", CODE, "non_think")
    wrong = score("code", "    return a - b\n", CODE, "non_think")
    assert good.score == 1.0 and not good.unscored and wrong.score == 0.0 and not wrong.unscored, (good, wrong)
    z = sandbox._all[0]
    killer = threading.Timer(0.5, lambda: os.killpg(z.proc.pid, signal.SIGKILL))    # the zygote dies mid-test
    killer.start()
    t0 = time.monotonic()
    lost = score("code", "    import time\n    time.sleep(5)\n    return a + b\n", CODE, "non_think")
    killer.join()
    assert time.monotonic() - t0 < 5
    assert lost.score == 0.0 and lost.unscored and lost.details["verifier_error"] == "sandbox_error: zygote lost", lost
    assert "sandbox_error: zygote lost" in _fails([lost, good, wrong])
    assert score("code", "    return a + b\n", CODE, "non_think").score == 1.0   # a fresh zygote takes over


def test_a_sandbox_that_cannot_restart_is_a_counted_failure(sandbox, monkeypatch):
    from rewards import sandbox as sb

    assert score("code", "    return a + b\n", CODE, "non_think").score == 1.0
    sandbox._all[0].kill()                                                   # lost, and no new zygote can start

    def refused(*a, **k):
        raise sb.SandboxUnavailable("unshare(CLONE_NEWNS): EPERM")

    monkeypatch.setattr(sb, "Zygote", refused)
    v = score("code", "    return a + b\n", CODE, "non_think")
    assert v.score == 0.0 and v.unscored, v
    assert v.details["verifier_error"] == "sandbox_unavailable: unshare(CLONE_NEWNS): EPERM"
    assert "sandbox_unavailable" in _fails([v] + [score("code", "    return 0\n", CODE, "non_think")])


def test_pipeline_reward_counts_verifier_failures(tmp_path, monkeypatch, capsys):
    import json

    from rewards.cli import main

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"completion": c, "answer": "4"}) + "\n" for c in ("\\boxed{4}", "\\boxed{5}")))
    assert main(["math", "--input", str(inp), "--output", str(tmp_path / "ok.jsonl"), "--workers", "1"]) == 0
    ok = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert ok["reward_errors"] == 0 and ok["mean_reward"] == 0.5, ok

    def never_ready(self):
        raise RuntimeError("verifier worker did not start")

    monkeypatch.setattr(pool_mod._Worker, "wait_ready", never_ready)
    assert main(["math", "--input", str(inp), "--output", str(tmp_path / "bad.jsonl"), "--workers", "1"]) == 0
    bad = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert bad["reward_errors"] == 2 and bad["errors"] == 2, bad
    rows = [json.loads(x) for x in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert all(r["details"]["verifier_error"].startswith("pool error") for r in rows), rows
