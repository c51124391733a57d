"""The stage graph: which stages a recipe asks for, their dependencies, configs, resources and hashes.

Stage ids: ``bootstrap``, ``sft.<domain>``, ``grpo.<domain>.<mode>``, ``distill``, ``eval``. A stage's
*config hash* covers everything in the recipe that changes what it computes; its *fingerprint* chains that with its
dependencies' fingerprints, so a change upstream re-runs everything downstream.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .recipe import Recipe, Resources


@dataclass
class StageSpec:
    id: str
    kind: str
    deps: list[str]
    config: Any                 # typed stage config
    resources: Resources
    config_key: str             # where the config lives in the recipe (for error messages)
    domain: str | None = None
    mode: str | None = None
    hashed: dict = field(default_factory=dict)   # what the config hash covers

    @property
    def config_hash(self) -> str:
        return _hash(self.hashed)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_graph(recipe: Recipe) -> list[StageSpec]:
    """Stages in run order (a topological order, stable by id). Raises ValueError on a bad reference."""
    model = recipe.model.model_dump()
    stages: list[StageSpec] = [StageSpec(
        "bootstrap", "bootstrap", [], recipe.bootstrap, recipe.bootstrap.resources, "bootstrap",
        hashed={"model": model, "seed": recipe.seed})]
    if recipe.sft is not None:
        for d in recipe.domains:
            cfg = recipe.sft.for_domain(d)
            learner = recipe.learner_for(cfg.learner)
            stages.append(StageSpec(
                f"sft.{d}", "sft", [cfg.init_from], cfg, cfg.resources, "sft", domain=d,
                hashed={"sft": cfg.model_dump(), "learner": learner.model_dump(), "seed": recipe.seed,
                        "modes": recipe.modes, "task": recipe.task_source(d).model_dump(), "domain": d}))
    if recipe.grpo is not None:
        for d in recipe.domains:
            for mode in recipe.grpo.modes or recipe.modes:
                cfg = recipe.grpo.resolved(d, mode)
                learner = recipe.learner_for(cfg.learner)
                stages.append(StageSpec(
                    f"grpo.{d}.{mode}", "grpo", [cfg.init_from], cfg, cfg.resources, "grpo", domain=d, mode=mode,
                    hashed={"grpo": cfg.model_dump(), "learner": learner.model_dump(), "seed": recipe.seed,
                            "task": recipe.task_source(d).model_dump(), "domain": d, "mode": mode}))
    if recipe.distill is not None:
        cfg = recipe.distill
        teachers = distill_teachers(recipe)
        deps = [cfg.student_from] + sorted({t.stage for ts in teachers.values() for t in ts if t.stage})
        stages.append(StageSpec(
            "distill", "distill", list(dict.fromkeys(deps)), cfg, cfg.resources, "distill",
            hashed={"distill": cfg.model_dump(), "teachers": {k: [t.model_dump() for t in v]
                                                              for k, v in teachers.items()},
                    "learner": recipe.learner_for(cfg.learner).model_dump(), "seed": recipe.seed,
                    "modes": recipe.modes, "domains": recipe.domains,
                    "tasks": {d: recipe.task_source(d).model_dump() for d in recipe.domains}}))
    if recipe.eval is not None:
        cfg = recipe.eval
        model_stages = [s.id for s in stages]
        targets = cfg.models if cfg.models is not None else model_stages
        stages.append(StageSpec(
            "eval", "eval", list(targets), cfg, cfg.resources, "eval.models",
            hashed={"eval": cfg.model_dump(), "seed": recipe.seed, "modes": recipe.modes, "domains": recipe.domains,
                    "tasks": {d: recipe.task_source(d).model_dump() for d in recipe.domains}}))
    ids = {s.id for s in stages}
    for s in stages:
        for dep in s.deps:
            if dep not in ids:
                field = {"sft": "sft.init_from", "grpo": "grpo.init_from", "distill": "distill.student_from/teachers",
                         "eval": "eval.models"}.get(s.kind, s.config_key)
                raise ValueError(f"{field}: stage {s.id} depends on unknown stage {dep!r} "
                                 f"(known: {', '.join(sorted(ids))})")
            if dep == s.id:
                raise ValueError(f"{s.config_key}: stage {s.id} depends on itself")
    return _toposort(stages)


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


def fingerprints(graph: list[StageSpec], tokens: dict[str, str] | None = None) -> dict[str, str]:
    """Per stage: hash(config hash, dependencies' fingerprints, dependencies' completion tokens).

    ``tokens`` maps a completed stage to the token written when it completed, so re-running an upstream stage
    (even with the same config) invalidates what was built on its old outputs.
    """
    tokens = tokens or {}
    fp: dict[str, str] = {}
    for s in graph:
        fp[s.id] = _hash({"config": s.config_hash,
                          "deps": {d: [fp[d], tokens.get(d)] for d in s.deps}})
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


def distill_teachers(recipe: Recipe) -> dict:
    """``"domain.mode"`` -> teacher refs; by default each domain x mode is taught by its GRPO teacher."""
    from .recipe import TeacherRef

    cfg = recipe.distill
    out = {}
    for d in recipe.domains:
        for m in recipe.modes:
            key = f"{d}.{m}"
            if key in cfg.teachers:
                out[key] = cfg.teachers[key]
            elif recipe.grpo is not None and m in (recipe.grpo.modes or recipe.modes):
                out[key] = [TeacherRef(stage=f"grpo.{d}.{m}")]
            elif recipe.sft is not None:
                out[key] = [TeacherRef(stage=f"sft.{d}")]
    return out
