"""`pipeline report RUN_DIR`: a self-contained ``report/index.html`` with PNG plots next to it.

Reads only the run directory: each stage's ``manifest.json`` and ``metrics.jsonl`` and ``eval/results.json``.
Plots: reward / accuracy / response-length (and KL, clip fraction, entropy when logged) per GRPO stage, SFT loss,
per-teacher KL during distillation (``kl.*`` keys), a student-vs-teachers heatmap of held-out reward per
domain x mode, and the stage timeline (what ran when, with which resources). Stages that do not exist, have not run
or logged nothing are simply left out. No network, no JavaScript: the folder can be copied anywhere.

    pipeline report runs/think_max && chromium runs/think_max/report/index.html
"""
from __future__ import annotations

import html
import json
import math
import time
from datetime import datetime
from pathlib import Path

from .core.rundir import atomic_write_text, read_json

KIND_COLORS = {"bootstrap": "#7f7f7f", "sft": "#1f77b4", "grpo": "#d62728", "distill": "#2ca02c", "eval": "#9467bd"}
# first key present wins
REWARD_KEYS = ("reward", "reward_mean", "score")
LENGTH_KEYS = ("response_length", "length_mean", "length")
EXTRA_KEYS = ("accuracy", "kl", "clip_frac", "entropy", "masked_frac", "mismatch", "tokens_per_s")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    """A stage's metrics.jsonl rows (a torn last line from a kill is dropped), via the run directory's own reader."""
    from .core.rundir import MetricsLog

    return [r for r in MetricsLog(path).rows() if isinstance(r, dict)]


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i + 1))
            ys.append(v)
    return xs, ys


def _first_key(rows: list[dict], keys) -> str | None:
    for k in keys:
        if any(isinstance(r.get(k), (int, float)) for r in rows):
            return k
    return None


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


def plot_grpo(stage: dict, out: Path) -> str | None:
    rows = stage["metrics"]
    panels = [k for k in (_first_key(rows, REWARD_KEYS), _first_key(rows, LENGTH_KEYS)) if k]
    panels += [k for k in EXTRA_KEYS if k not in panels and _series(rows, k)[0]][: max(0, 4 - len(panels))]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
    for ax, key in zip(axes[0], panels):
        xs, ys = _series(rows, key)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, color=KIND_COLORS["grpo"])
        if key in REWARD_KEYS and _series(rows, "accuracy")[0] and "accuracy" not in panels:
            ax.plot(*_series(rows, "accuracy"), ls="--", color="#555", label="accuracy")
            ax.legend(fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(stage["id"], fontsize=10)
    return _save(fig, out, f"grpo_{stage['id'].replace('.', '_')}.png")


def plot_sft(stages: list[dict], out: Path) -> str | None:
    sft = [s for s in stages if s["kind"] == "sft" and _series(s["metrics"], "loss")[0]]
    if not sft:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for s in sft:
        ax.plot(*_series(s["metrics"], "loss"), label=s["id"])
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per assistant token)")
    ax.set_title("SFT loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, "sft_loss.png")


def plot_distill(stages: list[dict], out: Path) -> str | None:
    d = [s for s in stages if s["kind"] == "distill"]
    if not d:
        return None
    rows = d[0]["metrics"]
    keys = sorted({k for r in rows for k in r if k.startswith("kl.")})
    if not keys:
        keys = [k for k in ("kl", "loss") if _series(rows, k)[0]]
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for k in keys:
        ax.plot(*_series(rows, k), label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("reverse KL to teacher")
    ax.set_title("Distillation: KL per teacher")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "distill_kl.png")


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
    rank = {"bootstrap": 0, "sft": 1, "grpo": 2, "distill": 3}
    models.sort(key=lambda m: (rank.get(m.split(".")[0], 4), m))
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
    ax.set_title(f"{metric} (sampled, T=1): student vs teachers (grey: not evaluated)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    return _save(fig, out, f"heatmap_{metric}.png")


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
        color = KIND_COLORS.get(s["kind"], "#8c564b")
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
        table.setdefault((r["model"], r["domain"], r["mode"]), {"n": r["n"]})[r["metric"]] = r["value"]
    body = [[html.escape(k[0]), k[1], k[2], v["n"], *[_fmt(v.get(m)) for m in metrics]] for k, v in table.items()]
    return _table(["model", "domain", "mode", "n", *metrics], body, left=3)


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
        body.append([html.escape(s["id"]), s["kind"], status, _fmt(m.get("started")), _fmt(m.get("wall_s")),
                     f"{_num(res.get('num_cpus', ''))} / {_num(res.get('num_gpus', ''))}",
                     f'<span style="text-align:left;display:block">{html.escape(metrics)}</span>'])
    return _table(["stage", "kind", "status", "started", "wall s", "cpu / gpu", "summary"], body, left=3)


def write_report(run_dir: Path, out: Path | str | None = None) -> Path:
    """Write ``<out or run_dir/report>/index.html`` and its PNGs; returns the HTML path."""
    from .core.rundir import RunDirError

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
    if rows:
        heat = plot_heatmap(rows, out)
        section("Evaluation", img(heat, "student vs teachers heatmap") + eval_table_html(rows)
                + '<p class="muted">Greedy metrics unless suffixed _sampled; pass@k from sampled completions '
                  '(unbiased estimator). Source: eval/results.json.</p>')
    grpo = [plot_grpo(s, out) for s in stages if s["kind"] == "grpo"]
    if any(grpo):
        section("GRPO: reward and response length", "".join(img(g, "grpo curves") for g in grpo if g))
    sft = plot_sft(stages, out)
    if sft:
        section("SFT", img(sft, "SFT loss"))
    kl = plot_distill(stages, out)
    if kl:
        section("Distillation", img(kl, "distillation KL per teacher"))
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
