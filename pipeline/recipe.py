"""The recipe: a YAML file validated by a typed schema. Unknown keys are errors; every error is one line.

``load_recipe(path, overrides)`` reads the YAML, applies ``--set a.b=value`` overrides, validates the schema, then
cross-checks what a schema cannot: stage references exist, files exist, the tokenizer's vocabulary matches the
model's (teachers and student must share one), and every stage's resources fit the cluster.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from core.config import DOMAINS, MODES, Domain, Mode, Strict, fmt_loc, operational
from core.model_source import ModelSourceError, gguf_header_ok, is_gguf, is_package_path, resolve
from core.sinks import LoggingConfig
from distill.config import DistillConfig, GeneralistConfig, SeqKDConfig
from rewards.sandbox_probe import SandboxConfig
from rollout.config import FleetConfig
from specialists.config import GRPOConfig, SFTConfig
from train.config import BootstrapConfig, EvalConfig, LearnerConfig, ModelConfig, TaskSource, check_generator_params
from train.union_config import BaseConfig


class RecipeError(ValueError):
    """A bad recipe; ``str(err)`` is the one line the CLI prints."""


class RayConfig(Strict):
    """Operational: which Ray instance runs the stages."""
    address: str | None = None          # None: start a local instance; "auto" or "host:port": join a cluster
    num_cpus: int | None = None         # local instance only; default: all cores
    num_gpus: int | None = None


class ControlsConfig(Strict):
    """Controls beside the method (recipes/ablations.yaml): what the gains are measured against."""
    entropy: bool = False               # control.entropy.<domain>.<mode>: each GRPO stage with no reward signal
    seqkd: SeqKDConfig | None = None    # control.seqkd: off-policy sequence-level KD with distill's teacher tokens


class Recipe(Strict):
    name: str = operational(Field(pattern=r"^[A-Za-z0-9_.-]+$"), "the run's name: no stage computes from it")
    seed: int = 0
    ray: RayConfig = operational(RayConfig())
    model: ModelConfig = ModelConfig()
    domains: list[Domain] = list(DOMAINS)
    modes: list[Mode] = list(MODES)
    tasks: dict[Domain, TaskSource] = {}
    learner: LearnerConfig = LearnerConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    base: BaseConfig | None = None
    sft: SFTConfig | None = SFTConfig()
    generalist: GeneralistConfig | None = None
    grpo: GRPOConfig | None = None
    distill: DistillConfig | None = None
    eval: EvalConfig | None = None
    controls: ControlsConfig | None = None
    fleet: FleetConfig | None = None
    logging: LoggingConfig = operational(LoggingConfig())
    sandbox: SandboxConfig = operational(SandboxConfig())  # the code sandbox's isolation (docs/rewards.md)
    keep_outputs: int | None = operational(Field(None, ge=0))  # run cache budget in bytes (or "20GB"); null: no limit
    # delete a stage's checkpoints once it is complete (its final/ stays; a complete stage never resumes): a real
    # model's optimizer states are ~3x its weights per checkpoint, kept by every stage of the graph otherwise
    prune_checkpoints: bool = operational(False)

    @field_validator("keep_outputs", mode="before")
    @classmethod
    def _bytes(cls, v):
        from .runcache import parse_bytes

        return parse_bytes(v)

    @field_validator("domains", "modes")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v) or not v:
            raise ValueError("must be a non-empty list without repeats")
        return v

    @field_validator("tasks")
    @classmethod
    def _generator_params(cls, v):
        check_generator_params(v)
        return v

    def task_source(self, domain: str) -> TaskSource:
        return self.tasks.get(domain, TaskSource())


# ---------------------------------------------------------------------------------------------------------------
# loading


def _apply_set(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or a 5000-digit int, or nested too deep)
        value = raw
    parts = key.strip().split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        # stage-like keys (sft.math) are not nested: try the longest existing key first
        if not isinstance(node, dict):
            raise RecipeError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping")
        node = node.setdefault(p, {})
    if not isinstance(node, dict):
        raise RecipeError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")
    node[parts[-1]] = value


def _first_error(err: ValidationError, source: str) -> RecipeError:
    e = err.errors()[0]
    loc = fmt_loc(e["loc"])
    if e["type"] == "extra_forbidden":
        return RecipeError(f"{source}: unknown key {loc!r}")
    if e["type"] == "missing":
        return RecipeError(f"{source}: missing required key {loc!r}")
    got = e.get("input")
    got_s = "" if isinstance(got, (dict, list)) else f" (got {repr(got)[:200]})"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    msg = e["msg"].removeprefix("Value error, ")
    return RecipeError(f"{source}: {loc}: {msg}{got_s}{more}")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: no such recipe file")
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder, not a recipe file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse"
        raise RecipeError(f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    except RecursionError:
        raise RecipeError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise RecipeError(f"{path}: invalid YAML: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: the recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe_data(path: str | Path, _chain: tuple = ()) -> dict:
    """The recipe file's mapping with its ``extends: <recipe file>`` resolved: the base recipe (a path relative to
    this file; it may extend another) with this file's keys merged over it, mapping by mapping. A recipe that adds
    stages to another (recipes/ablations.yaml adds the controls to think_max) thus keeps the other's stages exactly,
    and their stage hashes with them."""
    path = Path(path)
    data = read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"{path}: extends: a recipe file path (relative to this file), got {base!r}")
    target = (path.parent / base).resolve()
    if target in _chain or target == path.resolve():
        raise RecipeError(f"{path}: extends: {base} extends itself (through {len(_chain)} other recipe(s))")
    if not target.exists():
        raise RecipeError(f"{path}: extends: no such recipe file {base!r} (looked for {target})")
    return _merge(read_recipe_data(target, (*_chain, path.resolve())), data)


def load_recipe(path: str | Path, overrides: list[str] = (), check: bool = True) -> Recipe:
    return load_with_graph(path, overrides, check)[0]


def load_with_graph(path: str | Path, overrides: list[str] = (), check: bool = True, cluster: dict | None = None):
    """(recipe, its stage graph): the graph is built once and shared by everything a command does."""
    data = read_recipe_data(path)
    for a in overrides:
        _apply_set(data, a)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _first_error(e, str(path)) from None
    if check:
        return recipe, cross_check(recipe, str(path), cluster=cluster)
    from .graph import build_graph

    try:
        return recipe, build_graph(recipe, check=False)
    except ValueError as e:
        raise RecipeError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# cross-checks


def _is_local(p: str) -> bool:
    return p.startswith(("/", "./", "../", "~")) or os.path.exists(p)


def _vocab_of_tokenizer(folder: str) -> int | None:
    import json

    f = Path(folder).expanduser() / "tokenizer.json"
    if not f.exists():
        return None
    tok = json.loads(f.read_text())
    vocab = tok.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in tok.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def _vocab_of_model(folder: str) -> int | None:
    import json

    f = Path(folder).expanduser() / "config.json"
    if not f.exists():
        return None
    cfg = json.loads(f.read_text())
    return cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")


def check_vocab(model_path: str, tokenizer_path: str, where: str) -> None:
    """Raise if the tokenizer has ids the model's embedding cannot hold (models may pad their vocab upward)."""
    mv, tv = _vocab_of_model(model_path), _vocab_of_tokenizer(tokenizer_path)
    if mv is not None and tv is not None and tv > mv:
        raise RecipeError(f"{where}: vocabulary mismatch: tokenizer {tokenizer_path} has {tv} ids but model "
                          f"{model_path} has vocab_size {mv}")


