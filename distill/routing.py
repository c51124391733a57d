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


def route_table(teachers: dict, dep=lambda stage: Path(stage)) -> dict[str, list[tuple[Teacher, float]]]:
    """``"domain.mode"`` -> [(teacher, weight)] from the stage's resolved teacher map (``DistillStage.teachers``).
    ``dep(stage_id)`` gives a stage's final/ folder (``ctx.dep`` inside the stage)."""
    return {key: [(Teacher(ref.name, str(dep(ref.stage)) if ref.stage is not None
                           else str(Path(ref.path).expanduser())), float(ref.weight)) for ref in refs]
            for key, refs in teachers.items()}


def teachers_of(table: dict) -> dict[str, Teacher]:
    """Distinct teachers by name, in first-use order (names are unique: ``distill.config.check_distill``)."""
    out: dict[str, Teacher] = {}
    for routes in table.values():
        for t, _ in routes:
            out.setdefault(t.name, t)
    return out


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
