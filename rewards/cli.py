"""``pipeline reward DOMAIN --input IN.jsonl [--output OUT.jsonl] [--workers N] [--mode MODE]``.

Each input line holds a sample's fields plus ``completion`` (and optionally ``mode``, else ``--mode``). Each output
line is the input plus ``reward`` (float) and ``details``. A bad line (not JSON, not an object, no string
``completion``, unknown mode) gets reward 0 and an error in ``details``; the run goes on. A summary (count, mean,
errors, throughput) goes to stderr. Exit status 0 unless the arguments or files are unusable (2).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .base import DOMAINS, Verdict, score_batch
from core.chat import MODES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pipeline reward", description="Score completions with a reward verifier.")
    p.add_argument("domain", choices=DOMAINS)
    p.add_argument("--input", required=True, help="JSONL: sample fields + completion per line")
    p.add_argument("--output", help="JSONL output (default: stdout)")
    p.add_argument("--workers", type=int, default=None, help="verifier workers / sandboxes (default: CPU count)")
    p.add_argument("--mode", choices=MODES, default="non_think", help="mode for lines without a 'mode' field")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reward":
        argv = argv[1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.workers is not None and args.workers < 1:
        print("--workers must be >= 1", file=sys.stderr)
        return 2
    if args.domain == "code":                   # never score code as all-zero because nothing could isolate it
        from .sandbox import SandboxUnavailable, require_sandbox

        try:
            require_sandbox()
        except SandboxUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        with open(args.input, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        print(f"cannot read {args.input}: {e}", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    rows: list[dict] = []
    verdicts: list[Verdict | None] = []
    todo = []  # indices of valid rows
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            rows.append({"raw": line[:1000]})
            verdicts.append(Verdict(0.0, {"error": f"bad line: not JSON ({type(e).__name__})"}))
            continue
        if not isinstance(row, dict):
            rows.append({"raw": line[:1000]})
            verdicts.append(Verdict(0.0, {"error": "bad line: not a JSON object"}))
            continue
        rows.append(row)
        if not isinstance(row.get("completion"), str):
            verdicts.append(Verdict(0.0, {"error": "bad line: no string 'completion'"}))
        elif row.get("mode", args.mode) not in MODES:
            verdicts.append(Verdict(0.0, {"error": f"bad line: unknown mode {row.get('mode')!r}"}))
        else:
            verdicts.append(None)
            todo.append(len(rows) - 1)

    if todo:
        sample_of = lambda r: {k: v for k, v in r.items() if k not in ("completion", "mode", "reward", "details")}
        scored = score_batch(args.domain, [rows[i]["completion"] for i in todo], [sample_of(rows[i]) for i in todo],
                             [rows[i].get("mode", args.mode) for i in todo], workers=args.workers)
        for i, v in zip(todo, scored):
            verdicts[i] = v

    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for row, v in zip(rows, verdicts):
            rec = dict(row)
            rec["reward"] = v.score
            rec["details"] = v.details
            out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    dt = time.monotonic() - t0
    n = len(verdicts)
    errors = sum(1 for v in verdicts if v.details.get("error"))
    mean = sum(v.score for v in verdicts) / n if n else 0.0
    unscored = sum(1 for v in verdicts if v.unscored)      # verifier failures: 0s that judged nothing
    print(json.dumps({"domain": args.domain, "count": n, "mean_reward": round(mean, 4), "errors": errors,
                      "reward_errors": unscored, "seconds": round(dt, 3), "per_second": round(n / dt, 1) if dt > 0 else None}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
