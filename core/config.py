"""The strict config base every recipe section builds on, and what a stage's identity is made of.

``Strict``: unknown keys are errors and assignments are validated. ``Resources``: what a stage asks Ray for.

Identity. A stage's hash covers its fully resolved config (``identity``) and nothing operational. A field is
*operational* when changing it cannot change what the stage computes -- where it runs, how often it checkpoints, how
many checkpoints it keeps, what it logs to -- and is declared so where it is defined::

    save_every: int = operational(Field(50, ge=1))

``identity(model)`` is the model's JSON dump with every operational field (at any depth) left out.

Two things a stage's hash also holds that no section field carries (``pipeline.graph.config_hash``): the settings of
the run's rollout fleet that shape samples (``rollout.config.FleetConfig``), for every stage that samples with it,
and the learner's world size when ``learner.ranks`` is unset (then the stage's GPUs set it). A field that sets the world
size (or the fleet's dtype) but is otherwise operational is declared ``operational(..., sets=...)``. docs/recipe.md
has a table of every field of every section, identity or operational (generated from these declarations).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DOMAINS = ("math", "code", "agent", "instruct")
MODES = ("non_think", "think_high", "think_max")
Domain = Literal["math", "code", "agent", "instruct"]
Mode = Literal["non_think", "think_high", "think_max"]

_OPERATIONAL = "operational"
_SETS = "sets"
WORLD_SIZE = "the learner's world size where learner.ranks is unset"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def operational(field: Any = None, why: str = "", sets: str = "") -> Any:
    """Mark a field as operational (excluded from the stage hash). ``field``: a ``Field(...)`` or a default value.
    ``sets``: what the field resolves that *is* identity, and is hashed resolved (e.g. the learner's world size)."""
    if not hasattr(field, "json_schema_extra"):
        field = Field(field)
    extra = dict(field.json_schema_extra or {})
    extra[_OPERATIONAL] = why or True
    if sets:
        extra[_SETS] = sets
    field.json_schema_extra = extra
    field._attributes_set["json_schema_extra"] = extra   # what pydantic copies when it builds the model class
    return field


def operational_sets(model_cls: type[BaseModel], name: str) -> str:
    """What an operational field resolves that is identity (``operational(..., sets=...)``), or ""."""
    f = model_cls.model_fields.get(name)
    return str(f.json_schema_extra.get(_SETS, "")) if f is not None and isinstance(f.json_schema_extra, dict) else ""


def is_operational(model_cls: type[BaseModel], name: str) -> bool:
    f = model_cls.model_fields.get(name)
    return bool(f is not None and isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get(_OPERATIONAL))


def operational_fields(model_cls: type[BaseModel]) -> list[str]:
    return [n for n in model_cls.model_fields if is_operational(model_cls, n)]


def identity(value: Any) -> Any:
    """JSON-able dump of ``value`` without operational fields (recursively through models, dicts and lists)."""
    if isinstance(value, BaseModel):
        cls = type(value)
        return {n: identity(getattr(value, n)) for n in cls.model_fields if not is_operational(cls, n)}
    if isinstance(value, dict):
        return {str(k): identity(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [identity(v) for v in value]
    return value


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Resources(Strict):
    """What the stage's Ray task asks for. Operational: where a stage runs does not change what it computes."""
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = operational(Field(0, ge=0), sets=WORLD_SIZE)
    custom: dict[str, float] = {}


def fmt_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def first_error(err, prefix: str = "") -> str:
    """One line for a pydantic ValidationError: ``<prefix><location>: <message>``."""
    e = err.errors()[0]
    what = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
    return f"{prefix}{fmt_loc(e['loc'])}: {what}"
