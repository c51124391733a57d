"""The efficacy table: for every domain x mode, the student's start, the SFT specialist, the teacher, the distilled
student and the controls side by side, with 95% intervals and the headroom the student captured.

    headroom = teacher - start          capture = (student - start) / headroom, at most 1 per cell

averaged over the cells whose headroom exceeds ``min_headroom`` (0.05: a smaller one is within the noise of 32
prompts x 8 samples). Rows come from ``eval/results.json``; which model is which comes from the run's graph (the
distill stage's ``student_from`` and teachers).
"""
from __future__ import annotations

from pathlib import Path

from core.rundir import read_json

MIN_HEADROOM = 0.05


def roles(run_dir: Path) -> dict:
    """``{"start": id, "student": "distill", "teacher": {cell: id}, "sft": {cell: id}}`` from the run's manifests
    and recipe (empty when the run has no distill stage)."""
    import yaml

    from .graph import build_graph
    from .recipe import Recipe

    run_dir = Path(run_dir)
    m = read_json(run_dir / "distill" / "manifest.json", {}) or {}
    rec = run_dir / "recipe.yaml"
    if not m or not rec.exists():
        return {}
    graph = build_graph(Recipe.model_validate(yaml.safe_load(rec.read_text())), check=False)
    spec = next((s for s in graph if s.id == "distill"), None)
    if spec is None:
        return {}
    teacher = {tuple(k.split(".")): refs[0].name for k, refs in spec.config.teachers.items() if refs}
    sft = {(s.domain, mode): s.id for s in graph if s.kind == "sft" for mode in spec.config.modes}
    return {"start": m.get("student_from") or spec.config.student_from, "student": "distill", "teacher": teacher,
            "sft": sft}


def efficacy(rows: list[dict], r: dict, metric: str = "reward_mean") -> dict:
    """Per cell the numbers (value and interval) of every role and control, capture, and the summary."""
    val = {(x["model"], x["domain"], x["mode"]): x for x in rows if x["metric"] == metric}
    cells, caps, below = [], [], []
    for (d, mo), teacher in sorted(r.get("teacher", {}).items()):
        ids = {"start": r["start"], "sft": r["sft"].get((d, mo)), "teacher": teacher, "student": r["student"],
               "seqkd": "control.seqkd", "entropy": f"control.entropy.{d}.{mo}"}
        got = {k: val.get((i, d, mo)) for k, i in ids.items() if i}
        if not all(got.get(k) for k in ("start", "teacher", "student")):
            continue
        s0, t, s = (got[k]["value"] for k in ("start", "teacher", "student"))
        head = t - s0
        cap = min(1.0, (s - s0) / head) if head > MIN_HEADROOM else None
        if cap is not None:
            caps.append(cap)
        if s < s0 - 0.02:
            below.append(f"{d}.{mo}")
        cells.append({"cell": f"{d}.{mo}", "headroom": head, "capture": cap,
                      **{k: {"value": v["value"], "ci": (v.get("ci_low"), v.get("ci_high"))}
                         for k, v in got.items() if v}})
    mean = lambda k: (sum(c[k]["value"] for c in cells if k in c) / sum(1 for c in cells if k in c)  # noqa: E731
                      if any(k in c for c in cells) else None)
    return {"cells": cells, "summary": {
        "capture_mean": sum(caps) / len(caps) if caps else None, "capture_min": min(caps) if caps else None,
        "cells_with_headroom": len(caps), "below_start": below,
        **{f"mean_{k}": mean(k) for k in ("start", "sft", "teacher", "student", "seqkd", "entropy")}}}
