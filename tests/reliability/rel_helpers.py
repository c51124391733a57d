"""Shared by the reliability battery (tests/reliability/test_rel_*.py): run the CLI, kill it, read run folders, and
record what each test survived into a JSON-lines file that ``summarize.py`` turns into the figures of
docs/reliability.md.

Counts go to ``$PIPELINE_REL_COUNTS`` (default ``/tmp/pipeline-reliability/counts.jsonl``), one line per test:
``{"test": ..., "time": ..., "<figure>": n, ...}``; the summary keeps the latest line per test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COUNTS = Path(os.environ.get("PIPELINE_REL_COUNTS", "/tmp/pipeline-reliability/counts.jsonl"))

# `pipeline ...` without the report that `pipeline run` writes at the end (matplotlib: ~20 s per call on a loaded
# 2-core machine, and not what these tests are about); everything else is the real CLI.
_NO_REPORT = ("import sys, pipeline.cli as c; c._after_run = lambda *a, **k: None; "
              "sys.exit(c.main(sys.argv[1:]))")
CLI = [sys.executable, "-c", _NO_REPORT]


def env(**extra) -> dict:
    e = {**os.environ, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    for hook in ("PIPELINE_FAULT", "PIPELINE_STALL"):      # a test sets its own
        e.pop(hook, None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def record(test: str, **counts) -> None:
    COUNTS.parent.mkdir(parents=True, exist_ok=True)
    with open(COUNTS, "a") as f:
        f.write(json.dumps({"test": test, "time": round(time.time(), 3), **counts}) + "\n")


def cli(*args, timeout=300, **env_extra) -> subprocess.CompletedProcess:
    """Run the CLI (no report) to completion; a hang fails the test through ``timeout``."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env(**env_extra))


def _as_from_a_terminal() -> None:
    # SIGINT as a terminal's Ctrl-C finds it. A test run started in the background (`make test &`, nohup) inherits
    # SIGINT ignored; Python then installs no KeyboardInterrupt handler, the CLI and Ray's workers ignore the
    # SIGINT these tests send, and an interrupted run completes with exit 0 instead of 130
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, log: Path, **env_extra) -> subprocess.Popen:
    """Start the CLI in its own session (so that killing its process group takes Ray's processes with it), with
    SIGINT's default disposition whatever the test run inherited (:func:`_as_from_a_terminal`)."""
    f = open(log, "ab")
    return subprocess.Popen([*CLI, *map(str, args)], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env(**env_extra), preexec_fn=_as_from_a_terminal)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    _reap_session(proc.pid)


def _reap_session(sid: int) -> None:
    """SIGKILL any process still in session ``sid`` (Ray daemons that put themselves in another process group)."""
    import psutil

    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid:
                os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.Error, OSError):
            pass


def wait_for(cond, proc: subprocess.Popen | None, timeout: float, what: str, poll: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def lines(path: Path) -> int:
    try:
        return len(Path(path).read_text().splitlines())
    except FileNotFoundError:
        return 0


def metrics(run_dir: Path, sid: str) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / sid / "metrics.jsonl").read_text().splitlines()]


def manifest(run_dir: Path, sid: str) -> dict:
    p = Path(run_dir) / sid / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else {}


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny(name: str = "rel", **sections) -> dict:
    """The smallest useful recipe: 1 domain (math), 1 mode, a tiny model; add grpo/distill via ``sections``."""
    data = {
        "name": name, "seed": 7,
        "ray": {"num_cpus": 2},
        "model": {"tiny": {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
                           "moe_intermediate_size": 64, "num_hidden_layers": 1, "tokenizer_corpus_per_domain": 40}},
        "domains": ["math"], "modes": ["non_think"],
        "tasks": {"math": {"n_train": 40, "n_eval": 2}},
        "learner": {"warmup_steps": 1},
        "sft": {"steps": 12, "batch_size": 4, "max_len": 160, "save_every": 2},
    }
    data.update(sections)
    return data


GRPO = {"modes": ["non_think"], "steps": 4, "group_size": 4, "prompts_per_step": 2, "minibatches": 1,
        "save_every": 1,
        "shaping": {"modes": {m: {"l_max": 12, "l_buffer": 4, "length_cost_per_token": 1e-3, "overlong_weight": 1.0}
                              for m in ("non_think",)}}}
# the student starts from sft.math; one teacher (grpo.math.non_think), a Ray actor
DISTILL = {"student_from": "sft.math", "steps": 4, "prompts_per_step": 2, "save_every": 1,
           "max_tokens": {"non_think": 8}}


def distill_registered() -> bool:
    """Whether pipeline/stages.py registers the distill stage (read, not imported: no torch in the test process)."""
    return "import distill.config" in (ROOT / "pipeline" / "stages.py").read_text()
