"""`pipeline report RUN_DIR`: a self-contained ``report/index.html`` with PNG plots next to it.

Reads only the run directory: each stage's ``manifest.json`` and ``metrics.jsonl`` and ``eval/results.json``.
Plots: per stage kind, the curves its kind declares (``StageKind.curves``: SFT loss; GRPO reward, accuracy,
response length, entropy; distillation loss and per-teacher KL, ``kl.*``), a heatmap of held-out reward per
model x domain x mode, and the stage timeline (what ran when, with which resources). Stages that do not exist, have
not run or logged nothing are simply left out. No network, no JavaScript: the folder can be copied anywhere.

    pipeline report runs/think_max && chromium runs/think_max/report/index.html
"""
from __future__ import annotations

import html
import math
import time
from datetime import datetime
from pathlib import Path

from core.registry import STAGE_KINDS
from core.rundir import MetricsLog, RunDirError, atomic_write_text, read_json

from . import stages as _kinds  # noqa: F401  (the stage kinds: what each plots)

PALETTE = ("#7f7f7f", "#1f77b4", "#17becf", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


def kind_color(kind: str) -> str:
    order = [k.name for k in sorted(STAGE_KINDS.values(), key=lambda k: k.order)]
    return PALETTE[order.index(kind) % len(PALETTE)] if kind in order else PALETTE[-1]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    """A stage's metrics.jsonl rows (a torn last line from a kill is dropped), via the run directory's own reader."""
    return [r for r in MetricsLog(path).rows() if isinstance(r, dict)]


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i + 1))
            ys.append(v)
    return xs, ys


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def _parse_time(s) -> float | None:
    if not s:
        return None
    try:
        return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def load_run(run_dir: Path) -> dict:
    """Stages (manifest + metrics) in run order, and the eval rows."""
    run_dir = Path(run_dir)
    order: list[str] = []
    try:
        from .runner import status_rows

        order = [r["id"] for r in status_rows(run_dir)]
    except Exception:  # noqa: BLE001 — a run dir without a readable recipe still reports what it has
        order = sorted(p.name for p in run_dir.iterdir() if (p / "manifest.json").exists())
    stages = []
    for sid in order:
        m = read_json(run_dir / sid / "manifest.json", {}) or {}
        stages.append({"id": sid, "kind": m.get("kind", sid.split(".")[0]), "manifest": m,
                       "metrics": read_metrics(run_dir / sid / "metrics.jsonl")})
    rows = read_json(run_dir / "eval" / "results.json", []) or []
    return {"stages": stages, "eval": rows}


# ---------------------------------------------------------------------------------------------------------------
# plots: each returns the file name written, or None when there is nothing to plot


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    _plt().close(fig)
    return name


def plot_kind(kind: str, stages: list[dict], out: Path) -> str | None:
    """One figure per stage kind: a panel per curve the kind declares (``kl.*``: every per-teacher KL key), one line
    per stage of that kind."""
    spec = STAGE_KINDS.get(kind)
    mine = [s for s in stages if s["kind"] == kind]
    if spec is None or not spec.curves or not mine:
        return None
    panels = []
    for c in spec.curves:
        keys = (sorted({k for s in mine for r in s["metrics"] for k in r if k.startswith(c[:-1])})
                if c.endswith("*") else [c])
        keys = [k for k in keys if any(_series(s["metrics"], k)[0] for s in mine)]
        if keys:
            panels.append((c, keys))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.0), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for s in mine:
            for k in keys:
                xs, ys = _series(s["metrics"], k)
                if xs:
                    label = s["id"] if len(keys) == 1 else k
                    ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=2, lw=1, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        if title == "loss" and all(y > 0 for s in mine for y in _series(s["metrics"], "loss")[1]):
            ax.set_yscale("log")
    axes[0][-1].legend(fontsize=6, ncol=2 if len(mine) > 6 else 1, loc="best")
    fig.suptitle(f"{kind}: {spec.label}", fontsize=9)
    return _save(fig, out, f"curves_{kind}.png")


