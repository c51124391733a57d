"""Summarise a finished run: wall time per stage and in total, and the tables the docs report.

    python bench/summarize_run.py runs/think_max            # markdown to stdout

Tables: bootstrap vs SFT held-out greedy accuracy per domain x mode (from the SFT manifests); SFT vs GRPO held-out
reward and response length per domain x mode (from eval/results.json); student vs teachers (distill).
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

DOMAINS = ("math", "code", "agent", "instruct")
MODES = ("non_think", "think_high", "think_max")


def _t(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S%z") if s else None


def main(run_dir: str) -> None:
    run = Path(run_dir)
    mans = {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/manifest.json")}
    starts = [_t(m.get("started")) for m in mans.values() if m.get("started")]
    ends = [_t(m.get("finished")) for m in mans.values() if m.get("finished")]
    print(f"## Wall time\n\nwhole graph: {(max(ends) - min(starts)).total_seconds():.0f} s "
          f"(first stage start to last stage end)\n")
    print("| stage | status | seconds |\n|---|---|---|")
    for sid, m in sorted(mans.items(), key=lambda kv: kv[1].get("started") or ""):
        print(f"| {sid} | {m.get('status')} | {m.get('wall_s', 0):.0f} |")
    print("\n## SFT: held-out greedy accuracy, bootstrap -> SFT\n\n| domain | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for d in DOMAINS:
        m = mans.get(f"sft.{d}", {}).get("metrics", {})
        if m:
            print(f"| {d} | " + " | ".join(f"{m.get(f'start_accuracy.{x}', 0):.3f} -> {m.get(f'accuracy.{x}', 0):.3f}"
                                           for x in MODES) + " |")
    print("\n## GRPO stages: held-out reward of the SFT start vs the teacher (each stage's own evaluation: "
          "grpo.eval_samples per prompt at T=1; greedy in its own columns)\n")
    print("| domain | mode | SFT reward | GRPO reward | SFT greedy | GRPO greedy | SFT length | GRPO length | stage s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d in DOMAINS:
        for x in MODES:
            m = mans.get(f"grpo.{d}.{x}", {})
            g = m.get("metrics", {})
            if g:
                print(f"| {d} | {x} | {g['start_reward_mean']:.3f} | {g['reward_mean']:.3f} | "
                      f"{g['start_reward_mean_greedy']:.3f} | {g['reward_mean_greedy']:.3f} | "
                      f"{g['start_length_mean']:.1f} | {g['length_mean']:.1f} | {m.get('wall_s', 0):.0f} |")
    rows = json.loads((run / "eval" / "results.json").read_text()) if (run / "eval" / "results.json").exists() else []
    val = {(r["model"], r["domain"], r["mode"], r["metric"]): r["value"] for r in rows}
    if rows:
        print("\n## GRPO teachers vs their SFT start (eval stage, sampled T=1, reward_mean / length_mean)\n")
        print("| domain | mode | SFT reward | GRPO reward | SFT length | GRPO length | distill reward | student/teacher |")
        print("|---|---|---|---|---|---|---|---|")
        for d in DOMAINS:
            for x in MODES:
                s, g = val.get((f"sft.{d}", d, x, "reward_mean")), val.get((f"grpo.{d}.{x}", d, x, "reward_mean"))
                sl, gl = val.get((f"sft.{d}", d, x, "length_mean")), val.get((f"grpo.{d}.{x}", d, x, "length_mean"))
                st = val.get(("distill", d, x, "reward_mean"))
                f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
                ratio = "-" if st is None or not g else f"{st / g:.2f}"
                print(f"| {d} | {x} | {f(s)} | {f(g)} | {f(sl)} | {f(gl)} | {f(st)} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/think_max")
