"""Configs shared by every training stage, and the two stage kinds that live in this layer.

* ``LearnerConfig`` (the recipe's ``learner`` section, merged with each stage's ``learner`` overrides),
  ``ModelConfig`` (``model``), ``TaskSource`` (``tasks.<domain>``).
* ``HeldOut``: the one held-out evaluation every model-producing stage and the eval stage run, resolved from the
  recipe's ``eval`` section. Rows carry the hash of the spec they were computed with, so the eval stage reuses a
  stage's own rows exactly when they are the same computation.
* Stage kinds ``bootstrap`` (``train/bootstrap.py``) and ``eval`` (``train/eval_stage.py``); the union-SFT
  configs and stage kind ``base`` are in ``train/union_config.py``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_serializer, model_validator

from core.config import (DOMAINS, MODES, Mode, Resources, Strict, digest, first_error, identity, operational)
from core.registry import StageKind, StageSpec, Workload, register_stage_kind
from rollout.config import EngineConfig, Sampling

from .suites import (PACKAGED_SOURCES, SUITE_DOMAINS, BfclSource, BfclSuite, HumanEvalSuite, IfbenchSuite,
                     Math500Suite, ReasoningGymSource, Suites, ToolTalkSource, check_source_list, need_package)


# ------------------------------------------------------------------------------------------------------ learner
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
    # learner ranks (processes joined by torch.distributed, data parallel over the global batch; train.ranks).
    # None = the stage's GPUs, 1 on CPU. In the stage hash: a DeepSpeed checkpoint resumes only at its world size.
    ranks: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _muon_zero(self):
        if self.optimizer == "muon" and self.zero_stage > 0:
            raise ValueError("optimizer muon does not run under DeepSpeed ZeRO (zero_stage > 0): use adamw with ZeRO")
        return self

    def merged(self, overrides: dict, where: str) -> "LearnerConfig":
        """This config with a stage's ``learner`` overrides applied; one-line ValueError naming ``where``."""
        try:
            return LearnerConfig.model_validate({**self.model_dump(), **overrides})
        except ValidationError as e:
            raise ValueError(first_error(e, f"{where}.learner.")) from None


# -------------------------------------------------------------------------------------------------------- model
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
    path: str | None = None             # HF folder, .gguf, package:<module>/<file>, hub id; None: the tiny model
    tokenizer: str | None = None        # defaults to ``path``
    dtype: Literal["float32", "bfloat16"] = "float32"
    tiny: TinyModel = TinyModel()
    size: ModelSize | None = operational(None)   # dimensions for `pipeline plan` (overrides config.json / tiny)

    @model_validator(mode="after")
    def _acts(self):
        """Fields with no effect on the embedded tiny model are refused, not silently hashed (a dumped recipe writes
        every default: compare values)."""
        if self.path is None and self.dtype != "float32":
            raise ValueError(f"dtype: {self.dtype} has no effect on the embedded tiny model (built in float32; "
                             "learner.precision sets the training precision); it applies to model.path: remove it")
        if self.path is None and self.tokenizer is not None:
            raise ValueError("tokenizer: has no effect on the embedded tiny model (bootstrap trains its own "
                             "tokenizer); it applies to model.path: remove it")
        return self


# -------------------------------------------------------------------------------------------------------- tasks
TaskFormat = Literal["auto", "generated", "messages", "prompt_completion", "prompt_only"]
SFTModes = Literal["by_reasoning", "all"]