def heatmap_data(rows: list[dict], metric: str = "reward_mean") -> tuple[list[str], list[str], list[list]]:
    """(models, "domain.mode" columns, values with None where a model was not evaluated)."""
    models, cols, val = [], [], {}
    for r in rows:
        if r["metric"] != metric:
            continue
        c = f"{r['domain']}.{r['mode']}"
        if r["model"] not in models:
            models.append(r["model"])
        if c not in cols:
            cols.append(c)
        val[(r["model"], c)] = r["value"]
    order = [k.name for k in sorted(STAGE_KINDS.values(), key=lambda k: k.order)]
    rank = {k: i for i, k in enumerate(order)}
    models.sort(key=lambda m: (rank.get(m.split(".")[0], len(order)), m))
    return models, cols, [[val.get((m, c)) for c in cols] for m in models]


def plot_heatmap(rows: list[dict], out: Path, metric: str = "reward_mean") -> str | None:
    models, cols, grid = heatmap_data(rows, metric)
    if not models:
        return None
    import numpy as np

    plt = _plt()
    arr = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(cols) + 2.5), max(2.2, 0.42 * len(models) + 1.4)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=0, vmax=max(1.0, np.nanmax(arr) if
                                                                          np.isfinite(arr).any() else 1.0),
                   aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace(".", "\n") for c in cols], fontsize=7)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    for i in range(len(models)):
        for j in range(len(cols)):
            if np.isfinite(arr[i, j]):
                ax.text(j, i, f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if arr[i, j] < 0.5 else "black")
    ax.set_title(f"held-out {metric} (grey: not evaluated)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, out, f"heatmap_{metric}.png")


def plot_efficacy(table: dict, out: Path) -> str | None:
    """Grouped bars per domain x mode: start, SFT, teacher, student and the controls, with 95% intervals."""
    cells = table["cells"]
    if not cells:
        return None
    import numpy as np

    plt = _plt()
    keys = [k for k in ("start", "sft", "teacher", "student", "seqkd", "entropy") if any(k in c for c in cells)]
    x = np.arange(len(cells))
    w = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(cells) + 2), 3.6))
    for j, k in enumerate(keys):
        v = [c[k]["value"] if k in c else np.nan for c in cells]
        lo = [c[k]["value"] - (c[k]["ci"][0] if c[k]["ci"][0] is not None else c[k]["value"]) if k in c else 0
              for c in cells]
        hi = [(c[k]["ci"][1] if c[k]["ci"][1] is not None else c[k]["value"]) - c[k]["value"] if k in c else 0
              for c in cells]
        ax.bar(x + (j - (len(keys) - 1) / 2) * w, v, w, yerr=[lo, hi], capsize=1.5, label=k,
               error_kw={"lw": 0.6})
    ax.set_xticks(x, [c["cell"].replace(".", "\n") for c in cells], fontsize=7)
    ax.set_ylabel("held-out reward_mean")
    s = table["summary"]
    cap = "n/a" if s["capture_mean"] is None else f"{s['capture_mean']:.2f}"
    ax.set_title(f"start, teachers, student and controls (95% intervals); mean headroom capture {cap} over "
                 f"{s['cells_with_headroom']} cells", fontsize=9)
    ax.legend(fontsize=7, ncol=len(keys))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, "efficacy.png")


