"""Runs a recipe's stage graph on Ray, one Ray task per stage, resuming whatever is on disk.

A stage is skipped when its manifest says complete with the same config hash and input fingerprint; restored from
the run cache when an earlier output of that identity is kept there; re-run when either changed or when forced --
beside a finished output, in ``<stage>.attempt/``, which replaces it only when it completes (pipeline.runcache) --
and resumed from its last checkpoint when it was interrupted. Each stage
runs in a Ray worker with the CPUs/GPUs it declares, so independent stages run concurrently as resources allow. A
failing stage stops its dependants and lets unrelated stages finish.
"""
from __future__ import annotations

import json
import os
import socket
import shutil
import time
import traceback
from pathlib import Path

import yaml

from core.config import digest
from core.errors import error_line
from core.registry import STAGE_KINDS
from core.rundir import Manifest, RunLock, atomic_write_text, now

from .cluster import check_shared_storage
from .graph import StageSpec, ancestors, build_graph, config_hash, content_hash, dependants, fingerprints
from .recipe import Recipe, RecipeError, cross_check
from .runcache import RunCache, prepare, promote, settle
from .runstatus import status_rows  # noqa: F401  (pipeline status; imported from here by the CLI and the report)
from .schedule import fits, priorities


PROMPT_ALLOWANCE = 512       # prompt tokens an engine's max_model_len allows for beside the largest mode budget


def uses_fleet(config) -> bool:
    """Whether a stage's resolved config samples with an engine of the fleet (any ``engine`` of kind vllm in it,
    its own rollouts or its held-out evaluation)."""
    from pydantic import BaseModel

    from rollout.config import EngineConfig

    if isinstance(config, EngineConfig):
        return config.kind == "vllm"
    if isinstance(config, BaseModel):
        return any(uses_fleet(getattr(config, n)) for n in type(config).model_fields)
    if isinstance(config, (list, tuple)):
        return any(uses_fleet(v) for v in config)
    if isinstance(config, dict):
        return any(uses_fleet(v) for v in config.values())
    return False


def stage_task(ray, fn, fresh: bool):
    """``fn`` as a Ray task; ``fresh``: with ``max_calls=1``, a new worker process per stage. Ray reuses task workers,
    and gives a task ``max_calls=1`` by itself only when ``@ray.remote`` names the GPUs, not ``.options()`` (which
    refuses ``max_calls``): a reused worker keeps the last stage's CUDA context and memory, and may compute on the GPU
    the last stage was given. On the CPU too, for a real model: the heap a stage freed stays with its process
    (SmolLM2's ``control.seqkd`` ran in the worker ``distill`` had used: the node's used memory did not fall when
    ``distill`` ended, 17.6 GB, and the worker held 10.4 GB RSS five minutes into ``control.seqkd``; 24 GiB machine,
    the fleet beside it). :func:`fresh_workers` says which stages get one."""
    return ray.remote(max_retries=0, **({"max_calls": 1} if fresh else {}))(fn)


def fresh_workers(recipe, num_gpus: float) -> bool:
    """A stage gets a fresh worker when it asks for GPUs or trains a real model (``model.path``). CPU stages of the
    embedded tiny model share workers: their heap is a few hundred MB, and a fresh worker costs a Python start and the
    torch import per stage (measured: 10 s of 83 over two small pipeline tests)."""
    return bool(num_gpus) or recipe.model.path is not None


def stage_status(run_dir: Path, stage_id: str) -> dict:
    return Manifest(Path(run_dir) / stage_id).read()


def _node_info() -> dict:
    """Where this stage runs: the Ray node id and IP (``{}`` outside a Ray worker)."""
    try:
        import ray

        return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}
    except Exception:
        return {}


