"""What the preflight costs: `pipeline validate recipes/think_max.yaml` (the whole preflight, and the process), and
the row checks of a 1,000,000-row JSON Lines file read by an SFT and a GRPO stage (streamed), then again from the
run directory's record (a resume).

    .venv/bin/python bench/preflight.py [--rows 1000000] [--keep FILE]

Figures go in docs/recipe_sections/preflight.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = [
    {"messages": [{"role": "user", "content": "Tom has {a} pens and gets {b} more. How many pens does he have?"},
                  {"role": "assistant", "content": "He has {a} + {b} = {c} pens. The answer is \\boxed{{{c}}}.",
                   "reasoning_content": "{a} + {b} = {c}"}], "answer": "{c}"},
    {"messages": [{"role": "user", "content": "What is {a} + {b}?"},
                  {"role": "assistant", "content": "The answer is \\boxed{{{c}}}."}], "answer": "{c}"},
]


def write_rows(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 97, i % 89
            t = json.dumps(ROWS[i % 2])
            f.write(t.replace("{a}", str(a)).replace("{b}", str(b)).replace("{{{c}}}", "{" + str(a + b) + "}")
                    .replace("{c}", str(a + b)) + "\n")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the row-check workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", help="write the rows file here (default: a temporary folder)")
    a = ap.parse_args()
    os.chdir(ROOT)
    import yaml

    from pipeline.preflight import preflight

    # 1. think_max: the whole preflight in-process, and `pipeline validate` as a user runs it
    rep = preflight("recipes/think_max.yaml")[2]
    parts = ", ".join(f"{n} {dt:.2f}" for n, dt, _ in rep.parts)
    t0, cpu0 = time.perf_counter(), _cpu()
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", "recipes/think_max.yaml"],
                       capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    assert r.returncode == 0, r.stderr
    print(f"think_max: preflight {rep.total:.2f} s ({parts}); `pipeline validate` process {wall:.2f} s "
          f"({cpu:.2f} CPU-s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    # 2. a 1,000,000-row file: SFT (the conversion of each row too) and GRPO read it
    tmp = Path(tempfile.mkdtemp())
    data = Path(a.keep) if a.keep else tmp / "rows.jsonl"
    t0 = time.perf_counter()
    write_rows(data, a.rows)
    print(f"wrote {a.rows:,} rows ({data.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    recipe = {"name": "bench_rows", "ray": {"num_cpus": 2, "num_gpus": 0}, "domains": ["math"],
              "modes": ["non_think", "think_high"],
              "tasks": {"math": {"source": "json", "data_files": str(data), "eval_split": "train[:32]",
                                 "n_train": a.rows, "n_eval": 32}},
              "sft": {"steps": 10}, "grpo": {"steps": 1, "modes": ["non_think"]}}
    rf = tmp / "bench_rows.yaml"
    rf.write_text(yaml.safe_dump(recipe))
    run_dir = tmp / "run"
    grpo_only = tmp / "bench_grpo.yaml"
    grpo_only.write_text(yaml.safe_dump({**recipe, "sft": None, "grpo": {**recipe["grpo"], "init_from": "bootstrap"}}))
    for label, rf_, kw in (("SFT + GRPO, first run (checked, recorded)", rf, {"write_cache": True}),
                           ("SFT + GRPO, resume (recorded)", rf, {}),
                           ("GRPO only (no SFT conversion), validate", grpo_only, {})):
        cpu0 = _cpu()
        rep = preflight(str(rf_), run_dir=run_dir, **kw)[2]
        rows = next((dt, w) for n, dt, w in rep.parts if n == "rows")
        print(f"{a.rows:,}-row file, {label}: rows {rows[0]:.1f} s ({rows[1]}); preflight {rep.total:.1f} s, "
              f"{_cpu() - cpu0:.1f} CPU-s (workers included); load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores")
    if not a.keep:
        data.unlink()


if __name__ == "__main__":
    main()
