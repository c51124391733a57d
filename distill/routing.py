"""What the distill stage trains on: prompts drawn across domain x mode, and which teachers grade each one.

Everything here is a pure function of the recipe, the seed and the step, so a resumed stage draws exactly the
prompts an uninterrupted one would have drawn (no replay, no skip) without storing any data position.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Teacher:
    """One teacher checkpoint; several routes may share it (e.g. ``sft.math`` teaches math in every mode)."""
    name: str            # stage id, or the folder's name for a path teacher (metric key ``kl.<name>``)
    folder: str          # a Hugging Face folder


@dataclass(frozen=True)
class Draw:
    domain: str
    mode: str
    task: int            # index into the domain's train tasks

    @property
    def key(self) -> str:
        return f"{self.domain}.{self.mode}"


def route_table(recipe, dep=lambda stage: Path(stage)) -> dict[str, list[tuple[Teacher, float]]]:
    """``"domain.mode"`` -> [(teacher, weight)], from ``pipeline.graph.distill_teachers`` (the recipe's map with its
    defaults). ``dep(stage_id)`` gives a stage's final/ folder (``ctx.dep`` inside the stage)."""
    from pipeline.graph import distill_teachers

    table = {}
    for key, refs in distill_teachers(recipe).items():
        routes = []
        for ref in refs:
            if ref.stage is not None:
                t = Teacher(ref.stage, str(dep(ref.stage)))
            else:
                folder = Path(ref.path).expanduser()
                t = Teacher(_path_name(folder), str(folder))
            routes.append((t, float(ref.weight)))
        table[key] = routes
    return table


def _path_name(folder: Path) -> str:
    """A path teacher's name: its folder's name (``<stage>/final`` is named after the stage)."""
    name = folder.parent.name if folder.name == "final" and folder.parent.name else folder.name
    return name or str(folder)


def teachers_of(table: dict) -> dict[str, Teacher]:
    """Distinct teachers by name, in first-use order. Two different folders under one name are an error."""
    out: dict[str, Teacher] = {}
    for key, routes in table.items():
        for t, _ in routes:
            if t.name in out and out[t.name].folder != t.folder:
                raise ValueError(f"distill.teachers.{key}: two teachers named {t.name!r} "
                                 f"({out[t.name].folder} and {t.folder})")
            out.setdefault(t.name, t)
    return out


def mixture_weights(cfg, domains: list[str], modes: list[str], table: dict) -> dict[str, float]:
    """Prompt weight per ``domain.mode``: the recipe's ``mixture`` (keys it omits get 0), or uniform when empty."""
    keys = [f"{d}.{m}" for d in domains for m in modes]
    for k in cfg.mixture:
        if k not in keys:
            raise ValueError(f"distill.mixture.{k}: not a domain x mode of this recipe")
    weights = {k: float(cfg.mixture.get(k, 0.0)) for k in keys} if cfg.mixture else {k: 1.0 for k in keys}
    for k, w in weights.items():
        if w < 0:
            raise ValueError(f"distill.mixture.{k}: weight must be >= 0, got {w}")
        if w > 0 and not table.get(k):
            raise ValueError(f"distill.mixture.{k}: no teacher for this domain x mode (set distill.teachers.{k})")
    if not any(weights.values()):
        raise ValueError("distill.mixture: all weights are 0")
    return weights


def domain_repeats(weights: dict[str, float], domains: list[str]) -> dict[str, int]:
    """How many times each domain's demonstrations enter the union-SFT warm-up, so that it sees the domains in
    (about) the proportions of the distillation ``mixture``: a domain's weight is the sum over its modes, the
    lightest positive domain counts once, a domain with weight 0 is left out. Uniform weights give 1 everywhere."""
    w = {d: sum(v for k, v in weights.items() if k.split(".")[0] == d) for d in domains}
    low = min((v for v in w.values() if v > 0), default=1.0)
    return {d: (max(1, round(v / low)) if v > 0 else 0) for d, v in w.items()}


def draw_prompts(weights: dict[str, float], n_tasks: dict[str, int], n: int, seed: int, step: int) -> list[Draw]:
    """``n`` (domain, mode, task) draws for ``step``: a pure function of (weights, sizes, seed, step)."""
    rng = random.Random(f"distill:{seed}:{step}")
    keys = [k for k, w in weights.items() if w > 0]
    picks = rng.choices(keys, weights=[weights[k] for k in keys], k=n)
    out = []
    for k in picks:
        d, m = k.split(".")
        out.append(Draw(d, m, rng.randrange(n_tasks[d])))
    return out


def route(table: dict, domain: str, mode: str) -> list[tuple[Teacher, float]]:
    """The teachers (with weights) of a trajectory generated for ``domain`` in ``mode``."""
    routes = table.get(f"{domain}.{mode}")
    if not routes:
        raise KeyError(f"no teacher for {domain}.{mode}")
    return routes
