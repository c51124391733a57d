"""Summarise a finished run for docs/results.md: wall time per stage, GRPO against its SFT start and the reward-free
control, and the efficacy table (the student against its start, its teachers and the controls).

    python bench/summarize_run.py runs/think_max            # markdown to stdout

Every number is a held-out row of ``eval/results.json`` (before the eval stage has run: the complete stages' own
rows, from their manifests), with its 95% bootstrap interval over prompts; greedy numbers in their own columns.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOMAINS = ("math", "code", "agent", "instruct")
MODES = ("non_think", "think_high", "think_max")


def _t(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z") if s else None


def _v(row, ci=True) -> str:
    if row is None:
        return "-"
    if ci and row.get("ci_low") is not None:
        return f"{row['value']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return f"{row['value']:.3f}"


def wall(run: Path, mans: dict) -> None:
    starts = [_t(m.get("started")) for m in mans.values() if m.get("started")]
    ends = [_t(m.get("finished")) for m in mans.values() if m.get("finished")]
    print(f"## Wall time\n\nfirst stage start to last stage end: {(max(ends) - min(starts)).total_seconds():.0f} s\n")
    print("| stage | status | started | seconds |\n|---|---|---|---|")
    t0 = min(starts)
    for sid, m in sorted(mans.items(), key=lambda kv: kv[1].get("started") or ""):
        st = _t(m.get("started"))
        if st is None:                      # never started (a stage left out with --only, or not reached yet)
            continue
        print(f"| {sid} | {m.get('status')} | +{(st - t0).total_seconds():.0f} s | {m.get('wall_s') or 0:.0f} |")
    fleet = run / "fleet.json"
    if fleet.exists():
        f = json.loads(fleet.read_text())
        print(f"\nfleet: {f['engines']} engines, {f['starts']} starts, {f['replacements']} replacements, "
              f"{f['leases']} leases, start-up {', '.join(f'{s:.0f} s' for s in f.get('startup_s', []))}; "
              f"served {f.get('served')}")


def starts(val: dict, metric: str = "accuracy") -> None:
    """Every cell: the model's own start (bootstrap), its SFT specialist, the generalist (the student's start)."""
    print(f"\n## Held-out {metric} per cell: the start, the SFT specialist, the generalist (95% intervals)\n")
    print("| domain | mode | n | bootstrap | SFT | generalist |\n|---|---|---|---|---|---|")
    for d in DOMAINS:
        for x in MODES:
            s = val.get((f"sft.{d}", d, x, metric))
            if s is None:
                continue
            row = [val.get((m, d, x, metric)) for m in ("bootstrap", f"sft.{d}", "generalist")]
            print(f"| {d} | {x} | {s['n']} | " + " | ".join(_v(r) for r in row) + " |")


def grpo(val: dict, metric: str = "reward_mean") -> None:
    print(f"\n## GRPO against its SFT start and the reward-free control (held-out {metric}, 95% intervals)\n")
    base = any(k[0] == "base" for k in val)          # the specialists' own start, when the run has a base stage
    print("| domain | mode | " + ("base | " if base else "") + "SFT | GRPO | control.entropy | SFT greedy | GRPO greedy | "
          "control greedy |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if base else ""))
    wins = beats = n = 0
    for d in DOMAINS:
        for x in MODES:
            s, g = val.get((f"sft.{d}", d, x, metric)), val.get((f"grpo.{d}.{x}", d, x, metric))
            c = val.get((f"control.entropy.{d}.{x}", d, x, metric))
            if s is None or g is None:
                continue
            n += 1
            wins += g["value"] > s["value"]
            beats += c is not None and g["value"] > c["value"]
            gr = [val.get((m, d, x, f"{metric}_greedy")) for m in (f"sft.{d}", f"grpo.{d}.{x}",
                                                                      f"control.entropy.{d}.{x}")]
            b = f"{_v(val.get(('base', d, x, metric)))} | " if base else ""
            print(f"| {d} | {x} | {b}{_v(s)} | {_v(g)} | {_v(c)} | " + " | ".join(_v(r, False) for r in gr) + " |")
    print(f"\nGRPO > SFT in {wins}/{n} cells; GRPO > control.entropy in {beats}/{n}.")


SUITES = {"math": ("MATH500", "math500_accuracy"), "code": ("HumanEval", "humaneval_pass@1"),
          "agent": ("BFCL", "bfcl_accuracy"), "instruct": ("IFBench", "ifbench_accuracy")}


def suites(val: dict) -> None:
    """One table per benchmark: every model evaluated on its domain, a column per mode (greedy, 95% intervals)."""
    for d, (name, metric) in SUITES.items():
        models = sorted({k[0] for k in val if k[1] == d and k[3] == metric}, key=_order)
        if not models:
            continue
        n = {k[2]: r["n"] for k, r in val.items() if k[1] == d and k[3] == metric}
        print(f"\n## {name} ({metric}; problems per mode: "
              + ", ".join(f"{x} {n[x]}" for x in MODES if x in n) + ")\n")
        print("| model | " + " | ".join(MODES) + " |\n|---|" + "---|" * len(MODES))
        for m in models:
            print(f"| {m} | " + " | ".join(_v(val.get((m, d, x, metric))) for x in MODES) + " |")


def _order(model: str) -> tuple:
    first = ("bootstrap", "base", "generalist", "distill", "control.seqkd")
    return (first.index(model), "") if model in first else (len(first), model)


def efficacy(run: Path, rows: list[dict]) -> None:
    from pipeline.efficacy import efficacy as table
    from pipeline.efficacy import roles

    r = roles(run)
    if not r:
        return
    e = table(rows, r)
    print(f"\n## The student against its start ({r['start']}), its teachers and the controls\n")
    print("| cell | start | SFT | teacher | student | control.seqkd | headroom | capture |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda c, k: (_v({"value": c[k]["value"], "ci_low": c[k]["ci"][0], "ci_high": c[k]["ci"][1]})  # noqa: E731
                        if c.get(k) else "-")
    for c in e["cells"]:
        cap = "-" if c["capture"] is None else f"{c['capture']:.2f}"
        print(f"| {c['cell']} | {fmt(c, 'start')} | {fmt(c, 'sft')} | {fmt(c, 'teacher')} | {fmt(c, 'student')} | "
              f"{fmt(c, 'seqkd')} | {c['headroom']:+.3f} | {cap} |")
    s = e["summary"]
    print("\n" + ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in s.items()))


def main(run_dir: str) -> None:
    run = Path(run_dir)
    mans = {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/manifest.json")}
    wall(run, mans)
    res = run / "eval" / "results.json"
    # before the eval stage has run: each complete stage's own held-out rows (its manifest's eval_rows)
    rows = (json.loads(res.read_text()) if res.exists() else
            [r for m in mans.values() if m.get("status") == "complete" for r in m.get("eval_rows") or []])
    val = {(x["model"], x["domain"], x["mode"], x["metric"]): x for x in rows}
    if rows:
        starts(val)
        grpo(val)
        if any(k[3] == "accuracy" for k in val):
            grpo(val, "accuracy")
        suites(val)
        efficacy(run, rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/think_max")