class TaskSource(Strict):
    """Where a domain's tasks come from: the built-in generator, any `datasets`-loadable source, a packaged source
    (``bfcl``, ``reasoning_gym``, ``ifbench``, ``tooltalk``: train/suites.py; docs/data.md), or a list of the domain's packaged
    sources, their rows interleaved."""
    source: str | list[str] = "generated"  # generated, a dataset, a loader (json), a packaged source, or a list of them
    #                                        (2+ packaged sources of the domain, rows interleaved: [bfcl, tooltalk])
    data_files: str | None = None       # for loaders such as json/csv/parquet
    train_split: str = "train"          # datasets split syntax, e.g. train[32:]
    eval_split: str = "test"            # e.g. train[:32] when one file holds both
    format: TaskFormat = "auto"         # TRL's dataset format; auto: the generator, or per row from its columns
    sft_modes: SFTModes = "by_reasoning"  # rows with reasoning train think modes, without non_think; all: every mode
    fields: dict[str, str] = {}         # our field name -> the source's column name
    params: dict[str, int | float | str] = {}   # generator parameters (generated source), e.g. math: {max_n: 5}
    bfcl: BfclSource | None = None      # source bfcl: categories, max_chars (default: the four AST categories)
    reasoning_gym: ReasoningGymSource | None = None   # source reasoning_gym: {datasets: {name: config}, seed}
    tooltalk: ToolTalkSource | None = None   # source tooltalk: subsets, api_mode, max_chars
    n_train: int = Field(2000, ge=1)
    n_eval: int = Field(32, ge=1)       # held-out prompts per mode

    @field_validator("source")
    @classmethod
    def _source_list(cls, v):
        return v if isinstance(v, str) else check_source_list(v)

    def sources(self) -> list[str]:
        """The source names: ``[source]``, or the list."""
        return [self.source] if isinstance(self.source, str) else list(self.source)

    def _named(self, quote: bool = False) -> str:
        if isinstance(self.source, list):
            return f"[{', '.join(self.source)}]"
        return repr(self.source) if quote else self.source

    @model_validator(mode="after")
    def _format_fits_source(self):
        names = self.sources()
        for name, (_, fmt, opts) in PACKAGED_SOURCES.items():
            if opts and getattr(self, opts) is not None and name not in names:
                raise ValueError(f"{opts}: options of source: {name} (source is {self._named(quote=True)})")
        if all(s in PACKAGED_SOURCES for s in names):
            # the split is the package's own (by a hash of each entry); nothing of a datasets source applies
            for key in ("data_files", "train_split", "eval_split", "fields", "params"):
                if getattr(self, key) != type(self).model_fields[key].default:   # (a dumped recipe sets defaults)
                    raise ValueError(f"{key}: does not apply to source {self._named()} (its rows come from an "
                                     f"installed package, split into train and held-out by a hash of each entry)")
            for s in names:
                fmt = PACKAGED_SOURCES[s][1]
                if self.format not in ("auto", fmt):
                    raise ValueError(f"format: source {s} gives {fmt} rows, not {self.format}")
            return self
        generated = self.source == "generated"
        if generated and self.format not in ("auto", "generated"):
            raise ValueError(f"format: {self.format} reads a datasets source; source is generated")
        if not generated and self.format == "generated":
            raise ValueError(f"format: generated needs source: generated (source is {self.source!r})")
        if generated and "sft_modes" in self.model_fields_set and self.sft_modes != "by_reasoning":
            raise ValueError("sft_modes: applies to datasets rows; generated tasks train every mode")
        return self


def check_generator_params(tasks: dict[str, TaskSource]) -> None:
    """A bad generator parameter fails here, naming its key; so does a BFCL source on another domain than agent or
    without the bfcl-eval package (ValueError, one line)."""
    from rewards.tasks import generate

    for d, src in tasks.items():
        if src.params and src.source == "generated":
            generate(d, "train", 1, 0, src.params)
        for name in src.sources():
            if name in PACKAGED_SOURCES:
                domain = PACKAGED_SOURCES[name][0]
                if d != domain:
                    raise ValueError(f"{d}.source: {name} gives rows of the {domain} domain, not {d}")
                need_package(name, f"{d}.source: {name}")


class EvalConfig(Strict):
    """The held-out evaluation of every model (each stage evaluates its own model with it), and the ``eval`` stage:
    every model of the run on every domain x mode it is meant for (docs/results.md)."""
    models: list[str] | None = None         # stage ids the eval stage covers; default every model-producing stage
    exclude: list[str] = []                 # stage ids left out of the default (e.g. bootstrap: random weights)
    n_eval: int | None = None               # held-out prompts per domain x mode (default: tasks.<domain>.n_eval)
    greedy: bool = True                     # also greedy numbers (*_greedy)
    pass_k: list[int] = [1, 4]
    samples: int = Field(4, ge=1)           # sampled completions per prompt: reward_mean, accuracy, pass@k
    sampling: Sampling = Sampling()
    max_tokens: dict[Mode, int] = {}        # per-mode budget (default: grpo's shaping budget, else 128)
    suites: Suites = Suites()               # benchmark suites per cell of their domain (train/suites.py): a list
    #                                         [humaneval, bfcl, math500, ifbench] or {name: {limit, ...}}
    humaneval: bool = False                 # same as suites: [humaneval] (all 164 problems, greedy pass@1)
    ci_resamples: int = Field(1000, ge=100)  # bootstrap resamples (over prompts) for the 95% intervals
    engine: EngineConfig = EngineConfig()  # what generates: vllm = a leased fleet engine (FP4 as the fleet serves)
    resources: Resources = operational(Resources())


