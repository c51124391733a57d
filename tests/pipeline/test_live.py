"""The live view: plain progress lines without a terminal (no escape codes), a rich table on one; progress, ETA and
key metric from a stage's metrics.jsonl."""
import io
import json
import time
from pathlib import Path

from pipeline.graph import build_graph
from pipeline.live import LiveView, stage_progress
from pipeline.recipe import Recipe


def _graph():
    return build_graph(Recipe(name="live", domains=["math", "code"], sft={"steps": 10}, eval={}))


def _metrics(run_dir: Path, sid: str, steps: int, t_end: float):
    d = run_dir / sid
    d.mkdir(parents=True, exist_ok=True)
    rows = [{"step": s, "time": t_end - (steps - s), "loss": 2.0 / s} for s in range(1, steps + 1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_stage_progress_eta_and_metric(tmp_path):
    spec = {s.id: s for s in _graph()}["sft.math"]
    _metrics(tmp_path, "sft.math", 4, time.time())
    p = stage_progress(tmp_path, spec)
    assert p["step"] == 4 and p["total"] == 10 and p["metric"] == "loss" and p["value"] == 0.5
    assert 4 <= p["eta_s"] <= 6.5                    # one step per second, six to go
    assert stage_progress(tmp_path, {s.id: s for s in _graph()}["sft.code"])["step"] is None
    _metrics(tmp_path, "sft.math.attempt", 2, time.time())     # a re-run beside the finished output: its progress
    assert stage_progress(tmp_path, spec)["step"] == 2


def test_plain_lines_without_a_terminal(tmp_path):
    buf = io.StringIO()                              # not a tty
    _metrics(tmp_path, "sft.math", 3, time.time())
    with LiveView(_graph(), tmp_path, stream=buf, plain_every=0) as live:
        assert not live.terminal and live.interval >= 1
        live.echo("[start] sft.math (sft; 1 CPU)")
        live.tick({"bootstrap": "complete"}, ["sft.math", "sft.code"])
    out = buf.getvalue()
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "[start] sft.math (sft; 1 CPU)"
    assert lines[1].startswith("[progress] sft.math 3/10 (30%) eta ") and "loss=0.6667" in lines[1]
    assert lines[2].startswith("[progress] sft.code starting")


def test_plain_lines_are_rate_limited(tmp_path):
    buf = io.StringIO()
    live = LiveView(_graph(), tmp_path, stream=buf, plain_every=3600)
    for _ in range(5):
        live.tick({}, ["bootstrap"])
    assert buf.getvalue().count("[progress]") == 1


def test_rich_table_on_a_terminal(tmp_path):
    buf = io.StringIO()
    _metrics(tmp_path, "sft.math", 5, time.time())
    with LiveView(_graph(), tmp_path, stream=buf, terminal=True) as live:
        live.echo("[start] sft.math")
        live.tick({"bootstrap": "complete"}, ["sft.math"])
    out = buf.getvalue()
    assert "\x1b[" in out and "[start] sft.math" in out
    for text in ("stage", "status", "bootstrap", "complete", "running", "5/10", "loss=0.4", "pending", "eval"):
        assert text in out, text