def cross_check(recipe: Recipe, source: str, cluster: dict | None = None, graph=None) -> list:
    """What a schema cannot check (files, vocabularies, references, every stage's run-time config checks,
    resources against the cluster); returns the stage graph."""
    from .graph import build_graph, check_graph

    m = recipe.model
    for key, p in (("model.path", m.path), ("model.tokenizer", m.tokenizer)):
        if p and is_package_path(p):
            try:
                p = resolve(p, key)
            except ModelSourceError as e:
                raise RecipeError(f"{source}: {e}") from None
        if p and _is_local(p) and not Path(p).expanduser().exists():
            raise RecipeError(f"{source}: {key}: no such file or folder {p!r}")
        if p and is_gguf(p) and not gguf_header_ok(p):
            raise RecipeError(f"{source}: {key}: {p} is not a GGUF file (no GGUF header)")
    if m.path and _is_local(m.path) and not is_gguf(m.path):
        for need in ("config.json",):
            if not (Path(m.path).expanduser() / need).exists():
                raise RecipeError(f"{source}: model.path: {m.path} has no {need} (not a Hugging Face model folder)")
        check_vocab(m.path, m.tokenizer or m.path, f"{source}: model.tokenizer")
    for dom, ts in recipe.tasks.items():
        if dom not in recipe.domains:
            raise RecipeError(f"{source}: tasks.{dom}: domain not in domains {recipe.domains}")
        if ts.data_files and not Path(ts.data_files).expanduser().exists():
            raise RecipeError(f"{source}: tasks.{dom}.data_files: no such file {ts.data_files!r}")
        for name in ts.sources():
            if name != "generated" and _is_local(name) and not Path(name).expanduser().exists():
                raise RecipeError(f"{source}: tasks.{dom}.source: no such file or folder {name!r}")
    _check_distill_teachers(recipe, source)
    try:
        graph = graph if graph is not None else build_graph(recipe, check=False)
        check_graph(graph)
    except ValueError as e:
        raise RecipeError(f"{source}: {e}") from None
    _check_fleet(recipe, graph, source)
    cluster = cluster if cluster is not None else local_cluster(recipe)
    if cluster:
        for st in graph:
            for res, need in (("CPU", st.resources.num_cpus), ("GPU", st.resources.num_gpus),
                              *st.resources.custom.items()):
                have = cluster.get(res, 0)
                if need > have:
                    raise RecipeError(f"{source}: {st.config_key}.resources: stage {st.id} needs {need:g} {res} "
                                      f"but the cluster has {have:g}")
    return graph