def _execute_stage(spec: StageSpec, run_dir: str, hashes: tuple[str, str], run: dict, driver=None) -> dict:
    """Body of the Ray task: runs one stage in its own worker process and writes its manifest.

    ``hashes``: (config hash, input fingerprint); ``run``: ``{"seed", "name", "logging"}`` of the recipe."""
    import pipeline.stages  # noqa: F401  (registers the stage kinds)
    from core.context import DriverGone, StageContext

    num_cpus = max(1, int(spec.resources.num_cpus))
    try:
        import torch

        torch.set_num_threads(num_cpus)
    except ImportError:
        pass
    kind = STAGE_KINDS[spec.kind]
    stage_dir = Path(run_dir) / run.get("dirs", {}).get(spec.id, spec.id)   # or its attempt (pipeline.runcache)
    heldout = getattr(spec.config, "heldout", None)
    evaluator = None
    if heldout is not None:
        from train.evaluate import HeldOutEvaluator

        evaluator = HeldOutEvaluator(heldout, workers=num_cpus, fleet=run.get("fleet"), who=spec.id)
    ctx = StageContext(stage_id=spec.id, kind=spec.kind, dir=stage_dir, config=spec.config,
                       deps={d: Path(run_dir) / d / "final" for d in spec.deps}, seed=run["seed"],
                       num_cpus=num_cpus, num_gpus=spec.resources.num_gpus, domain=spec.domain, mode=spec.mode,
                       driver=driver, logging=run["logging"], project=run["name"], evaluator=evaluator,
                       services={"fleet": run.get("fleet"), "placement": run.get("placement")})
    ctx.check_driver()
    m = ctx.manifest.read()
    ctx.manifest.update(id=spec.id, kind=spec.kind, status="running", config_hash=hashes[0],
                        inputs_hash=hashes[1], started=m.get("started") or now(), finished=None, error=None,
                        attempts=m.get("attempts", 0) + 1, pid=os.getpid(), deps=spec.deps,
                        resources=spec.resources.model_dump(), domain=spec.domain, mode=spec.mode,
                        node=_node_info())
    t0 = time.time()
    try:
        kind.check(spec)                   # the same checks `pipeline validate` ran
        if "code" in spec.scores:          # never train or evaluate on code rewards nothing could isolate
            from rewards.sandbox import DESCRIBE, require_sandbox

            sb = require_sandbox(isolation=run.get("sandbox", "namespaces"))   # the recipe's sandbox.isolation
            ctx.manifest.update(sandbox={"mode": sb, "isolation": DESCRIBE[sb]})
            (ctx.log.warning if sb == "rlimits" else ctx.log.info)(f"[{spec.id}] code sandbox: {sb} ({DESCRIBE[sb]})")
        summary = kind.run_fn()(ctx) or {}
        ctx.check_driver()
    except DriverGone:
        raise  # leave the manifest to whoever owns the run directory now
    except BaseException as e:
        ctx.log.error("".join(traceback.format_exception(e)))
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))     # Ctrl-C: the stage resumes on the next run
        ctx.manifest.update(status="failed", error=f"interrupted ({error_line(e)})" if stopped else error_line(e),
                            finished=now())
        raise
    finally:
        ctx.close()
    outputs = {"final": "final"} if ctx.final_dir.exists() else {}
    produced = content_hash(ctx.final_dir) if ctx.final_dir.exists() else digest(summary)
    ctx.manifest.update(status="complete", finished=now(), metrics=summary, outputs=outputs, output_hash=produced,
                        wall_s=round(time.time() - t0, 2))
    if run.get("prune_checkpoints") and outputs:   # a complete stage never resumes: final/ is all later stages read
        shutil.rmtree(ctx.checkpoints().root, ignore_errors=True)
    return summary


