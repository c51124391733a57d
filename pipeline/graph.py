"""The stage graph: which stages a recipe asks for, their dependencies, fully resolved configs and hashes.

Every registered stage kind whose recipe section is present expands into its stages (``StageKind.expand``, in the
kinds' ``order``), each with its fully resolved config: per-domain and per-mode overrides applied, the learner
merged, typed shaping, defaults taken from other sections resolved. The graph is built once per command; a stage
reads only its own resolved config.

Identity: a field is in a stage's hash exactly when it can change what the stage computes. A stage's *config hash*
is the hash of its resolved config without its operational fields (``core.config.identity``; docs/recipe.md has the
table), plus the content of the files outside the run it reads (``StageSpec.inputs``: data files, an adopted model
folder, path teachers), plus what no field of its config carries: the rollout fleet's settings that shape samples,
for a stage that samples with the fleet (its own rollouts, or the eval stage's; ``StageSpec.fleet``), and the
learner's world size where ``learner.ranks`` is unset (the stage's GPUs and placement set it:
``pipeline.placement.learner_ranks``). Its *fingerprint* chains that with its dependencies' fingerprints and the
content hash of their outputs (``output_hash`` in their manifests), so a change upstream re-runs everything
downstream, while an operational change (resources that keep the world size, checkpoint cadence, logging) re-runs
nothing.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pydantic import BaseModel

from core.config import digest, identity, is_operational
from core.registry import STAGE_KINDS, StageSpec

from . import stages as _kinds  # noqa: F401  (registers the built-in stage kinds)

__all__ = ["StageSpec", "build_graph", "check_graph", "config_hash", "fingerprints", "dependants", "ancestors",
           "content_hash", "samples_with_fleet"]


def build_graph(recipe, check: bool = True) -> list[StageSpec]:
    """Stages in run order (a topological order, stable by id). Raises ValueError (one line) on a bad reference
    or a config a stage would refuse at run time (``StageKind.check``)."""
    specs: list[StageSpec] = []
    for kind in sorted(STAGE_KINDS.values(), key=lambda k: k.order):
        if getattr(recipe, kind.section, None) is not None:
            specs += kind.expand(recipe, list(specs))
    ids = {s.id for s in specs}
    for s in specs:
        for dep in s.deps:
            if dep not in ids:
                raise ValueError(f"{s.dep_field or s.config_key}: stage {s.id} depends on unknown stage {dep!r} "
                                 f"(known: {', '.join(sorted(ids))})")
            if dep == s.id:
                raise ValueError(f"{s.config_key}: stage {s.id} depends on itself")
    order = _toposort(specs)
    fleet = getattr(recipe, "fleet", None)
    for s in order:
        if fleet is not None and samples_with_fleet(s.config):
            s.fleet = fleet.rollout_identity()
    if check:
        check_graph(order)
    return order


def check_graph(graph: list[StageSpec]) -> None:
    """Every stage's run-time config checks (``StageKind.check``), as its worker runs them before any work."""
    for s in graph:
        STAGE_KINDS[s.kind].check(s)


def _toposort(stages: list[StageSpec]) -> list[StageSpec]:
    by_id = {s.id: s for s in stages}
    order, state = [], {}

    def visit(s: StageSpec, path: tuple):
        if state.get(s.id) == "done":
            return
        if state.get(s.id) == "visiting":
            raise ValueError(f"{s.config_key}: dependency cycle {' -> '.join(path + (s.id,))}")
        state[s.id] = "visiting"
        for d in s.deps:
            visit(by_id[d], path + (s.id,))
        state[s.id] = "done"
        order.append(s)

    for s in stages:
        visit(s, ())
    return order


def content_hash(path: str | os.PathLike) -> str:
    """Hash of a file's or folder's content (files of up to 64 MiB fully; larger ones by size and their first and
    last MiB, so an adopted multi-GB model folder is fingerprinted in milliseconds). A missing path hashes to
    ``missing``; a hub id (not a local path) to itself."""
    p = Path(path).expanduser()
    if not p.exists():
        return "missing" if str(path).startswith(("/", ".", "~")) else f"id:{path}"
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(p) if f != p else f.name).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def samples_with_fleet(config) -> bool:
    """Whether what a stage computes comes from the fleet's samples: an ``engine`` of kind vllm in the part of its
    resolved config that is identity (its own rollouts, the eval stage's held-out spec; not a training stage's own
    held-out rows, which carry their spec, fleet included)."""
    from rollout.config import EngineConfig

    if isinstance(config, EngineConfig):
        return config.kind == "vllm"
    if isinstance(config, BaseModel):
        cls = type(config)
        return any(samples_with_fleet(getattr(config, n)) for n in cls.model_fields if not is_operational(cls, n))
    if isinstance(config, (list, tuple)):
        return any(samples_with_fleet(v) for v in config)
    if isinstance(config, dict):
        return any(samples_with_fleet(v) for v in config.values())
    return False


def config_hash(spec: StageSpec) -> str:
    ident = {"kind": spec.kind, "config": identity(spec.config), "inputs": {p: content_hash(p) for p in spec.inputs}}
    if spec.fleet is not None:
        ident["fleet"] = spec.fleet
    w = STAGE_KINDS[spec.kind].workload(spec)
    if w.learner is not None and w.learner.ranks is None:   # (set, the config holds the world size)
        from .placement import learner_ranks

        world = learner_ranks(spec, w)
        if world != 1:   # one rank, the CPU default, keeps the hash of a run made before the world size counted
            ident["world"] = world
    return digest(ident)


def fingerprints(graph: list[StageSpec], outputs: dict[str, str] | None = None,
                 hashes: dict[str, str] | None = None) -> dict[str, str]:
    """Per stage: hash(config hash, dependencies' fingerprints and output hashes).

    ``outputs`` maps a completed stage to the content hash of what it produced, so re-running an upstream stage
    invalidates what was built on its old outputs -- unless it produced exactly the same files.
    """
    outputs = outputs or {}
    fp: dict[str, str] = {}
    hashes = hashes or {s.id: config_hash(s) for s in graph}
    for s in graph:
        fp[s.id] = digest({"config": hashes[s.id], "deps": {d: [fp[d], outputs.get(d)] for d in s.deps}})
    return fp


def dependants(graph: list[StageSpec], roots: set[str]) -> set[str]:
    """``roots`` and every stage downstream of them."""
    out = set(roots)
    changed = True
    while changed:
        changed = False
        for s in graph:
            if s.id not in out and any(d in out for d in s.deps):
                out.add(s.id)
                changed = True
    return out


def ancestors(graph: list[StageSpec], roots: set[str]) -> set[str]:
    """``roots`` and every stage they depend on, directly or not."""
    by_id = {s.id: s for s in graph}
    out, todo = set(), list(roots)
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            todo.extend(by_id[i].deps)
    return out