class HeldOut(Strict):
    """The resolved held-out evaluation: what a (model, domain, mode) row is computed from."""
    seed: int
    samples: int
    greedy: bool
    pass_k: list[int]
    sampling: Sampling
    max_tokens: dict[str, int]
    tasks: dict[str, TaskSource]            # per domain, ``n_eval`` resolved
    suites: Suites = Suites()               # ``eval.humaneval: true`` resolved into ``suites.humaneval``
    ci_resamples: int
    engine: EngineConfig
    workers: int = operational(1)           # verifier processes
    # engine vllm: the fleet's settings that shape samples; in each row's spec (cell_key), and in the eval stage's
    # hash as the fleet of a stage that samples with it (pipeline.graph): left out of the dump, so that a recipe
    # without a fleet keeps its hashes
    fleet: dict | None = operational(None)

    def cell_key(self, domain: str, mode: str) -> str:
        """Hash of everything a row of (domain, mode) depends on besides the model."""
        key = {"seed": self.seed, "samples": self.samples, "greedy": self.greedy, "pass_k": self.pass_k,
               "sampling": identity(self.sampling), "max_tokens": self.max_tokens[mode],
               "task": identity(self.tasks[domain]),
               "suites": {n: identity(o) for n, o in self.suites.for_domain(domain).items()},
               "ci": self.ci_resamples, "engine": identity(self.engine), "domain": domain, "mode": mode}
        return digest({**key, "fleet": self.fleet} if self.fleet is not None else key)


def mode_budgets(recipe) -> dict[str, int]:
    """Per-mode token budget: ``eval.max_tokens``, else GRPO's shaping ``l_max``, else 128."""
    ev = recipe.eval.max_tokens if recipe.eval is not None else {}
    out = {}
    for m in recipe.modes:
        if m in ev:
            out[m] = ev[m]
        elif recipe.grpo is not None:
            out[m] = recipe.grpo.shaping.for_mode(m).l_max
        else:
            out[m] = 128
    return out


def resolved_suites(recipe) -> Suites:
    """``eval.suites`` with ``eval.humaneval: true`` folded in; a suite whose domain the recipe lacks, or whose
    package is missing, is a ValueError naming it (one line, at `pipeline validate`)."""
    cfg = recipe.eval or EvalConfig()
    suites = cfg.suites
    if cfg.humaneval and suites.humaneval is None:
        suites = suites.model_copy(update={"humaneval": HumanEvalSuite()})
    for name in suites.names():
        where = "eval.humaneval" if name == "humaneval" and cfg.suites.humaneval is None else f"eval.suites.{name}"
        if SUITE_DOMAINS[name] not in recipe.domains:
            raise ValueError(f"{where}: scores the {SUITE_DOMAINS[name]} domain, which is not among the recipe's "
                             f"domains ({', '.join(recipe.domains)})")
        need_package(name, where)
    return suites


def held_out(recipe, workers: int = 1) -> HeldOut:
    cfg = recipe.eval or EvalConfig()
    # n_train is not read by the held-out evaluation: fixed, so that it is not part of a row's spec
    tasks = {d: recipe.task_source(d).model_copy(update={"n_eval": cfg.n_eval or recipe.task_source(d).n_eval,
                                                         "n_train": 1}) for d in recipe.domains}
    return HeldOut(seed=recipe.seed, samples=cfg.samples, greedy=cfg.greedy, pass_k=cfg.pass_k,
                   sampling=cfg.sampling, max_tokens=mode_budgets(recipe), tasks=tasks,
                   suites=resolved_suites(recipe), ci_resamples=cfg.ci_resamples, engine=cfg.engine, workers=workers,
                   fleet=recipe.fleet.rollout_identity() if cfg.engine.kind == "vllm" and recipe.fleet else None)


