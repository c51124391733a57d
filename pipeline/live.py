"""The live view of `pipeline run`: what is running, how far along, how fast, and how well.

On a terminal: a `rich` table redrawn a few times a second — every stage of the graph in run order with its status,
and for each running stage step/total with a bar, its ETA and its key metric (SFT loss, GRPO reward, distillation
KL, ...) and, for a stage whose steps count verifier failures, ``reward_errors`` over its recent steps (red when
not 0). The runner's own messages ([start], [done], [FAIL]) scroll above it. Not on a terminal (CI, a pipe, a
file): plain lines, one per running stage every ``plain_every`` seconds, e.g.

    [progress] sft.math 120/200 (60%) eta 41s loss=0.5213

Progress comes from the run directory only (each running stage's ``metrics.jsonl`` and ``manifest.json``), so it
works the same for stages on other machines of a Ray cluster sharing the run directory. The runner calls
:meth:`LiveView.tick` each time ``ray.wait`` returns or times out (``interval`` seconds).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from core.registry import STAGE_KINDS

from .runcache import attempt_dir

GENERIC = ("reward", "loss", "kl")
STYLE = {"complete": "green", "running": "bold yellow", "failed": "bold red", "skipped": "red", "pending": "dim",
         "waiting": "dim"}


def _tail_rows(path: Path, max_bytes: int = 16384) -> list[dict]:
    """The last few metric rows of a ``metrics.jsonl`` (reads at most ``max_bytes`` from the end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = data.splitlines()
    if size > max_bytes:
        lines = lines[1:]                    # the first line may be cut
    rows = []
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict):
            rows.append(r)
    return rows


def stage_progress(run_dir: Path, spec) -> dict:
    """{step, total, eta_s, metric, value} of a stage from its run-directory files (missing pieces are None)."""
    d = Path(run_dir) / spec.id
    if attempt_dir(run_dir, spec.id).is_dir():      # it runs beside its finished output (pipeline.runcache)
        d = attempt_dir(run_dir, spec.id)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {}
    kind = STAGE_KINDS.get(spec.kind)
    total = (kind.progress_total(spec.config) if kind else None) or manifest.get("progress_total")
    rows = _tail_rows(d / "metrics.jsonl")
    out = {"step": None, "total": total, "eta_s": None, "metric": None, "value": None, "reward_errors": None}
    if not rows:
        return out
    last = rows[-1]
    out["step"] = last.get("step")
    errs = [r["reward_errors"] for r in rows
            if isinstance(r.get("reward_errors"), (int, float)) and not isinstance(r["reward_errors"], bool)]
    if errs:                                 # verifier failures over the steps read (the tail of metrics.jsonl)
        out["reward_errors"] = int(sum(errs))
    for k in (kind.key_metrics if kind else ()) + GENERIC:
        v = last.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out["metric"], out["value"] = k, v
            break
    timed = [r for r in rows[-20:] if isinstance(r.get("time"), (int, float)) and isinstance(r.get("step"), int)]
    if total and len(timed) >= 2 and timed[-1]["time"] > timed[0]["time"]:
        rate = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"])
        if rate > 0:
            out["eta_s"] = max(0.0, (total - timed[-1]["step"]) / rate - (time.time() - timed[-1]["time"]))
    return out


def _fmt_eta(s) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _errors(p: dict) -> str:
    """`` reward_errors=N`` for a stage that counts verifier failures (N over the recent steps), else ``""``."""
    return "" if p.get("reward_errors") is None else f" reward_errors={p['reward_errors']}"


