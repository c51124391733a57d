"""Stage ``eval``: every model of a run on every domain x mode it is meant for, one table.

Which cells: ``bootstrap``, ``generalist``, ``distill`` on every domain x mode; ``sft.<d>`` on domain ``d`` in every
mode; ``grpo.<d>.<m>`` on ``d`` x ``m`` (each stage declares its cells). Every model-producing stage already
evaluated its own ``final/`` with the same held-out spec (``eval_rows`` in its manifest); those rows are reused when
their ``spec`` matches, so only what is missing is generated here (by default only ``bootstrap``). Writes
``results.json`` (rows ``{model, domain, mode, metric, value, n, ci_low, ci_high, spec}``; see train/evaluate.py)
and ``results.md`` (a table). The ``eval.suites`` rows (``humaneval_pass@<k>`` in every code cell,
``bfcl_accuracy`` and ``bfcl_accuracy.<category>`` in every agent cell) are rows of their cell with the cell's
``spec`` (which covers the suite's options), so they are reused and recomputed with the rest of the cell.

    pipeline run recipes/think_max.yaml --only eval
"""
from __future__ import annotations

from pathlib import Path

from core.rundir import atomic_write_json, atomic_write_text, read_json

from .evaluate import HeldOutEvaluator


def reusable_rows(manifest: dict, heldout, cells) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows of a stage's own evaluation that are exactly this spec's, the cells still to compute)."""
    have: dict[tuple, list[dict]] = {}
    if manifest.get("status") == "complete":
        for r in manifest.get("eval_rows") or []:
            have.setdefault((r["domain"], r["mode"]), []).append(r)
    rows, missing = [], []
    for d, m in cells:
        got = [r for r in have.get((d, m), []) if r.get("spec") == heldout.cell_key(d, m)]
        if got:
            rows += got
        else:
            missing.append((d, m))
    return rows, missing


def evaluate_targets(heldout, run_dir: Path, targets, workers: int, log=print, progress=None,
                     evaluator=None) -> list[dict]:
    """Rows for every target ``(id, cells)`` whose ``final/`` is in ``run_dir``: reused or computed."""
    evaluator = evaluator or HeldOutEvaluator(heldout, workers)
    rows: list[dict] = []
    for i, t in enumerate(targets):
        manifest = read_json(Path(run_dir) / t.id / "manifest.json", {}) or {}
        got, missing = reusable_rows(manifest, heldout, [tuple(c) for c in t.cells])
        if got:
            log(f"[eval] {t.id}: reused its own rows for {len(t.cells) - len(missing)} cell(s)")
        rows += got + evaluator(t.id, Path(run_dir) / t.id / "final", missing, log=log)
        if progress is not None:
            progress(i + 1, len(targets), rows)
    return rows


def results_markdown(rows: list[dict]) -> str:
    """A table: one line per model x domain x mode, one column per metric (95% interval beside the mean)."""
    metrics = []
    for r in rows:
        if r["metric"] not in metrics:
            metrics.append(r["metric"])
    order = {m: i for i, m in enumerate(["reward_mean", "accuracy", "length_mean"])}
    metrics.sort(key=lambda m: (order.get(m, 3), m))
    table: dict[tuple, dict] = {}
    for r in rows:
        cell = table.setdefault((r["model"], r["domain"], r["mode"]), {"n": r["n"]})
        cell[r["metric"]] = (f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if "ci_low" in r
                             else f"{r['value']:.3f}")
    head = ["model", "domain", "mode", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for (model, dom, mode), vals in table.items():
        lines.append("| " + " | ".join([model, dom, mode, str(vals["n"])] + [vals.get(m, "") for m in metrics]) + " |")
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, rows: list[dict], title: str = "Evaluation") -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "results.json", rows)
    atomic_write_text(out_dir / "results.md", f"# {title}\n\n{results_markdown(rows)}")


def summary_of(rows: list[dict]) -> dict:
    """Mean sampled reward per model (what the runner prints when the stage finishes)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        if r["metric"] == "reward_mean":
            per.setdefault(r["model"], []).append(r["value"])
    return {"rows": len(rows), **{f"reward_mean.{m}": sum(v) / len(v) for m, v in per.items()}}


def run(ctx) -> dict:
    cfg = ctx.config                                        # train.config.EvalStage
    ctx.manifest.update(progress_total=len(cfg.targets))
    ctx.metrics.truncate_after(0)
    rows = evaluate_targets(cfg.heldout, ctx.dir.parent, cfg.targets, max(1, ctx.num_cpus), log=ctx.log.info,
                            progress=lambda done, total, rows: ctx.metrics.log(done, models_done=done, rows=len(rows)),
                            evaluator=ctx.evaluator)
    write_results(ctx.dir, rows, f"Evaluation of {ctx.project}")
    ctx.log.info(f"[eval] wrote {ctx.dir / 'results.json'} and results.md ({len(rows)} rows)")
    return summary_of(rows)
