"""A finished run survives a bad edit (issue 27, done-when (b)): on a finished bootstrap -> base -> sft.math run,

- an edited setting whose stage fails mid-way (an injected ENOSPC when the attempt writes its 2nd checkpoint), and
- an edited setting interrupted by SIGINT (Ctrl-C) mid-stage,

each followed by the original recipe again, which re-runs nothing and leaves every file of the run directory byte
for byte as before. Then the interrupted edit resumes from its attempt's own checkpoints and completes (replacing
the output), and the original recipe again restores the earlier output from the run cache, byte for byte, running
no stage.

Compared: every file under the run directory except ``.lock`` (the pid of the last run), ``<stage>.attempt/`` (the
edited recipe's attempt, kept to be resumed) and ``.cache/`` (the run cache); `pipeline run` is called without
writing the report (``report/``), as in tests/reliability.
"""
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from rel_helpers import cli, start, tiny, wait_for, write_recipe  # noqa: E402

pytestmark = pytest.mark.slow

BASE = {"steps": 4, "batch_size": 4, "max_len": 160, "save_every": 2}
SFT = {"steps": 6, "batch_size": 4, "max_len": 160, "save_every": 2, "init_from": "base"}
STAGES = ("bootstrap", "base", "sft.math")
IGNORED_TOP = {".lock", ".cache"}
RECIPE_FILES = ("recipe.yaml", "hashes.json")      # the recipe of the last run: the edited one after an edited run


def tree(run_dir: Path) -> dict[str, str]:
    out = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and rel.parts[0] not in IGNORED_TOP and not rel.parts[0].endswith(".attempt"):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def outputs(run_dir: Path) -> dict[str, str]:
    return {k: v for k, v in tree(run_dir).items() if k not in RECIPE_FILES}


def status(run_dir) -> dict:
    r = cli("status", run_dir, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    return {s["id"]: s for s in json.loads(r.stdout)["stages"]}


def assert_nothing_ran(r):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[start]" not in r.stdout, r.stdout[-3000:]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("attempts")
    recipe = write_recipe(d / "att.yaml", tiny("att", base=BASE, sft=SFT))
    run_dir = d / "finished"
    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert all(s["status"] == "complete" for s in status(run_dir).values())
    return recipe, run_dir


def _copy(finished, tmp_path):
    recipe, src = finished
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir, symlinks=True)
    return recipe, run_dir, tree(run_dir)


def test_failed_edit_keeps_outputs_then_original_reruns_nothing(finished, tmp_path):
    recipe, run_dir, before = _copy(finished, tmp_path)
    old = json.loads((run_dir / "sft.math" / "manifest.json").read_text())

    # base.steps 4 -> 6: base re-runs beside its output and fails writing its 2nd checkpoint (after step 4)
    r = cli("run", recipe, "--run-dir", run_dir, "--set", "base.steps=6", timeout=600,
            PIPELINE_FAULT="base.attempt/ckpt/.step_000004.tmp/checksums.json")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[FAIL] base" in r.stdout and "previous output is kept" in r.stdout
    assert "[skip] sft.math: a dependency failed" in r.stdout
    att = json.loads((run_dir / "base.attempt" / "manifest.json").read_text())
    assert att["status"] == "failed" and "No space left" in att["error"]
    assert len((run_dir / "base.attempt" / "metrics.jsonl").read_text().splitlines()) >= 3   # failed mid-way
    assert outputs(run_dir) == {k: v for k, v in before.items() if k not in RECIPE_FILES}   # only the recipe changed
    assert json.loads((run_dir / "sft.math" / "manifest.json").read_text()) == old      # not written over
    st = status(run_dir)
    assert st["bootstrap"]["status"] == "complete"
    assert st["base"]["status"] == "stale" and "attempt failed" in st["base"]["error"] \
        and "No space left" in st["base"]["error"], st["base"]
    assert st["sft.math"]["status"] == "skipped" and "a dependency failed (base)" in st["sft.math"]["error"]

    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert_nothing_ran(r)
    assert r.stdout.count("up to date") == len(STAGES)
    assert tree(run_dir) == before
    assert all(s["status"] == "complete" for s in status(run_dir).values())


def test_interrupted_edit_keeps_outputs_resumes_and_reverting_restores_from_cache(finished, tmp_path):
    recipe, run_dir, before = _copy(finished, tmp_path)

    # sft.steps 6 -> 300: Ctrl-C (SIGINT to the run's process group) once the attempt has committed a checkpoint,
    # while it is still running (300 steps: ~10 s of the tiny model). `start` gives the run SIGINT's default
    # disposition: from a test run started in the background it inherited SIGINT ignored and ran to exit 0
    n = 300
    edit = ("--set", f"sft.steps={n}")
    proc = start("run", recipe, "--run-dir", run_dir, *edit, log=tmp_path / "edit.log")
    ckpts = run_dir / "sft.math.attempt" / "ckpt" / "checkpoints.jsonl"
    try:
        wait_for(lambda: ckpts.exists() and len(ckpts.read_text().splitlines()) >= 1, proc, 300,
                 "the attempt's first checkpoint")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (tmp_path / "edit.log").read_text()[-3000:]
    assert "interrupted" in (tmp_path / "edit.log").read_text()
    time.sleep(1)
    assert outputs(run_dir) == {k: v for k, v in before.items() if k not in RECIPE_FILES}
    st = status(run_dir)
    assert st["sft.math"]["status"] == "stale" and "attempt interrupted" in st["sft.math"]["error"], st["sft.math"]

    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert_nothing_ran(r)
    assert tree(run_dir) == before

    # the edit again: the attempt resumes from its own checkpoints, completes and replaces the output
    r = cli("run", recipe, "--run-dir", run_dir, *edit, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "[attempt] sft.math" in r.stdout and "resuming" in r.stdout
    assert "resumed from step_" in (run_dir / "sft.math" / "log.txt").read_text()
    steps = [json.loads(x)["step"] for x in (run_dir / "sft.math" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, n + 1))
    assert not (run_dir / "sft.math.attempt").exists()
    assert all(s["status"] == "complete" for s in status(run_dir).values())

    # reverting the edit: the earlier output comes back from the run cache, no stage runs
    t0 = time.time()
    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert_nothing_ran(r)
    assert "[done] sft.math: restored from the run cache" in r.stdout
    assert tree(run_dir) == before, "reverting did not restore the run byte for byte"
    print(f"revert took {time.time() - t0:.1f}s")

    # gc with a zero budget empties the cache; the outputs stay
    r = cli("gc", run_dir, "--keep", "0", timeout=120)
    assert r.returncode == 0 and "removed 1 cache entry" in r.stdout, r.stdout + r.stderr
    assert tree(run_dir) == before and not any((run_dir / ".cache").rglob("manifest.json"))
