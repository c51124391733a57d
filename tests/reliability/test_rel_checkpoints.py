"""Corrupted checkpoints and failed writes, in process (fast): every corruption of the newest checkpoint(s) is detected
by its checksums and the newest good one is chosen, with a warning per bad one; every injected write failure
(``PIPELINE_FAULT``: ENOSPC) leaves what was written before intact and the run directory resumable. The same, end to
end through `pipeline run` / `pipeline status`, is in test_rel_resume.py.
"""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from core import rundir
from core.checkpoints import Checkpoints
from core.rundir import Manifest, MetricsLog, RunLock, atomic_write_json, atomic_write_text
from rel_helpers import ROOT, cli, record

CORRUPTIONS = ("flip", "truncate", "empty", "append", "delete_file", "stray_file", "delete_checksums",
               "garble_checksums", "edit_checksums")


def _make(stage, step, rng):
    ck = Checkpoints(stage, keep=3)
    tmp = ck.begin(step)
    for name in ("model.safetensors", "optimizer.pt", "extra.json"):
        (tmp / name).write_bytes(rng.randbytes(rng.randint(1, 4000)))
    (tmp / "sub").mkdir()
    (tmp / "sub" / "state.bin").write_bytes(rng.randbytes(rng.randint(1, 500)))
    return ck.commit(tmp, step)


def _corrupt(ckpt, kind, rng):
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in ("checksums.json", "COMMITTED"))
    f = rng.choice(files)
    data = f.read_bytes()
    if kind == "flip":
        i = rng.randrange(len(data))
        f.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    elif kind == "truncate":
        f.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "append":
        f.write_bytes(data + rng.randbytes(rng.randint(1, 64)))
    elif kind == "delete_file":
        f.unlink()
    elif kind == "stray_file":
        (ckpt / f"stray{rng.randrange(100)}.pt").write_bytes(b"x")
    elif kind == "delete_checksums":
        (ckpt / "checksums.json").unlink()
    elif kind == "garble_checksums":
        raw = (ckpt / "checksums.json").read_bytes()
        (ckpt / "checksums.json").write_bytes(raw[: rng.randrange(1, len(raw) - 1)])
    elif kind == "edit_checksums":
        sums = json.loads((ckpt / "checksums.json").read_text())
        k = rng.choice(sorted(sums))
        sums[k] = ("0" if sums[k][0] != "0" else "1") + sums[k][1:]
        (ckpt / "checksums.json").write_text(json.dumps(sums))


def test_every_corruption_is_detected_and_the_newest_good_checkpoint_used(tmp_path):
    rng = random.Random(20261128)
    detected = trials = 0
    for t in range(90):
        stage = tmp_path / f"s{t}"
        ckpts = [_make(stage, step, rng) for step in (2, 4, 6)]
        n_bad = rng.choice([1, 1, 1, 2, 3])                 # the newest 1, 2 or all 3 get corrupted
        kinds = [CORRUPTIONS[(t + i) % len(CORRUPTIONS)] if i == 0 else rng.choice(CORRUPTIONS)
                 for i in range(n_bad)]
        for c, kind in zip(reversed(ckpts), kinds):
            _corrupt(c, kind, rng)
        ck = Checkpoints(stage, keep=3)
        got = ck.latest()
        want = ckpts[-1 - n_bad] if n_bad < 3 else None
        assert got == want, (t, kinds, got, want)
        assert len(ck.warnings) == n_bad, (t, kinds, ck.warnings)
        for c, w in zip(reversed(ckpts), ck.warnings):
            assert c.name in w and "corrupt" in w
        detected += n_bad
        trials += 1
    record("corruption_unit", corruptions_detected=detected, trials=trials, kinds=list(CORRUPTIONS))


@pytest.fixture
def fault(monkeypatch):
    """Set PIPELINE_FAULT for in-process writes (the hit counter is per process: reset it)."""
    def set_(spec):
        rundir._FAULT_HITS.clear()
        monkeypatch.setenv("PIPELINE_FAULT", spec)
    yield set_
    rundir._FAULT_HITS.clear()


def _no_temp_files(folder):
    return not [p for p in folder.rglob(".*.tmp") if p.is_file()]