def efficacy_table_html(table: dict) -> str:
    keys = [k for k in ("start", "sft", "teacher", "student", "seqkd", "entropy")
            if any(k in c for c in table["cells"])]
    body = []
    for c in table["cells"]:
        cells = [c["cell"]]
        for k in keys:
            v = c.get(k)
            cells.append("" if v is None else _fmt(v["value"]) + (
                f" <span class='muted'>[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]</span>" if v["ci"][0] is not None else ""))
        cells += [_fmt(c["headroom"]), "" if c["capture"] is None else _fmt(c["capture"])]
        body.append(cells)
    s = table["summary"]
    body.append(["<b>mean</b>"] + [_fmt(s.get(f"mean_{k}")) for k in keys]
                + ["", "" if s["capture_mean"] is None else f"<b>{s['capture_mean']:.3f}</b>"])
    return _table(["domain.mode", *keys, "headroom", "capture"], body)


def plot_timeline(stages: list[dict], out: Path) -> str | None:
    bars = []
    for s in stages:
        m = s["manifest"]
        t0, t1 = _parse_time(m.get("started")), _parse_time(m.get("finished"))
        if t0 is None:
            continue
        if t1 is None:
            t1 = time.time() if m.get("status") == "running" else t0
        if t1 - t0 < 1 and m.get("wall_s"):
            t1 = t0 + float(m["wall_s"])
        bars.append((s, t0, max(t1, t0 + 0.5)))
    if not bars:
        return None
    plt = _plt()
    origin = min(b[1] for b in bars)
    fig, ax = plt.subplots(figsize=(8, max(1.8, 0.34 * len(bars) + 1.0)))
    for i, (s, t0, t1) in enumerate(bars):
        m = s["manifest"]
        res = m.get("resources") or {}
        label = f"{_num(res.get('num_cpus', '?'))} cpu" + (f", {_num(res['num_gpus'])} gpu" if res.get("num_gpus") else "")
        color = kind_color(s["kind"])
        ax.barh(i, t1 - t0, left=t0 - origin, color=color, alpha=0.85 if m.get("status") == "complete" else 0.4,
                edgecolor="red" if m.get("status") == "failed" else None)
        ax.text(t1 - origin, i, f" {label} {m.get('status', '')}", va="center", fontsize=7)
    ax.set_yticks(range(len(bars)), [b[0]["id"] for b in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first stage started")
    ax.set_title("Stage timeline")
    ax.grid(axis="x", alpha=0.3)
    span = max(b[2] for b in bars) - origin
    ax.set_xlim(0, span * 1.25 + 1)
    return _save(fig, out, "timeline.png")


# ---------------------------------------------------------------------------------------------------------------
# HTML

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}.scroll{overflow-x:auto}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:6px 0}
.failed{color:#b00}.muted{color:#777;font-size:12px}"""


def _table(head: list[str], body: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(head))
    trs = []
    for row in body:
        tds = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        trs.append(f"<tr>{tds}</tr>")
    return f"<div class='scroll'><table><tr>{th}</tr>{''.join(trs)}</table></div>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"
    return html.escape(str(v)) if v is not None else ""


def eval_table_html(rows: list[dict]) -> str:
    metrics = []
    for r in rows:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    first = ["reward_mean", "accuracy", "length_mean"]
    metrics.sort(key=lambda m: (first.index(m) if m in first else 3, m))
    table: dict[tuple, dict] = {}
    for r in rows:
        v = _fmt(r["value"]) + (f" <span class='muted'>[{r['ci_low']:.3f}, {r['ci_high']:.3f}]</span>"
                                 if "ci_low" in r else "")
        table.setdefault((r["model"], r["domain"], r["mode"]), {"n": r["n"]})[r["metric"]] = v
    body = [[html.escape(k[0]), k[1], k[2], v["n"], *[v.get(m, "") for m in metrics]] for k, v in table.items()]
    return _table(["model", "domain", "mode", "n", *metrics], body, left=3)


def reward_errors_total(rows: list[dict]) -> int | None:
    """Verifier failures over a stage's steps (``reward_errors`` of each metrics row); None when none counts them."""
    vals = [r["reward_errors"] for r in rows if isinstance(r.get("reward_errors"), (int, float))]
    return int(sum(vals)) if vals else None


def sandbox_cell(m: dict) -> str:
    """The code sandbox's isolation a stage ran with (its manifest's ``sandbox``); the weaker one stands out."""
    sb = m.get("sandbox")
    if not sb:
        return ""
    mode = html.escape(str(sb.get("mode") if isinstance(sb, dict) else sb))
    return f'<span class="failed">{mode} (weaker)</span>' if mode == "rlimits" else mode


def stages_table_html(stages: list[dict]) -> str:
    body = []
    for s in stages:
        m = s["manifest"]
        status = html.escape(m.get("status", "pending"))
        if m.get("status") == "failed":
            status = f'<span class="failed">failed: {html.escape(str(m.get("error", ""))[:160])}</span>'
        res = m.get("resources") or {}
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in (m.get("metrics") or {}).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool))[:160]
        errs = reward_errors_total(s["metrics"])
        errs = "" if errs is None else (f'<span class="failed">{errs}</span>' if errs else "0")
        body.append([html.escape(s["id"]), s["kind"], status, _fmt(m.get("started")), _fmt(m.get("wall_s")),
                     f"{_num(res.get('num_cpus', ''))} / {_num(res.get('num_gpus', ''))}", errs, sandbox_cell(m),
                     f'<span style="text-align:left;display:block">{html.escape(metrics)}</span>'])
    return _table(["stage", "kind", "status", "started", "wall s", "cpu / gpu", "reward errors", "sandbox",
                   "summary"], body, left=3)