def _fmt_val(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class LiveView:
    """Use as a context manager around ``Runner.run``; pass ``echo`` as the runner's echo and ``self`` as its live."""

    def __init__(self, graph, run_dir: Path, stream=None, terminal: bool | None = None, plain_every: float = 30.0):
        self.graph, self.run_dir = list(graph), Path(run_dir)
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = terminal if terminal is not None else bool(isatty and isatty())
        self.interval = 0.5 if self.terminal else 5.0       # seconds ray.wait waits before a refresh
        self.plain_every = plain_every
        self.status: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self._last_plain = 0.0
        self._live = None

    # -- runner hooks ----------------------------------------------------------------------------------------
    def echo(self, msg: str) -> None:
        if self._live is not None:
            self._live.console.print(msg, markup=False, highlight=False, soft_wrap=True)
        else:
            print(msg, file=self.stream, flush=True)

    def tick(self, done: dict, running: list[str]) -> None:
        """Called by the runner's loop: ``done`` id -> complete|failed|skipped, ``running`` the ids in flight."""
        now = time.time()
        for sid in running:
            self.started.setdefault(sid, now)
        self.status = {s.id: ("running" if s.id in running else done.get(s.id, "pending")) for s in self.graph}
        if self._live is not None:
            self._live.update(self.render())
        elif running and now - self._last_plain >= self.plain_every:
            self._last_plain = now
            for line in self.plain_lines(running):
                print(line, file=self.stream, flush=True)

    # -- output ----------------------------------------------------------------------------------------------
    def plain_lines(self, running: list[str]) -> list[str]:
        by_id = {s.id: s for s in self.graph}
        lines = []
        for sid in running:
            p = stage_progress(self.run_dir, by_id[sid])
            step = "starting" if p["step"] is None else (
                f"{p['step']}/{p['total']} ({100 * p['step'] / p['total']:.0f}%)" if p["total"] else f"step {p['step']}")
            eta = f" eta {_fmt_eta(p['eta_s'])}" if p["eta_s"] is not None else ""
            metric = f" {p['metric']}={_fmt_val(p['value'])}" if p["metric"] else ""
            metric += _errors(p)
            el = f" elapsed {_fmt_eta(time.time() - self.started.get(sid, time.time()))}"
            lines.append(f"[progress] {sid} {step}{eta}{metric}{el}")
        return lines

    def render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        t = Table(title=f"pipeline run: {self.run_dir}", title_justify="left", expand=False, show_edge=False,
                  pad_edge=False)
        for col, kw in (("stage", {"no_wrap": True}), ("needs", {"style": "dim", "no_wrap": True}),
                        ("status", {"no_wrap": True}), ("progress", {"width": 24}),
                        ("step", {"justify": "right", "no_wrap": True}), ("eta", {"justify": "right"}),
                        ("metric", {"no_wrap": True})):
            t.add_column(col, **kw)
        for s in self.graph:
            st = self.status.get(s.id, "pending")
            bar, step, eta, metric = Text(""), "", "", ""
            if st == "running":
                p = stage_progress(self.run_dir, s)
                if p["total"] and p["step"] is not None:
                    bar = ProgressBar(total=p["total"], completed=p["step"], width=22)
                    step = f"{p['step']}/{p['total']}"
                elif p["step"] is not None:
                    step = str(p["step"])
                eta = _fmt_eta(p["eta_s"])
                metric = f"{p['metric']}={_fmt_val(p['value'])}" if p["metric"] else ""
                metric = Text(metric + _errors(p), style="bold red" if p["reward_errors"] else "")
            needs = ", ".join(s.deps) if len(s.deps) <= 2 else f"{len(s.deps)} stages"
            t.add_row(s.id, needs or "-", Text(st, style=STYLE.get(st, "")), bar, step, eta, metric)
        return t

    def __enter__(self):
        if self.terminal:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(self.render(), console=console, refresh_per_second=4, redirect_stdout=True,
                              redirect_stderr=True, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            for sid, st in self.status.items():       # the last tick predates the last stage's end
                if st == "running":
                    try:
                        self.status[sid] = json.loads((self.run_dir / sid / "manifest.json").read_text())["status"]
                    except (OSError, ValueError, KeyError):
                        pass
            live, self._live = self._live, None
            live.update(self.render())
            live.__exit__(*exc)
        return False
