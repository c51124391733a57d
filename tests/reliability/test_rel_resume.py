"""One run directory of a tiny SFT -> GRPO -> distill recipe through seven `pipeline run`s, each ended by a fault
drawn by a seeded RNG; the last run completes and everything equals an uninterrupted reference run. Each SIGKILL
"after the k-th checkpoint" lands while the stage runs: the write of the checkpoint after it is held
(``PIPELINE_STALL``), as the tiny model's steps can be faster than the test can poll.

1. SIGKILL of the driver's process group (Ray included) after the k-th SFT checkpoint -- meanwhile a second
   `pipeline run` on the locked directory exits 3 naming the holder; then the newest SFT checkpoint gets bytes flipped.
2. SFT falls back to the previous checkpoint (checksums; a warning in the manifest, `[warn]` in the run output and in
   `pipeline status`) and completes; writing GRPO's k-th checkpoint fails with an injected ENOSPC (``PIPELINE_FAULT``):
   exit 1 with a one-line ``[FAIL]``, the earlier checkpoints intact.
3. SIGKILL after GRPO's next checkpoint; then that checkpoint is truncated.
4. GRPO falls back and completes; SIGKILL after the k-th distill checkpoint.
5. A distill teacher actor (a Ray actor process) is SIGKILLed mid-stage: the stage stops with a one-line error and a
   resumable state (or recovers) -- never hangs.
6. SIGKILL after a random delay from launch.
7. The last run completes.

After every run the stages that were complete keep their manifest ``output_hash``/``finished`` (never re-run); at the end
``metrics.jsonl`` of every trained stage has steps 1..N once each, and the consumed-sample counts (``samples_seen``;
distill: the running sum of ``sequences``) and the losses equal the reference run's: nothing replayed, nothing skipped.
"""
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import psutil
import pytest

from rel_helpers import (DISTILL, GRPO, cli, distill_registered, kill_group, lines, manifest, metrics, record,
                         start, tiny, wait_for, write_recipe)

pytestmark = pytest.mark.slow

HAS_DISTILL = distill_registered()
SFT, GRPO_ID = "sft.math", "grpo.math.non_think"
TRAINED = [SFT, GRPO_ID] + (["distill"] if HAS_DISTILL else [])
STAGES = ["bootstrap"] + TRAINED
STEPS = {SFT: 12, GRPO_ID: 4, "distill": 4}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel_resume")
    sections = {"grpo": GRPO} | ({"distill": DISTILL} if HAS_DISTILL else {})
    return write_recipe(d / "relkill.yaml", tiny("relkill", **sections))


@pytest.fixture(scope="module")
def ref(recipe, tmp_path_factory):
    """The uninterrupted reference run."""
    run_dir = tmp_path_factory.mktemp("rel_ref") / "run"
    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir


def consumed(rows: list[dict], sid: str) -> list:
    """The consumed-sample count after each step."""
    if sid == "distill":  # distill logs the sequences of each step; their running sum is its samples_seen
        out, n = [], 0
        for r in rows:
            n += r["sequences"]
            out.append(n)
        return out
    return [r["samples_seen"] for r in rows]


def assert_same_as_ref(run_dir, ref_dir, stages=TRAINED):
    for sid in stages:
        got, want = metrics(run_dir, sid), metrics(ref_dir, sid)
        assert [r["step"] for r in got] == list(range(1, STEPS[sid] + 1)), (sid, [r["step"] for r in got])
        assert consumed(got, sid) == consumed(want, sid), sid
        for a, b in zip(got, want):
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(b["loss"])), (sid, a["step"], a["loss"], b["loss"])


def running_stage(run_dir):
    """(stage, last step logged) of the stage that was running when the run died, or None."""
    for sid in TRAINED:
        m = manifest(run_dir, sid)
        if m.get("status") == "running":
            p = run_dir / sid / "metrics.jsonl"
            return sid, lines(p)
    return None