def write_report(run_dir: Path, out: Path | str | None = None) -> Path:
    """Write ``<out or run_dir/report>/index.html`` and its PNGs; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    run = load_run(run_dir)
    stages, rows = run["stages"], run["eval"]
    sections = []

    def section(title, body):
        sections.append(f"<h2>{html.escape(title)}</h2>\n{body}")

    def img(name, alt):
        return f'<img src="{name}" alt="{html.escape(alt)}">' if name else ""

    section("Stages", stages_table_html(stages) + img(plot_timeline(stages, out), "stage timeline"))
    from .efficacy import efficacy, roles

    eff = efficacy(rows, roles(run_dir)) if rows else {"cells": []}
    if eff["cells"]:
        section("Efficacy: the student against its start, its teachers and the controls",
                img(plot_efficacy(eff, out), "efficacy") + efficacy_table_html(eff)
                + '<p class="muted">headroom = teacher − start; capture = (student − start) / headroom, at most 1, '
                  'averaged over cells with headroom &gt; 0.05. seqkd: the start fine-tuned on teacher samples '
                  '(same teacher tokens); entropy: GRPO with no reward signal.</p>')
    if rows:
        heat = plot_heatmap(rows, out)
        section("Evaluation", img(heat, "student vs teachers heatmap") + eval_table_html(rows)
                + '<p class="muted">reward_mean, accuracy, length_mean and pass@k over sampled completions '
                  '(the recipe\'s sampling), with 95% bootstrap intervals over prompts in brackets; *_greedy: '
                  'greedy decoding. Source: eval/results.json.</p>')
    for kind in sorted(STAGE_KINDS.values(), key=lambda k: k.order):
        fig = plot_kind(kind.name, stages, out)
        if fig:
            section(f"{kind.name}: training curves", img(fig, f"{kind.name} curves"))
    name = run_dir.resolve().name
    recipe = run_dir / "recipe.yaml"
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)} report</title>"
           f"<style>{CSS}</style></head><body><h1>Run report: {html.escape(name)}</h1>"
           f"<p class='muted'>{html.escape(str(run_dir.resolve()))} &middot; generated {time.strftime('%Y-%m-%d %H:%M')}"
           f"{' &middot; recipe: recipe.yaml' if recipe.exists() else ''}</p>"
           + "\n".join(sections) + "</body></html>\n")
    atomic_write_text(out / "index.html", doc)
    (out / "index.html").chmod(0o644)
    return out / "index.html"
