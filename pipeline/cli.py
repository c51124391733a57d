"""`pipeline`: run, validate, inspect and score post-training recipes.

    pipeline run RECIPE [--run-dir DIR] [--set a.b=v ...] [--only S ...] [--from S] [--force S ...] [--address A]
    pipeline validate RECIPE [--set ...] [--run-dir DIR]
    pipeline plan RECIPE [--cluster "nodes=2,gpus=8,gpu_mem_gb=141,cpus=96,ram_gb=1024"] [--set ...]
    pipeline stages RECIPE [--run-dir DIR]
    pipeline status RUN_DIR [--json]
    pipeline gc RUN_DIR [--keep BYTES]
    pipeline reward DOMAIN --input IN.jsonl [--output OUT.jsonl] [--workers N] [--mode MODE]
    pipeline eval (RUN_DIR | CHECKPOINT) [--recipe R] [--out DIR] [--workers N]
    pipeline report RUN_DIR [--out DIR]
    pipeline export RUN_DIR --stage STAGE [--format hf|mxfp4] --out DIR

Exit codes (the same from validate and run): 0 success, 1 a stage failed, 2 bad recipe or input (recipe, flags,
files, rows, model, a run directory that cannot be written: everything the preflight checks), 3 the run directory is
locked by another run (or, joining a cluster, not shared by every node).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_RUNDIR = 1, 2, 3


EXIT_CODES = ("exit codes (the same from validate and run): 0 success; 1 a stage failed; 2 bad recipe or input "
              "(what the preflight checks: recipe, flags, files, rows, model, tokenizer, sandbox, packages, a run "
              "directory that cannot be written); 3 the run directory is locked by another run")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        print(f"pipeline: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pipeline", description="DeepSeek-V4-style post-training pipeline", epilog=EXIT_CODES)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def recipe_args(sp):
        sp.add_argument("recipe", help="recipe YAML file")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set sft.steps=100 (repeatable)")

    r = sub.add_parser("run", help="run (or resume) a recipe's stage graph (after the preflight)", epilog=EXIT_CODES)
    recipe_args(r)
    r.add_argument("--run-dir", help="run directory (default: runs/<recipe name>)")
    r.add_argument("--only", nargs="+", default=[], metavar="STAGE", help="run only these stages")
    r.add_argument("--from", dest="from_", metavar="STAGE", help="run this stage and everything downstream")
    r.add_argument("--force", nargs="+", default=[], metavar="STAGE", help="re-run these stages from scratch")
    r.add_argument("--address", help="join an existing Ray cluster (e.g. auto or host:6379)")

    v = sub.add_parser("validate", help="the preflight: check a recipe and what it reads (rows, model, sandbox, "
                                        "engine, packages, run dir); exit 0 or 2 with one line", epilog=EXIT_CODES)
    recipe_args(v)
    v.add_argument("--run-dir", help="the run directory to check (default: runs/<recipe name>)")

    pl = sub.add_parser("plan", help="dry run: where every actor goes and its memory; exit 2 if it cannot fit")
    recipe_args(pl)
    pl.add_argument("--cluster", help='per node, e.g. "nodes=2,gpus=8,gpu_mem_gb=141,cpus=96,ram_gb=1024" '
                                      "(+ custom resources as name=N); default: this machine")

    s = sub.add_parser("stages", help="print the stage graph in run order (with status if a run exists)")
    recipe_args(s)
    s.add_argument("--run-dir")

    st = sub.add_parser("status", help="print the status of a run directory")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="machine-readable output")

    gc = sub.add_parser("gc", help="prune a run directory: the run cache to its budget, attempts no recipe resumes")
    gc.add_argument("run_dir")
    gc.add_argument("--keep", metavar="BYTES", help="cache budget for this pruning, e.g. 0 or 20GB (default: the "
                                                    "recipe's keep_outputs)")

    rw = sub.add_parser("reward", help="score completions from a JSONL file", add_help=True)
    rw.add_argument("rest", nargs=argparse.REMAINDER)

    ev = sub.add_parser("eval", help="evaluate every model of a run directory, or one Hugging Face checkpoint")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    ev.add_argument("--recipe", help="recipe YAML (default: RUN_DIR/recipe.yaml; built-in defaults for a checkpoint)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ev.add_argument("--out", help="results folder (default: RUN_DIR/eval, or evals/<checkpoint name>)")
    ev.add_argument("--workers", type=int, help="verifier workers (default: half the cores)")

    rp = sub.add_parser("report", help="write RUN_DIR/report/index.html with plots and the eval table")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="report folder (default: RUN_DIR/report)")

    ex = sub.add_parser("export", help="export a stage's model as a Hugging Face folder (or MXFP4) with a model card")
    ex.add_argument("run_dir")
    ex.add_argument("--stage", required=True, help="stage id whose final/ model to export, e.g. distill")
    ex.add_argument("--format", choices=["hf", "mxfp4"], default="hf")
    ex.add_argument("--out", required=True, help="output folder")
    return p


def _run_dir(args, recipe) -> Path:
    return Path(args.run_dir) if getattr(args, "run_dir", None) else Path("runs") / recipe.name


_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def _one_line(e) -> str:
    """An error as one line: line breaks that came in with the input (a key named "a\nb") are shown escaped."""
    return str(e).translate(str.maketrans(_BREAKS))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reward"]:
        from rewards.cli import main as reward_main

        return reward_main(argv[1:])
    args = _parser().parse_args(argv)
    from core.rundir import RunDirError

    from .recipe import RecipeError, load_with_graph

    try:
        if args.cmd == "status":
            return _status(args)
        if args.cmd == "gc":
            return _gc(args)
        if args.cmd in ("eval", "report", "export"):
            return _tools(args)
        if args.cmd in ("validate", "run"):     # the preflight: before any stage, engine or lock changes anything
            from .preflight import preflight

            recipe, graph, rep = preflight(args.recipe, args.overrides, run_dir=args.run_dir,
                                           address=getattr(args, "address", None), only=getattr(args, "only", ()),
                                           from_=getattr(args, "from_", None), write_cache=args.cmd == "run")
            print("\n".join(rep.lines()), flush=True)    # what was checked, after it all passed: a refusal is one line
            print(f"{args.recipe}: ok ({len(graph)} stages) -- preflight {rep.total:.2f} s", flush=True)
        else:   # planning for a cluster: resources are checked against it, not this machine
            recipe, graph = load_with_graph(args.recipe, args.overrides, check=args.cmd != "plan")
        if args.cmd == "plan":
            from .plan import main_plan

            rc, err = main_plan(recipe, args.recipe, args.cluster, echo=lambda m: print(m, flush=True), graph=graph)
            if err:
                print(f"error: {args.recipe}: {err}", file=sys.stderr)
            return rc
        if args.cmd == "validate":
            return 0
        if args.cmd == "stages":
            return _stages(args, recipe, graph)
        if args.cmd == "run":
            from .live import LiveView
            from .runner import Runner

            live = LiveView(graph, _run_dir(args, recipe))   # rich on a terminal, plain lines if not
            runner = Runner(recipe, _run_dir(args, recipe), recipe_path=args.recipe, echo=live.echo, live=live,
                            graph=graph)
            with live:
                rc = runner.run(only=args.only, from_=args.from_, force=args.force, address=args.address)
            _after_run(_run_dir(args, recipe), recipe)
            return rc
    except RecipeError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunDirError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_RUNDIR
    except OSError as e:  # e.g. a full disk under the run directory: one line, not a traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_RUNDIR
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


def _tools(args) -> int:
    if args.cmd == "eval":
        from .evaluation import eval_command

        out = eval_command(args.target, args.recipe, args.out, args.workers, args.overrides)
        print((out / "results.md").read_text(), end="")
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    elif args.cmd == "report":
        from .report import write_report

        print(f"wrote {write_report(Path(args.run_dir), args.out)}")
    else:
        from .export import export_stage

        print(f"wrote {export_stage(Path(args.run_dir), args.stage, args.format, Path(args.out))}")
    return 0


def _after_run(run_dir: Path, recipe) -> None:
    """After `pipeline run`: print the eval table (when the recipe evaluates) and write the report."""
    table = run_dir / "eval" / "results.md"
    if recipe.eval is not None and table.exists():
        print(table.read_text(), end="", flush=True)
    try:
        from .report import write_report

        print(f"report: {write_report(run_dir)}", flush=True)
    except ImportError as e:  # matplotlib is in the `report` extra
        print(f"report skipped: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 — a report problem never fails a finished run
        print(f"report failed: {type(e).__name__}: {e}", flush=True)


def _stages(args, recipe, graph) -> int:
    from .runner import stage_status

    run_dir = _run_dir(args, recipe)
    has_run = run_dir.is_dir()
    for i, s in enumerate(graph, 1):
        status = stage_status(run_dir, s.id).get("status", "pending") if has_run else ""
        deps = ", ".join(s.deps) or "-"
        res = f"{s.resources.num_cpus:g} cpu" + (f", {s.resources.num_gpus:g} gpu" if s.resources.num_gpus else "")
        print(f"{i:3d}. {s.id:28s} kind={s.kind:10s} needs: {deps:24s} [{res}]" + (f"  {status}" if has_run else ""))
    return 0


def _status(args) -> int:
    from .runner import status_rows

    rows = status_rows(Path(args.run_dir))
    if args.json:
        keys = ("id", "kind", "status", "started", "finished", "metrics", "error", "warnings", "attempt")
        print(json.dumps({"stages": [{k: r[k] for k in keys} for r in rows]}, indent=2, default=str))
        return 0
    print(f"{'stage':28s} {'status':9s} {'started':25s} {'finished':25s} metrics")
    for r in rows:
        m = ", ".join(f"{k}={v:.3g}" for k, v in r["metrics"].items() if isinstance(v, (int, float)))[:120]
        print(f"{r['id']:28s} {r['status']:9s} {str(r['started'] or '-'):25s} {str(r['finished'] or '-'):25s} "
              f"{m}{'  error: ' + r['error'] if r.get('error') else ''}")
        for w in r.get("warnings") or []:      # e.g. a corrupt checkpoint skipped on resume
            print(f"{'':28s} warning: {w}")
    return 0


def _gc(args) -> int:
    from .recipe import RecipeError
    from .runcache import parse_bytes
    from .runstatus import gc

    try:
        keep = parse_bytes(args.keep)
    except ValueError as e:
        raise RecipeError(f"--keep: {e}") from None
    gc(Path(args.run_dir), keep, echo=lambda m: print(m, flush=True))
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