def _teacher_pids(session):
    """Teacher actor processes (Ray titles them ``ray::TeacherWorker...``) in the run's session."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == session and "TeacherWorker" in " ".join(p.info["cmdline"] or []):
                out.append(p.pid)
        except (psutil.Error, OSError):
            pass
    return out


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip(f: Path, rng) -> None:
    data = bytearray(f.read_bytes())
    for i in rng.sample(range(len(data)), 3):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))


def _truncate(f: Path, rng) -> None:
    f.write_bytes(f.read_bytes()[: rng.randrange(f.stat().st_size)])


def test_kills_dead_teacher_write_failures_and_corruption_resume_exactly(recipe, ref, tmp_path):
    """One run directory through seven `pipeline run`s; the events are drawn by a seeded RNG."""
    from core.checkpoints import Checkpoints

    rng = random.Random(20261128)
    run_dir, log = tmp_path / "run", tmp_path / "runs.log"
    k_sft = rng.randint(1, 4)           # SFT: 6 checkpoints (12 steps, every 2); kill after the k-th
    k_grpo = rng.randint(2, 3)          # GRPO: 4 checkpoints; writing the one of step k_grpo fails (ENOSPC)
    k_dist = rng.randint(1, 2)          # distill: 4 checkpoints; kill after the k-th
    delay = round(rng.uniform(2.0, 8.0), 2)
    events, corrupt, finals = [], {}, {}

    def go(what, until, **env):
        """One `pipeline run` with ``until(proc)`` deciding when (and how) it ends; checks nothing complete re-ran."""
        before = {s: manifest(run_dir, s) for s in STAGES}
        proc = start("run", recipe, "--run-dir", run_dir, log=log, **env)
        try:
            info = until(proc)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        for s, m in before.items():
            if m.get("status") == "complete":
                now = manifest(run_dir, s)
                assert (now["output_hash"], now["finished"]) == (m["output_hash"], m["finished"]), (what, s)
        events.append({"event": what, **(info or {})})

    def after_checkpoints(sid, k, jitter, base=None):
        """SIGKILL somewhere after this run's k-th checkpoint of ``sid``, the stage still running: the run was started
        with the next checkpoint's write held (``hold``), since a tiny stage's remaining steps can take less than
        the jitter (three steps and the stage's end inside one second were seen). ``base``: the checkpoints the log
        held when the run started (default: when ``until`` is called)."""
        def until(proc):
            ck = run_dir / sid / "ckpt" / "checkpoints.jsonl"
            start_count = lines(ck) if base is None else base
            wait_for(lambda: lines(ck) >= start_count + k, proc, 400, f"checkpoint {k} of {sid}", poll=0.02)
            time.sleep(rng.uniform(0.0, jitter))                       # somewhere in the next step
            assert proc.poll() is None, f"the run ended before the kill point in {sid}"
            assert manifest(run_dir, sid)["status"] == "running", manifest(run_dir, sid)
            kill_group(proc)
            return {"running": running_stage(run_dir)}
        return until

    def hold(sid, step):
        """PIPELINE_STALL: the write of ``sid``'s checkpoint of ``step`` waits 120 s (the kill comes first)."""
        return {"PIPELINE_STALL": f"{sid}/ckpt/.step_{step:06d}.tmp/checksums.json=120"}

    def newest(sid):
        return sorted(p for p in (run_dir / sid / "ckpt").glob("step_*") if (p / "COMMITTED").exists())[-1]

    # 1. SIGKILL after the k-th SFT checkpoint; meanwhile a second run on the locked directory is refused
    def sft_kill(proc):
        wait_for(lambda: (run_dir / ".lock").exists() and (run_dir / ".lock").read_text().strip(), proc, 120,
                 "the run lock")
        r = cli("run", recipe, "--run-dir", run_dir, timeout=120)
        assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
        assert "locked" in r.stderr and str(proc.pid) in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert proc.poll() is None
        return after_checkpoints(SFT, k_sft, 0.03, base=0)(proc)   # the first run: none before
    go(f"driver SIGKILL after SFT checkpoint {k_sft}", sft_kill, **hold(SFT, 2 * k_sft + 2))
    assert manifest(run_dir, SFT)["status"] == "running"
    corrupt[SFT] = newest(SFT).name                                    # ... and its newest checkpoint is corrupted
    _flip(newest(SFT) / "model.safetensors", rng)
    assert Checkpoints(run_dir / SFT).verify(newest(SFT)) is not None

    # 2. SFT resumes from the previous checkpoint (warning); writing GRPO's checkpoint of step k_grpo fails
    def write_failure(proc):
        rc = proc.wait(timeout=400)
        assert rc == 1, log.read_text()[-3000:]
        return {"rc": rc}
    go(f"ENOSPC writing GRPO checkpoint {k_grpo}", write_failure,
       PIPELINE_FAULT=f"{GRPO_ID}/ckpt/.step_{k_grpo:06d}.tmp/checksums.json")
    out = log.read_text()
    assert f"[FAIL] {GRPO_ID}: OSError: [Errno 28] No space left on device" in out, out[-3000:]
    m = manifest(run_dir, GRPO_ID)
    assert m["status"] == "failed" and "No space left" in m["error"] and "\n" not in m["error"]
    committed = sorted(p.name for p in (run_dir / GRPO_ID / "ckpt").glob("step_*") if (p / "COMMITTED").exists())
    assert committed and committed[-1] == f"step_{k_grpo - 1:06d}", committed     # the earlier ones are intact
    assert all(Checkpoints(run_dir / GRPO_ID).verify(run_dir / GRPO_ID / "ckpt" / c) is None for c in committed)
    m = manifest(run_dir, SFT)
    assert m["status"] == "complete" and any(corrupt[SFT] in w and "checksum mismatch" in w for w in m["warnings"])
    st = cli("status", run_dir, timeout=120)
    assert st.returncode == 0 and "warning: checkpoint" in st.stdout and corrupt[SFT] in st.stdout, st.stdout
    finals[SFT] = _sha(run_dir / SFT / "final")

    # 3. GRPO resumes; SIGKILL after its next checkpoint (the one after it is held); that checkpoint is truncated
    go(f"driver SIGKILL after GRPO checkpoint {k_grpo}", after_checkpoints(GRPO_ID, 1, 0.3), **hold(GRPO_ID, k_grpo + 1))
    assert newest(GRPO_ID).name == f"step_{k_grpo:06d}"
    corrupt[GRPO_ID] = newest(GRPO_ID).name
    _truncate(newest(GRPO_ID) / "optimizer.pt", rng)

    if HAS_DISTILL:
        # 4. GRPO falls back and completes; SIGKILL after the k-th distill checkpoint
        go(f"driver SIGKILL after distill checkpoint {k_dist}", after_checkpoints("distill", k_dist, 0.3),
           **hold("distill", k_dist + 1))
        m = manifest(run_dir, GRPO_ID)
        assert m["status"] == "complete" and any(corrupt[GRPO_ID] in w for w in m.get("warnings", [])), m

        # 5. a teacher actor process dies mid-stage: recovered, or a one-line failure -- never a hang
        def teacher_death(proc):
            pids = wait_for(lambda: _teacher_pids(proc.pid), proc, 300, "a teacher actor process")
            time.sleep(rng.uniform(0.0, 1.0))
            os.kill(rng.choice(pids), signal.SIGKILL)
            rc = proc.wait(timeout=300)
            if rc != 0:
                out = log.read_text()[-20000:]
                assert rc == 1 and "[FAIL] distill:" in out, out[-3000:]
                m = manifest(run_dir, "distill")
                assert m["status"] == "failed" and m["error"] and "\n" not in m["error"], m
            return {"rc": rc, "error": manifest(run_dir, "distill").get("error")}
        go("teacher actor SIGKILL", teacher_death)

    # 6. SIGKILL after a random delay from launch
    def delayed(proc):
        time.sleep(delay)
        ended = proc.poll() is not None
        kill_group(proc)
        return {"after_s": delay, "running": running_stage(run_dir), "ended_before": ended}
    go(f"driver SIGKILL {delay}s after launch", delayed)

    # 7. the last run completes; nothing complete re-runs; everything equals the uninterrupted run
    before = {s: manifest(run_dir, s) for s in STAGES}
    r = cli("run", recipe, "--run-dir", run_dir, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for s, m in before.items():
        if m.get("status") == "complete":
            assert manifest(run_dir, s)["finished"] == m["finished"] and f"[done] {s}: up to date" in r.stdout, s
    assert all(manifest(run_dir, s)["status"] == "complete" for s in STAGES)
    assert _sha(run_dir / SFT / "final") == finals[SFT]
    assert_same_as_ref(run_dir, ref)
    resumed = [s for s in TRAINED if "resumed from step_" in (run_dir / s / "log.txt").read_text()]
    assert SFT in resumed and GRPO_ID in resumed, resumed
    js = {x["id"]: x for x in json.loads(cli("status", run_dir, "--json", timeout=120).stdout)["stages"]}
    assert all(any(c in w for w in js[s]["warnings"]) for s, c in corrupt.items()), js
    print(json.dumps(events, indent=1))
    kills = [e for e in events if e["event"].startswith("driver") and not e.get("ended_before")]   # landed in a live run
    record("resume_e2e", kill_points=len(kills), stage_kinds=TRAINED, events=events, resumed=resumed,
           teacher_actor_deaths=int(HAS_DISTILL), write_failures=1, corruptions_detected=len(corrupt),
           corruptions=[f"{s}/{c}" for s, c in corrupt.items()], concurrent_runs_refused=1,
           steps_checked=sum(STEPS[s] for s in TRAINED), lost_or_replayed=0)
