"""Summarise what the reliability battery survived (the figures of docs/reliability.md).

    python -m pytest -q tests/reliability && python tests/reliability/summarize.py

Reads ``$PIPELINE_REL_COUNTS`` (default /tmp/pipeline-reliability/counts.jsonl; one line per test, written by
rel_helpers.record) and keeps the latest line per test.
"""
import json
import os
import sys
from pathlib import Path

path = Path(os.environ.get("PIPELINE_REL_COUNTS", "/tmp/pipeline-reliability/counts.jsonl"))
if not path.exists():
    sys.exit(f"{path}: no counts yet; run the battery first")
latest = {}
for line in path.read_text().splitlines():
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        continue
    latest[r["test"]] = r


def total(key):
    return sum(r.get(key, 0) for r in latest.values() if isinstance(r.get(key, 0), (int, float)))


figures = {
    "kill points survived (driver SIGKILL, process group)": total("kill_points"),
    "worker deaths survived (reward workers, sandbox zygotes, teacher actor, vLLM engine actor)":
        total("worker_deaths") + total("teacher_actor_deaths"),
    "corruptions detected (checksums; fallback to the previous good checkpoint)": total("corruptions_detected"),
    "write failures injected (ENOSPC)": total("write_failures"),
    "hostile completions scored": total("inputs_tried"),
    "hostile recipes / --set overrides checked": total("recipes_tried"),
    "concurrent runs refused": total("concurrent_runs_refused"),
    "items lost / steps replayed or skipped": total("items_lost") + total("lost_or_replayed"),
}
for k, v in figures.items():
    print(f"{v:8g}  {k}")
print(f"\nper test ({path}):")
for t, r in sorted(latest.items()):
    print(f"  {t}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("test", "time", "events", "landed")))
