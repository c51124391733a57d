"""Generate ``docs/recipe.md``, the recipe reference, from the pydantic schema in ``pipeline/recipe.py``.

Every section model reachable from ``Recipe`` gets a table of its fields: type, default and description (the
field's ``description`` if set, else the ``# comment`` on its line in the source). ``identity_rows`` walks every
field of every section by its dotted key, identity or operational, from the same declarations the stage hash reads
(``core.config.operational``): the table "Identity of every field", and the list the identity tests iterate over.
``tests/pipeline/test_docs.py`` regenerates it and compares with the committed file, so the reference cannot drift
from the schema.

    python -m pipeline.docgen > docs/recipe.md
"""
from __future__ import annotations

import inspect
import json
import re
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from core.config import WORLD_SIZE, is_operational, operational_sets
from rollout.config import SPLIT_WORLD_SIZE

_FIELD_LINE = re.compile(r"^\s{4}(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def _comments(cls) -> dict[str, str]:
    """Field name -> the ``# comment`` on its declaration line in the class source."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = _FIELD_LINE.match(line)
        if m and m.group(2):
            out[m.group(1)] = m.group(2).strip()
    return out


def type_str(t) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [type_str(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        name = {list: "list", tuple: "tuple", dict: "dict"}[origin]
        return f"{name}[{', '.join(type_str(a) for a in args)}]" if args else name
    if isinstance(t, type) and issubclass(t, BaseModel):
        return f"[{t.__name__}](#{t.__name__.lower()})"
    if isinstance(t, type):
        return {"str": "string", "int": "int", "float": "float", "bool": "bool"}.get(t.__name__, t.__name__)
    return str(t).replace("typing.", "")


def default_str(field) -> str:
    if field.is_required():
        return "**required**"
    d = field.get_default(call_default_factory=True) if field.default is PydanticUndefined else field.default
    if isinstance(d, BaseModel):
        return "(section defaults)"
    if d is None:
        return "`null`"
    return f"`{json.dumps(d, default=_jsonable)}`"


def _jsonable(o):
    return o.model_dump(mode="json") if isinstance(o, BaseModel) else str(o)


def _models_in(t) -> list[type]:
    out = []
    if isinstance(t, type) and issubclass(t, BaseModel):
        return [t]
    for a in typing.get_args(t):
        out += _models_in(a)
    return out


def reachable(root) -> list[type]:
    order, todo = [], [root]
    while todo:
        cls = todo.pop(0)
        if cls in order:
            continue
        order.append(cls)
        for f in cls.model_fields.values():
            todo += [m for m in _models_in(f.annotation) if m not in order]
    return order


# descriptions of the top-level keys (Recipe's fields carry no comments of their own)
TOP_LEVEL = {
    "name": "run name; the default run directory is runs/<name>",
    "seed": "seed of every stage (task sampling, initialisation, data order, sampling)",
    "ray": "the Ray cluster to run on",
    "model": "the starting model and tokenizer (empty path: the embedded tiny Qwen3-MoE)",
    "domains": "specialist domains; one sft.<domain> (and grpo.<domain>.<mode>) stage each",
    "modes": "reasoning modes every stage trains and evaluates",
    "tasks": "per-domain task source (built-in generator or a `datasets`-loadable source), keyed by domain",
    "learner": "optimizer, schedule, precision, ZeRO and QAT shared by all training stages",
    "bootstrap": "the bootstrap stage (builds or adopts the starting model)",
    "base": "the base stage (SFT on the union of the domains: the shared base the specialists and the student's "
            "start fine-tune); absent or null: no base stage",
    "sft": "the sft.<domain> stages; null to skip SFT",
    "generalist": "the generalist stage (SFT on the union of the domains: the student's start); null to skip",
    "grpo": "the grpo.<domain>.<mode> teacher stages; null to skip",
    "distill": "the multi-teacher on-policy distillation stage; null to skip",
    "eval": "held-out evaluation of every model, and the eval stage (every model x domain x mode); null: no eval "
            "stage (stages still evaluate their own models with the defaults)",
    "logging": "metric sinks besides metrics.jsonl (TensorBoard, W&B offline)",
}


# ----------------------------------------------------------------------------------------------- identity table
IDENTITY, OPERATIONAL, OVERRIDES = "identity", "operational", "overrides"


def _is_overrides(t) -> bool:
    """A mapping of raw overrides (``learner: dict``, ``per_domain: dict[Domain, dict]``): each overridden field
    counts as the field it overrides."""
    t = next((a for a in typing.get_args(t) if a is not type(None)), t) if _is_optional(t) else t
    if t is dict:
        return True
    return typing.get_origin(t) is dict and typing.get_args(t)[1:] == (dict,)


def _is_optional(t) -> bool:
    return typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None))


def identity_rows(root=None) -> list[dict]:
    """Every field of every recipe section, by its dotted key (``<domain>`` etc. for mapping keys): ``status``
    identity, operational or overrides; ``sets`` (an operational field that sets something that is identity);
    ``cls`` and ``name`` (where it is declared); ``owner`` (the class whose field holds ``cls``). Derived from the
    declarations (``core.config.operational``), as the stage hash is (``core.config.identity``)."""
    from .recipe import Recipe

    root = root or Recipe
    rows: list[dict] = []

    def walk(cls, prefix: str, owner, inherited: bool):
        for name, f in cls.model_fields.items():
            key = f"{prefix}{name}"
            op = inherited or is_operational(cls, name)
            status = OPERATIONAL if op else OVERRIDES if _is_overrides(f.annotation) else IDENTITY
            rows.append({"key": key, "status": status, "sets": operational_sets(cls, name), "owner": owner or cls,
                         "cls": cls, "name": name})
            t = f.annotation
            if typing.get_origin(t) is dict and not _is_overrides(t):
                arg = str(typing.get_args(t)[0])
                label = "<domain>" if "'math'" in arg else "<mode>" if "'think_max'" in arg else "<key>"
                t, key = typing.get_args(t)[1], f"{key}.{label}"
            if typing.get_origin(t) is list:
                t, key = typing.get_args(t)[0], f"{key}[]"
            for m in _models_in(t):
                walk(m, f"{key}.", cls, op)

    walk(root, "", None, False)
    return rows


def _trains(section_cls) -> bool:
    return "learner" in getattr(section_cls, "model_fields", {})


def _teaches(row) -> bool:
    """A ``placement`` of a section whose stage has teachers (its split gives them GPUs of the learner's)."""
    return "teachers" in getattr(row["owner"], "model_fields", {})


def render_identity_table() -> str:
    lines = ["## Identity of every field", "",
             "Generated from the declarations in the code (`operational(...)`), as the stage hash is. **identity**: in "
             "the hash of every stage that reads it (a change re-runs those stages and everything downstream); "
             "*operational*: in no stage's hash (a change re-runs nothing); *overrides*: a mapping of overrides, "
             "each overridden field counting as that field does. The `fleet` section's identity fields are in the "
             "hash of every stage that samples with the fleet (GRPO and distill with engine vllm, the eval stage "
             "with `eval.engine` vllm) and in the held-out rows' spec; the `eval` section's in the eval stage's "
             "hash and the rows' spec, not in a training stage's. An operational field that *sets* something "
             "puts what it sets, resolved, in the hash: the learner's world size of a training stage (where "
             "`learner.ranks` is unset), the fleet's dtype (where `fleet.dtype` is unset).", "",
             "| key | in the stage hash |", "|---|---|"]
    for r in identity_rows():
        status = {IDENTITY: "**identity**", OPERATIONAL: "*operational*", OVERRIDES: "*overrides*"}[r["status"]]
        sets = r["sets"]
        if sets and (sets != WORLD_SIZE or _trains(r["owner"])) and (sets != SPLIT_WORLD_SIZE or _teaches(r)):
            status += f" (sets {sets}, which is identity)"
        lines.append(f"| `{r['key']}` | {status} |")
    return "\n".join(lines) + "\n"


def render_model(cls, key: str | None = None) -> str:
    doc = inspect.getdoc(cls) if cls.__doc__ else ""
    comments = _comments(cls)
    if cls.__name__ == "Recipe":
        comments = {**TOP_LEVEL, **comments}
    lines = [f"## {cls.__name__}", ""]
    if key:
        lines += [f"Recipe key: `{key}`", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, f in cls.model_fields.items():
        desc = (f.description or comments.get(name, "")).replace("|", "\\|").replace("<", "&lt;")
        if is_operational(cls, name):
            sets = operational_sets(cls, name)
            desc = ("*operational* (not in the stage hash" + (f"; sets {sets}, which is" if sets else "") + ")"
                    + (f"; {desc}" if desc else ""))
        lines.append(f"| `{name}` | {type_str(f.annotation)} | {default_str(f)} | {desc} |")
    return "\n".join(lines) + "\n"


def _sections() -> list[str]:
    """Hand-written sections (exit codes, the preflight): ``docs/recipe_sections/*.md`` in name order."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "docs" / "recipe_sections"
    return [f.read_text().rstrip("\n") + "\n" for f in sorted(folder.glob("*.md"))]


def render() -> str:
    from .recipe import Recipe

    keys = {"Recipe": "(top level)"}
    for name, f in Recipe.model_fields.items():
        for m in _models_in(f.annotation):
            keys.setdefault(m.__name__, name)
    models = reachable(Recipe)
    extra = []
    parts = ["<!-- generated by `python -m pipeline.docgen > docs/recipe.md`; do not edit by hand -->",
             "# Recipe reference", "",
             "A recipe is one YAML file validated by the schema in `pipeline/recipe.py` (each stage's section is "
             "defined beside its stage: `specialists/config.py`, `distill/config.py`, `train/config.py`); unknown "
             "keys are errors and every error is one line naming the key. Override any value on the command line "
             "with `--set a.b=value` (e.g. `--set sft.steps=100`).", "",
             "A stage's identity (its hash: when it changes, the stage and everything downstream re-run) holds a "
             "field exactly when the field can change what the stage computes: its fully resolved config -- every "
             "field below that is not marked *operational*, the values it inherits (`learner` merged with the "
             "stage's overrides, the task sources it reads, `seed`, `modes`) -- the content of files outside the run "
             "it reads (data files, an adopted model, path teachers), the `fleet` settings that shape samples when it "
             "samples with the fleet, and its learner's world size. Operational fields -- resources, checkpoint "
             "cadence and retention, placement, memory budgets, logging, the Ray cluster -- change how a stage runs, "
             "never what it computes, so changing them re-runs nothing (the GPUs and placement count only through "
             "the world size they set). A field that cannot act where it is set (`engine.max_batch` with engine "
             "vllm, `model.dtype` or `model.tokenizer` on the embedded tiny model) is refused. The held-out "
             "evaluation settings (`eval`) are not part of a training stage's identity either: evaluation rows carry "
             "the hash of the spec they were computed with, and the eval stage recomputes any row whose spec "
             "differs. [Identity of every field](#identity-of-every-field) lists every field.", "",
             *_sections(), "Sections and their fields:", "",
             *[f"- [{m.__name__}](#{m.__name__.lower()})" + (f" — `{keys[m.__name__]}`" if m.__name__ in keys else "")
               for m in models + extra], ""]
    parts.append(render_identity_table())
    for m in models:
        parts.append(render_model(m, keys.get(m.__name__)))
    for m in extra:
        parts.append(render_model(m, None))
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