class Runner:
    def __init__(self, recipe: Recipe, run_dir: Path, recipe_path: str = "recipe", echo=print, live=None,
                 graph: list[StageSpec] | None = None):
        self.recipe, self.run_dir, self.recipe_path, self.echo = recipe, Path(run_dir), recipe_path, echo
        self.live = live                   # pipeline.live.LiveView (or None): refreshed while stages run
        self.graph = graph if graph is not None else build_graph(recipe)
        self.by_id = {s.id: s for s in self.graph}
        self.hashes = {s.id: config_hash(s) for s in self.graph}

    def _check_ids(self, ids, flag) -> None:
        for i in ids:
            if i not in self.by_id:
                raise RecipeError(f"{flag} {i}: no such stage (stages: {', '.join(self.by_id)})")

    def select(self, only=(), from_=None) -> set[str]:
        """The stages a run executes (when not up to date): ``--from`` a stage and everything downstream, ``--only``
        the named stages, else all. Whatever they need that has never completed in this run directory runs first
        (a fresh ``--only sft.math`` builds ``bootstrap``); a complete dependency is used as it is."""
        self._check_ids(only, "--only")
        if from_:
            self._check_ids([from_], "--from")
            chosen = dependants(self.graph, {from_})
        else:
            chosen = set(only) if only else set(self.by_id)
        missing = {d for d in ancestors(self.graph, chosen) - chosen
                   if stage_status(self.run_dir, d).get("status") != "complete"}
        if missing:
            self.echo(f"[deps] also running {', '.join(s.id for s in self.graph if s.id in missing)}: needed by the "
                      "selected stages and never completed here")
        return chosen | missing

    def _outputs(self) -> dict[str, str]:
        return {s.id: stage_status(self.run_dir, s.id).get("output_hash") for s in self.graph}

    def up_to_date(self, spec: StageSpec, fp: str) -> bool:
        m = stage_status(self.run_dir, spec.id)
        return (m.get("status") == "complete" and m.get("config_hash") == self.hashes[spec.id]
                and m.get("inputs_hash") == fp)

    def run(self, only=(), from_=None, force=(), address=None) -> int:
        import ray

        selected = self.select(only, from_)
        self._check_ids(force, "--force")
        with RunLock(self.run_dir):
            atomic_write_text(self.run_dir / "recipe.yaml",
                              yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False))
            # the config hashes it asks for, as this process computed them (`pipeline status` compares with them)
            atomic_write_text(self.run_dir / "hashes.json", json.dumps(self.hashes, indent=1, sort_keys=True) + "\n")
            address = address or self.recipe.ray.address
            init = dict(include_dashboard=False, logging_level="warning", log_to_driver=True)
            if address:
                ray.init(address=address, **init)
            else:
                ray.init(address="local", num_cpus=self.recipe.ray.num_cpus or os.cpu_count(),
                         num_gpus=self.recipe.ray.num_gpus, **init)
            try:
                if address:
                    cross_check(self.recipe, self.recipe_path, cluster=ray.cluster_resources(), graph=self.graph)
                    nodes = check_shared_storage(self.run_dir, ray)
                    if nodes > 1:
                        self.echo(f"[cluster] run directory {self.run_dir} is shared by all {nodes} nodes")
                return self._loop(selected, set(force), ray)
            finally:
                ray.shutdown()

    def _loop(self, selected: set[str], forced: set[str], ray) -> int:
        remotes = {gpu: stage_task(ray, _execute_stage, fresh_workers(self.recipe, gpu)) for gpu in (0, 1)}
        self.cluster = ray.cluster_resources()
        self.priority = priorities(self.graph)
        run_info = {"seed": self.recipe.seed, "name": self.recipe.name, "logging": self.recipe.logging,
                    "sandbox": self.recipe.sandbox.isolation, "prune_checkpoints": self.recipe.prune_checkpoints}
        cache = RunCache(self.run_dir, self.recipe.keep_outputs, self.echo)
        run_info["dirs"] = self.dirs = {}  # stage -> the folder it runs in: <stage> or <stage>.attempt
        needed = ancestors(self.graph, selected)
        done: dict[str, str] = {}          # id -> complete | failed | skipped
        running: dict = {}                 # ObjectRef -> (spec, t0)
        groups: dict = {}                  # ObjectRef -> the stage's placement group
        t_start = time.time()
        while True:
            fps = fingerprints(self.graph, self._outputs(), self.hashes)
            ready_specs: list = []
            for spec in self.graph:
                if spec.id in done or spec.id not in needed or any(r[0].id == spec.id for r in running.values()):
                    continue
                if any(done.get(d) in ("failed", "skipped") for d in spec.deps):
                    done[spec.id] = "skipped"
                    kept = stage_status(self.run_dir, spec.id).get("status") == "complete"
                    if spec.id in selected and not kept:    # a finished output is never written over
                        Manifest(self.run_dir / spec.id).update(id=spec.id, kind=spec.kind, status="skipped",
                                                                error="a dependency failed")
                    self.echo(f"[skip] {spec.id}: a dependency failed" + ("; its previous output is kept" * kept))
                    continue
                if not all(done.get(d) == "complete" for d in spec.deps):
                    continue
                fresh = spec.id in forced
                if spec.id not in selected or (not fresh and self.up_to_date(spec, fps[spec.id])):
                    if stage_status(self.run_dir, spec.id).get("status") != "complete":
                        if spec.id not in selected:
                            raise RecipeError(f"stage {spec.id} is needed by the selected stages but is not "
                                              "complete; include it (--from/--only) or run the whole recipe")
                    done[spec.id] = "complete"
                    if spec.id in selected:
                        self.echo(f"[done] {spec.id}: up to date, skipped")
                    continue
                got = settle(self.run_dir, spec.id, (self.hashes[spec.id], fps[spec.id]), fresh, cache)
                if got:
                    done[spec.id] = "complete"
                    self.echo(f"[done] {spec.id}: {got}")
                    fps = fingerprints(self.graph, self._outputs(), self.hashes)   # its dependants see its output
                    continue
                ready_specs.append((spec, fresh))
            # highest priority first (pipeline.schedule: the longest chain of work to the end), each only when its
            # CPUs/GPUs are free; smaller ones backfill; with nothing running, the first goes anyway (Ray queues it)
            ready_specs.sort(key=lambda x: -self.priority[x[0].id])
            for spec, fresh in ready_specs:
                if running and not fits(spec, self._free(running, run_info)):
                    continue
                self._prepare_dir(spec, fps[spec.id], fresh)
                if run_info.get("fleet") is None and uses_fleet(spec.config):
                    run_info["fleet"] = self._start_fleet(spec)
                layout, pg, options = self._placement(spec, ray)
                ref = remotes[int(bool(options.get("num_gpus")))].options(name=spec.id, **options).remote(
                    spec, str(self.run_dir), (self.hashes[spec.id], fps[spec.id]),
                    {**run_info, "placement": {"pg": pg, "layout": layout}}, (socket.gethostname(), os.getpid()))
                running[ref] = (spec, time.time())
                groups[ref] = pg
                # submitted to Ray, which starts it as soon as its resources are free (manifest `started`)
                self.echo(f"[start] {spec.id} ({spec.kind}; {spec.resources.num_cpus:g} CPU"
                          f"{f', {spec.resources.num_gpus:g} GPU' if spec.resources.num_gpus else ''})")
            if not running:
                break
            ready = []
            while not ready:               # wake up every live.interval seconds to refresh the live view
                ready, _ = ray.wait(list(running), num_returns=1,
                                    timeout=self.live.interval if self.live is not None else None)
                if self.live is not None:
                    self.live.tick(done, [r[0].id for r in running.values()])
            spec, t0 = running.pop(ready[0])
            ray.util.remove_placement_group(groups.pop(ready[0]))
            try:
                summary = ray.get(ready[0])
                if self.dirs[spec.id] != spec.id:
                    promote(self.run_dir, spec.id, cache)      # the finished output is replaced only now
                done[spec.id] = "complete"
                shown = ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, (int, float)))[:300]
                ran = stage_status(self.run_dir, spec.id).get("wall_s", time.time() - t0)
                self.echo(f"[done] {spec.id} in {ran:.0f}s {shown}")
                for w in stage_status(self.run_dir, spec.id).get("warnings") or []:
                    self.echo(f"[warn] {spec.id}: {w}")
            except Exception as e:  # RayTaskError wraps the stage's exception
                done[spec.id] = "failed"
                d = self.run_dir / self.dirs[spec.id]
                err = Manifest(d).read().get("error") or str(e).splitlines()[-1]
                kept = "; the previous output is kept" if d != self.run_dir / spec.id else ""
                self.echo(f"[FAIL] {spec.id}: {err} (log: {d / 'log.txt'}){kept}")
        if run_info.get("fleet") is not None:
            self._record_fleet(run_info["fleet"], ray)
        failed = [i for i, s in done.items() if s in ("failed", "skipped") and i in selected]
        self.echo(f"run finished in {time.time() - t_start:.0f}s: "
                  f"{sum(s == 'complete' for i, s in done.items() if i in selected)} complete, "
                  f"{len(failed)} failed or skipped" + (f" ({', '.join(failed)})" if failed else ""))
        return 1 if failed else 0

    def _free(self, running: dict, run_info: dict) -> dict[str, float]:
        """CPUs and GPUs of the cluster not held by the running stages or the fleet (the runner's own account:
        Ray's view of free resources lags behind placement groups just created)."""
        free = {k: float(self.cluster.get(k, 0.0)) for k in ("CPU", "GPU")}
        for spec, _ in running.values():
            free["CPU"] -= spec.resources.num_cpus
            free["GPU"] -= spec.resources.num_gpus
        if run_info.get("fleet") is not None:
            r = self.recipe.fleet.resources
            free["CPU"] -= r.num_cpus * self.recipe.fleet.engines
            free["GPU"] -= r.num_gpus * self.recipe.fleet.engines
        return free

    def _placement(self, spec: StageSpec, ray):
        """The stage's placement group (``pipeline.placement.stage_layout``: a bundle per learner rank, the
        teachers' GPUs) and the options that start its task in bundle 0; the stage places its other actors in the
        other bundles (``ctx.services["placement"]``)."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .placement import stage_layout

        layout = stage_layout(spec)
        bundles = [dict(b) for b in layout.bundles]
        bundles[0].update(spec.resources.custom)          # custom resources pin the stage's task to a node
        pg = ray.util.placement_group(bundles, strategy="STRICT_PACK", name=f"stage:{spec.id}")
        opts = {"num_cpus": layout.rank_resources["num_cpus"], "num_gpus": layout.rank_resources["num_gpus"],
                "resources": spec.resources.custom or None,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)}
        return layout, pg, opts

    def _start_fleet(self, spec: StageSpec):
        """The run's rollout fleet, started (asynchronously: stages wait in their first lease) the first time a stage
        that samples with ``vllm`` is about to start, from that stage's first dependency's model (every model of a
        run shares the architecture; on a GPU with fp4, an MXFP4A16 export of it, so packed weights load as is)."""
        from rollout.fleet import start_fleet
        from train.config import mode_budgets

        cfg = self.recipe.fleet
        if cfg is None:
            raise RecipeError(f"stage {spec.id} samples with engine kind vllm, but the recipe has no fleet section")
        model = self.run_dir / spec.deps[0] / "final"
        if cfg.fp4 and cfg.resources.num_gpus:
            from rollout.export import export_mxfp4_checkpoint

            packed = self.run_dir / "fleet" / "model"
            if not (packed / "config.json").exists():
                export_mxfp4_checkpoint(str(model), None, packed)
            model = packed
        max_pos = json.loads((model / "config.json").read_text()).get("max_position_embeddings") or 1 << 20
        max_len = cfg.max_model_len or min(max_pos, PROMPT_ALLOWANCE + max(mode_budgets(self.recipe).values()))
        import ray

        from .placement import fleet_layout

        bundles = fleet_layout(cfg).bundles
        pg = ray.util.placement_group(bundles, strategy="PACK", name="fleet") if all(bundles) else None
        self.echo(f"[fleet] starting {cfg.engines} vLLM engine(s) from {model} (max_model_len {max_len}, "
                  f"fp4 {cfg.fp4})")
        return start_fleet(str(model), cfg, max_len, self.recipe.seed, pg=pg)

    def _record_fleet(self, fleet, ray) -> None:
        try:
            stats = ray.get(fleet.stats.remote(), timeout=30)
        except Exception as e:  # noqa: BLE001 — the fleet failed to start: each stage that needed it said why
            stats = {"error": str(e).splitlines()[0][:300]}
        atomic_write_text(self.run_dir / "fleet.json", json.dumps(stats, indent=2) + "\n")
        if "starts" in stats:
            self.echo(f"[fleet] {stats['engines']} engine(s), {stats['starts']} start(s), "
                      f"{stats['replacements']} replacement(s), {stats['leases']} lease(s); served {stats['served']}")

    def _prepare_dir(self, spec: StageSpec, fp: str, fresh: bool) -> None:
        """Where the stage runs (pipeline.runcache.prepare; the worker gets it in ``run["dirs"]``): beside a
        finished output in ``<stage>.attempt/``; else in ``<stage>/``, kept when interrupted (it resumes), cleared
        when its config or inputs changed."""
        self.dirs[spec.id] = prepare(self.run_dir, spec.id, (self.hashes[spec.id], fp), fresh, self.echo)