# ---------------------------------------------------------------------------------------------------- bootstrap
class BootstrapConfig(Strict):
    resources: Resources = operational(Resources())


class BootstrapStage(Strict):
    """What stage ``bootstrap`` reads."""
    model: ModelConfig
    seed: int


def _expand_bootstrap(recipe, specs) -> list[StageSpec]:
    cfg = BootstrapStage(model=recipe.model, seed=recipe.seed)
    from core.model_source import resolve

    m = recipe.model   # a package resource or GGUF file is hashed by content: the source's hash is in the identity
    inputs = [resolve(p, key) for key, p in (("model.path", m.path), ("model.tokenizer", m.tokenizer)) if p]
    return [StageSpec("bootstrap", "bootstrap", [], cfg, recipe.bootstrap.resources, "bootstrap", inputs=inputs,
                      cells=[(d, m) for d in recipe.domains for m in recipe.modes])]


register_stage_kind(StageKind(
    name="bootstrap", section="bootstrap", config=BootstrapConfig, expand=_expand_bootstrap,
    run="train.bootstrap:run", workload=lambda spec: Workload(loads_model_only=True), order=0,
    label="the starting model and tokenizer (embedded tiny MoE, or model.path adopted)"))


# --------------------------------------------------------------------------------------------------------- eval
class EvalTarget(Strict):
    id: str
    cells: list[tuple[str, str]]


class EvalStage(Strict):
    """What stage ``eval`` reads: the models to cover, with their cells, and the held-out spec."""
    targets: list[EvalTarget]
    heldout: HeldOut


def _expand_eval(recipe, specs) -> list[StageSpec]:
    cfg = recipe.eval
    models = [s for s in specs if s.cells]
    if cfg.models is not None:
        known = {s.id for s in models}
        for m in cfg.models:
            if m not in known and m not in {s.id for s in specs}:
                raise ValueError(f"eval.models: stage eval depends on unknown stage {m!r} "
                                 f"(known: {', '.join(sorted(known))})")
        models = [s for s in models if s.id in set(cfg.models)]
    for m in cfg.exclude:
        if m not in {s.id for s in specs}:
            raise ValueError(f"eval.exclude: no stage {m!r} in this recipe")
    models = [s for s in models if s.id not in set(cfg.exclude)]
    conf = EvalStage(targets=[EvalTarget(id=s.id, cells=s.cells) for s in models],
                     heldout=held_out(recipe, workers=max(1, int(cfg.resources.num_cpus))))
    scored = sorted({d for s in models for d, _ in s.cells})
    return [StageSpec("eval", "eval", [s.id for s in models], conf, cfg.resources, "eval", scores=scored,
                      dep_field="eval.models")]


def _check_eval(spec: StageSpec) -> None:
    h = spec.config.heldout
    bad = [k for k in h.pass_k if k > h.samples]
    if bad:
        raise ValueError(f"eval.pass_k: pass@{bad[0]} needs at least {bad[0]} samples per prompt "
                         f"(eval.samples is {h.samples})")


register_stage_kind(StageKind(
    name="eval", section="eval", config=EvalConfig, expand=_expand_eval, run="train.eval_stage:run",
    check=_check_eval, workload=lambda spec: Workload(evaluates=True, engine=spec.config.heldout.engine,
                                                     reward_workers=max(1, int(spec.resources.num_cpus) - 1)),
    progress_total=lambda cfg: len(cfg.targets), key_metrics=("models_done",), produces_model=False, order=90,
    label="every model x domain x mode: held-out reward with 95% intervals, pass@k, greedy numbers"))

__all__ = ["LearnerConfig", "ModelConfig", "TinyModel", "ModelSize", "TaskSource", "BfclSource", "EvalConfig",
           "Suites", "HumanEvalSuite", "BfclSuite", "SUITE_DOMAINS", "HeldOut",
           "BootstrapConfig", "DOMAINS", "MODES", "held_out", "mode_budgets", "check_generator_params"]
