"""The Ray runner end to end on a tiny recipe: run, skip what is up to date, re-run what changed, failures,
the lock, and exact resumption after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PIPELINE, ROOT, run_cli, tiny_recipe

pytestmark = pytest.mark.slow


def _status(run_dir):
    r = run_cli("status", run_dir, "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    return {s["id"]: s for s in json.loads(r.stdout)["stages"]}


def test_run_skip_rerun_and_failure(tmp_path):
    recipe, run_dir = tiny_recipe(tmp_path), tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", run_dir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    st = _status(run_dir)
    assert set(st) == {"bootstrap", "sft.math", "sft.code"}
    assert all(s["status"] == "complete" for s in st.values())
    for sid in ("sft.math", "sft.code"):
        m = st[sid]["metrics"]
        dom = sid.split(".")[1]
        assert f"accuracy.{dom}.think_max" in m and f"reward_mean.{dom}.non_think" in m
        assert (run_dir / sid / "final" / "config.json").exists() and (run_dir / sid / "final" / "tokenizer.json").exists()
        rows = [json.loads(x) for x in (run_dir / sid / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows] == list(range(1, 7))
    manifest = json.loads((run_dir / "sft.math" / "manifest.json").read_text())
    assert {"config_hash", "inputs_hash", "started", "finished", "outputs", "metrics", "output_hash",
            "eval_rows"} <= set(manifest)
    assert manifest["eval_rollout"]["engine"] == "hf" and "served" in manifest["eval_rollout"]   # which engine sampled

    # same command again, and with operational changes only (checkpoint cadence and retention, resources,
    # logging): nothing re-runs
    r = run_cli("run", recipe, "--run-dir", run_dir)
    assert r.returncode == 0 and r.stdout.count("up to date") == 3, r.stdout[-2000:]
    r = run_cli("run", recipe, "--run-dir", run_dir, "--set", "sft.save_every=3", "--set", "sft.keep_checkpoints=5",
                "--set", "sft.resources.num_cpus=2", "--set", "logging.tensorboard=true")
    assert r.returncode == 0 and r.stdout.count("up to date") == 3, r.stdout[-2000:]
    assert _status(run_dir)["sft.math"]["finished"] == st["sft.math"]["finished"]

    # a config change re-runs that stage only (beside its output, which the attempt replaces when it completes); a
    # failing stage leaves unrelated ones complete and its own previous output in place, stale, exit 1
    # (sft.code fails mid-way, writing its 2nd checkpoint: an injected ENOSPC, which no preflight can foresee)
    r = run_cli("run", recipe, "--run-dir", run_dir, "--set", "sft.per_domain.math.steps=4",
                "--set", "sft.per_domain.code.steps=8",
                env={**os.environ, "PIPELINE_FAULT": "sft.code.attempt/ckpt/.step_000004.tmp/checksums.json"})
    assert r.returncode == 1, r.stdout[-2000:]
    st2 = _status(run_dir)
    assert st2["bootstrap"]["finished"] == st["bootstrap"]["finished"]
    assert st2["sft.math"]["status"] == "complete" and st2["sft.math"]["finished"] != st["sft.math"]["finished"]
    assert st2["sft.code"]["status"] == "stale" and st2["sft.code"]["finished"] == st["sft.code"]["finished"]
    assert st2["sft.code"]["error"].startswith("attempt failed: OSError") and "No space left" in st2["sft.code"]["error"]
    assert st2["sft.code"]["attempt"]["status"] == "failed"
    assert "FAIL" in r.stdout and "sft.code" in r.stdout
    assert not (run_dir / "sft.math.attempt").exists() and (run_dir / "sft.code.attempt").is_dir()

    # stages prints the graph with status
    r = run_cli("stages", recipe, "--run-dir", run_dir)
    assert "sft.code" in r.stdout and "complete" in r.stdout


def test_lock_refuses_second_run(tmp_path):
    from core.rundir import RunLock

    recipe, run_dir = tiny_recipe(tmp_path), tmp_path / "run"
    with RunLock(run_dir):
        r = run_cli("run", recipe, "--run-dir", run_dir, timeout=120)
    assert r.returncode == 3
    assert "locked" in r.stderr and "Traceback" not in r.stderr


def _losses(run_dir, sid):
    return [json.loads(x) for x in (run_dir / sid / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_during_sft_resumes_exactly(tmp_path):
    # long enough (100 steps) that a loaded machine cannot finish the stage between two polls of the killer
    recipe = tiny_recipe(tmp_path, sft={"steps": 100, "batch_size": 4, "max_len": 160, "save_every": 5},
                         domains=["math"], tasks={"math": {"n_train": 40, "n_eval": 2}},
                         eval={"samples": 1, "pass_k": [1], "max_tokens": {m: 4 for m in ("non_think", "think_high",
                                                                                          "think_max")}})
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    r = run_cli("run", recipe, "--run-dir", ref_dir)
    assert r.returncode == 0, r.stdout[-2000:]

    proc = subprocess.Popen([*PIPELINE, "run", str(recipe), "--run-dir", str(run_dir)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt_log = run_dir / "sft.math" / "ckpt" / "checkpoints.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt_log.exists() and len(ckpt_log.read_text().splitlines()) >= 2):
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run_dir / "sft.math" / "manifest.json").read_text())
    assert manifest["status"] == "running"          # interrupted, not complete
    killed_at = len(_losses(run_dir, "sft.math"))
    assert 10 <= killed_at < 100

    r = run_cli("run", recipe, "--run-dir", run_dir)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "up to date" in r.stdout                 # bootstrap was not re-run
    log = (run_dir / "sft.math" / "log.txt").read_text()
    assert "resumed from step_" in log
    got, ref = _losses(run_dir, "sft.math"), _losses(ref_dir, "sft.math")
    assert [x["step"] for x in got] == list(range(1, 101))  # step counter continues; no duplicate/missing steps
    assert [x["samples_seen"] for x in got] == [x["samples_seen"] for x in ref]
    for a, b in zip(got, ref):
        assert abs(a["loss"] - b["loss"]) <= 1e-6 * max(1.0, abs(b["loss"])), (a["step"], a["loss"], b["loss"])
