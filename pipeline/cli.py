"""`pipeline`: run, validate, inspect and score post-training recipes.

    pipeline run RECIPE [--run-dir DIR] [--set a.b=v ...] [--only S ...] [--from S] [--force S ...] [--address A]
    pipeline validate RECIPE [--set ...]
    pipeline stages RECIPE [--run-dir DIR]
    pipeline status RUN_DIR [--json]
    pipeline reward DOMAIN --input IN.jsonl [--output OUT.jsonl] [--workers N] [--mode MODE]

Exit codes: 0 success, 1 a stage failed, 2 bad input (recipe, flags, files), 3 run-directory problem (locked, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RUNDIR = 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        print(f"pipeline: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pipeline", description="DeepSeek-V4-style post-training pipeline")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def recipe_args(sp):
        sp.add_argument("recipe", help="recipe YAML file")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sft.steps=100 (repeatable)")

    r = sub.add_parser("run", help="run (or resume) a recipe's stage graph")
    recipe_args(r)
    r.add_argument("--run-dir", help="run directory (default: runs/<recipe name>)")
    r.add_argument("--only", nargs="+", default=[], metavar="STAGE", help="run only these stages")
    r.add_argument("--from", dest="from_", metavar="STAGE", help="run this stage and everything downstream")
    r.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="re-run these stages from scratch")
    r.add_argument("--address", help="join an existing Ray cluster (e.g. auto or host:6379)")

    v = sub.add_parser("validate", help="check a recipe; exit 0 or 2 with one line naming the problem")
    recipe_args(v)

    s = sub.add_parser("stages", help="print the stage graph in run order (with status if a run exists)")
    recipe_args(s)
    s.add_argument("--run-dir")

    st = sub.add_parser("status", help="print the status of a run directory")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    rw = sub.add_parser("reward", help="score completions from a JSONL file", add_help=True)
    rw.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _run_dir(args, recipe) -> Path:
    return Path(args.run_dir) if getattr(args, "run_dir", None) else Path("runs") / recipe.name


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reward"]:
        from rewards.cli import main as reward_main

        return reward_main(argv[1:])
    args = _parser().parse_args(argv)
    from .core.rundir import RunDirError
    from .recipe import RecipeError, load_recipe

    try:
        if args.cmd == "status":
            return _status(args)
        recipe = load_recipe(args.recipe, args.overrides)
        if args.cmd == "validate":
            from .graph import build_graph

            print(f"{args.recipe}: ok ({len(build_graph(recipe))} stages)")
            return 0
        if args.cmd == "stages":
            return _stages(args, recipe)
        if args.cmd == "run":
            from .runner import Runner

            runner = Runner(recipe, _run_dir(args, recipe), recipe_path=args.recipe,
                            echo=lambda m: print(m, flush=True))
            return runner.run(only=args.only, from_=args.from_, force=args.force, address=args.address)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUNDIR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _stages(args, recipe) -> int:
    from .graph import build_graph
    from .runner import stage_status

    run_dir = _run_dir(args, recipe)
    has_run = run_dir.is_dir()
    for i, s in enumerate(build_graph(recipe), 1):
        status = stage_status(run_dir, s.id).get("status", "pending") if has_run else ""
        deps = ", ".join(s.deps) or "-"
        res = f"{s.resources.num_cpus:g} cpu" + (f", {s.resources.num_gpus:g} gpu" if s.resources.num_gpus else "")
        print(f"{i:3d}. {s.id:28s} kind={s.kind:10s} needs: {deps:24s} [{res}]" + (f"  {status}" if has_run else ""))
    return 0


def _status(args) -> int:
    from .runner import status_rows

    rows = status_rows(Path(args.run_dir))
    if args.json:
        print(json.dumps({"stages": [{k: r[k] for k in ("id", "kind", "status", "started", "finished", "metrics")}
                                     for r in rows]}, indent=2, default=str))
        return 0
    print(f"{'stage':28s} {'status':9s} {'started':25s} {'finished':25s} metrics")
    for r in rows:
        m = ", ".join(f"{k}={v:.3g}" for k, v in r["metrics"].items() if isinstance(v, (int, float)))[:120]
        print(f"{r['id']:28s} {r['status']:9s} {str(r['started'] or '-'):25s} {str(r['finished'] or '-'):25s} "
              f"{m}{'  error: ' + r['error'] if r.get('error') else ''}")
    return 0


def entry() -> None:
    """Console-script entry: also exits quietly when the reader of our output goes away (``| head``)."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    entry()