def _check_fleet(recipe: Recipe, graph, source: str) -> None:
    """Stages that sample with ``engine.kind: vllm`` lease engines of the run's fleet: it must exist, and serve the
    weights they ask for (FP4 is the fleet's)."""
    from rollout.config import EngineConfig

    from .placement import fleet_layout
    from .runner import uses_fleet

    if recipe.fleet is not None:
        try:
            fleet_layout(recipe.fleet)           # TP > 1: one bundle per GPU, so GPUs per engine = TP
        except ValueError as e:
            raise RecipeError(f"{source}: {e}") from None
    for st in graph:
        if not uses_fleet(st.config):
            continue
        if recipe.fleet is None:
            raise RecipeError(f"{source}: {st.config_key}: stage {st.id} samples with engine kind vllm, which leases "
                              "an engine of the run's fleet, but the recipe has no fleet section")
        for name in type(st.config).model_fields:
            sub = getattr(st.config, name)
            for eng in [getattr(sub, "engine", None), sub]:
                if isinstance(eng, EngineConfig) and eng.kind == "vllm" and eng.fp4 != recipe.fleet.fp4:
                    raise RecipeError(f"{source}: {st.config_key}.engine.fp4: {eng.fp4} but the fleet serves "
                                      f"fp4 {recipe.fleet.fp4} (FP4 is the fleet's: set them equal)")
        s = getattr(getattr(st.config, "grpo", None), "sampling", None)
        if s is not None and s.top_k > recipe.fleet.max_logprobs:
            raise RecipeError(f"{source}: grpo.sampling.top_k: {s.top_k} > fleet.max_logprobs "
                              f"{recipe.fleet.max_logprobs} (the engine returns the kept set through its logprobs)")


def _check_distill_teachers(recipe: Recipe, source: str) -> None:
    """``distill.teachers.<key>`` given by ``path``: the folder exists, is a model folder, and shares the student's
    vocabulary (stage teachers are checked by the distill stage itself, before it does any work)."""
    if recipe.distill is None:
        return
    m = recipe.model
    student_tok = m.tokenizer or m.path
    student_tok = student_tok if student_tok and _is_local(student_tok) else None
    for key, refs in recipe.distill.teachers.items():
        for ref in refs:
            if ref.path is None:
                continue
            where, folder = f"{source}: distill.teachers.{key}", Path(ref.path).expanduser()
            if not folder.is_dir():
                raise RecipeError(f"{where}: no such teacher folder {ref.path!r}")
            if not (folder / "config.json").exists():
                raise RecipeError(f"{where}: {ref.path} has no config.json (not a Hugging Face model folder)")
            if student_tok:  # the same base vocabulary (the student may add chat tokens on top of it)
                sv, tv = _base_vocab(student_tok), _base_vocab(str(folder))
                bad = sum(tv.get(k) != i for k, i in sv.items()) if sv and tv else 0
                if bad:
                    raise RecipeError(f"{where}: vocabulary mismatch: teacher {ref.path} and the student's "
                                      f"tokenizer {student_tok} disagree on {bad} of {len(sv)} tokens")
            elif not m.path:  # the embedded tokenizer has at most model.tiny.vocab_size ids
                tv = _vocab_of_tokenizer(str(folder))
                if tv is not None and tv > m.tiny.vocab_size:
                    raise RecipeError(f"{where}: vocabulary mismatch: teacher {ref.path} has {tv} token ids, "
                                      f"the student's embedded tokenizer at most {m.tiny.vocab_size}")


def _base_vocab(folder: str) -> dict:
    import json

    f = Path(folder).expanduser() / "tokenizer.json"
    vocab = json.loads(f.read_text()).get("model", {}).get("vocab", {}) if f.exists() else {}
    return vocab if isinstance(vocab, dict) else {}


def local_cluster(recipe: Recipe) -> dict | None:
    """Resources of the local instance the runner would start; None when joining a cluster (checked at run time)."""
    if recipe.ray.address:
        return None
    gpus = recipe.ray.num_gpus
    if gpus is None:  # count NVIDIA devices without importing torch (validate must stay fast)
        import glob

        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    return {"CPU": recipe.ray.num_cpus or os.cpu_count() or 1, "GPU": gpus}