def test_failed_writes_leave_earlier_outputs_intact_and_resumable(tmp_path, fault, monkeypatch):
    failures = 0
    # atomic writes: the old file stays as it was, no temporary file is left behind
    f = tmp_path / "a" / "manifest.json"
    atomic_write_json(f, {"status": "running", "step": 1})
    fault("a/manifest.json")
    with pytest.raises(OSError) as e:
        Manifest(tmp_path / "a").update(status="complete")
    assert e.value.errno == errno.ENOSPC
    failures += 1
    assert json.loads(f.read_text()) == {"status": "running", "step": 1} and _no_temp_files(tmp_path / "a")
    monkeypatch.delenv("PIPELINE_FAULT")
    Manifest(tmp_path / "a").update(status="complete")                    # and the next write works
    assert json.loads(f.read_text())["status"] == "complete"

    # a checkpoint whose checksums (or commit marker) cannot be written is never committed; the previous ones stay
    rng = random.Random(1)
    stage = tmp_path / "stage"
    _make(stage, 2, rng), _make(stage, 4, rng)
    for target in ("checksums.json", "COMMITTED"):
        fault(f".step_000006.tmp/{target}")
        ck = Checkpoints(stage, keep=3)
        tmp = ck.begin(6)
        (tmp / "model.safetensors").write_bytes(b"weights")
        with pytest.raises(OSError):
            ck.commit(tmp, 6)
        failures += 1
        ck = Checkpoints(stage, keep=3)
        assert ck.latest().name == "step_000004" and not ck.warnings
        assert all(ck.verify(stage / "ckpt" / s) is None for s in ("step_000002", "step_000004"))
        assert not (stage / "ckpt" / "step_000006").exists()
    monkeypatch.delenv("PIPELINE_FAULT")
    ck = Checkpoints(stage, keep=3)                                        # resumed: the retry commits
    tmp = ck.begin(6)
    (tmp / "model.safetensors").write_bytes(b"weights")
    ck.commit(tmp, 6)
    assert Checkpoints(stage).latest().name == "step_000006"

    # metrics.jsonl: a failed append leaves a torn line; the rows before it survive; resume truncates and goes on
    m = MetricsLog(tmp_path / "m" / "metrics.jsonl")
    fault("m/metrics.jsonl@4")
    with pytest.raises(OSError):
        for step in range(1, 7):
            m.log(step, loss=1.0 / step, samples_seen=4 * step)
    failures += 1
    assert [r["step"] for r in m.rows()] == [1, 2, 3]
    monkeypatch.delenv("PIPELINE_FAULT")
    m.truncate_after(2)                                                    # resume from a checkpoint at step 2
    for step in range(3, 7):
        m.log(step, loss=1.0 / step, samples_seen=4 * step)
    rows = m.rows()
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["samples_seen"] for r in rows] == [4, 8, 12, 16, 20, 24]

    # a text file: the same
    g = tmp_path / "recipe.yaml"
    atomic_write_text(g, "name: a\n")
    fault("recipe.yaml")
    with pytest.raises(OSError):
        atomic_write_text(g, "name: b\n" * 1000)
    failures += 1
    assert g.read_text() == "name: a\n" and _no_temp_files(tmp_path)
    record("write_failures_unit", write_failures=failures)


def test_run_with_a_full_disk_is_one_line_exit_3(tmp_path):
    """The driver cannot write the run directory (ENOSPC on recipe.yaml): one line, exit 3, no traceback."""
    from conftest import tiny_recipe

    r = cli("run", tiny_recipe(tmp_path), "--run-dir", tmp_path / "run", timeout=120, PIPELINE_FAULT="recipe.yaml")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run" / "recipe.yaml").exists()
    record("write_failures_driver", write_failures=1)


def test_second_run_on_a_locked_run_dir_is_refused(tmp_path):
    """Another process holds the run directory: `pipeline run` exits 3 naming it; once the holder is killed, the
    lock is free again (the kernel releases it), stale .lock file or not."""
    from conftest import tiny_recipe

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from core.rundir import RunLock\n"
                               f"with RunLock({str(run_dir)!r}):\n    print('locked', flush=True); time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = cli("run", tiny_recipe(tmp_path), "--run-dir", run_dir, timeout=120)
        assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
        assert "locked" in r.stderr and f"pid {holder.pid}" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and time.monotonic() - t0 < 60
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (run_dir / ".lock").exists()
    with RunLock(run_dir):
        pass
    record("concurrency", concurrent_runs_refused=1)


def test_stall_holds_the_first_matching_write_only(tmp_path, monkeypatch):
    """PIPELINE_STALL (the kill-point hook of test_rel_resume) delays the first write to a matching path, once."""
    rundir._FAULT_HITS.clear()
    monkeypatch.setenv("PIPELINE_STALL", "b/manifest.json=0.5")
    t0 = time.monotonic()
    atomic_write_json(tmp_path / "a" / "manifest.json", {"x": 1})                 # not matching: no wait
    t1 = time.monotonic()
    atomic_write_json(tmp_path / "b" / "manifest.json", {"x": 2})                 # the first match waits
    t2 = time.monotonic()
    atomic_write_json(tmp_path / "b" / "manifest.json", {"x": 3})                 # ... once
    t3 = time.monotonic()
    rundir._FAULT_HITS.clear()
    assert t1 - t0 < 0.4 and t2 - t1 >= 0.5 and t3 - t2 < 0.4, (t1 - t0, t2 - t1, t3 - t2)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text()) == {"x": 3}   # the write itself went through
