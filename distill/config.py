"""The ``generalist`` and ``distill`` recipe sections, what their stages read after the graph resolved them, and
their stage kinds (drivers: ``distill/generalist.py``, ``distill/stage.py``).

``generalist``: the student's start -- one model fine-tuned on the union of every domain's demonstrations.
``distill``: multi-teacher on-policy distillation of that student from the specialists (docs/distillation.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from core.config import DOMAINS, MODES, Domain, Mode, Resources, Strict, operational
from core.registry import StageKind, StageSpec, Workload, register_stage_kind
from rollout.config import EngineConfig, Placement, Sampling
from train.config import HeldOut, LearnerConfig, TaskSource, held_out, mode_budgets
from train.union_config import (UnionSFTConfig, nonnegative_values, union_sft_spec, union_sft_stage,
                                union_sft_workload)

PROMPT_TOKENS = 512
MICRO_BATCH_TOKENS = 8192      # loss positions per distillation micro-batch (gradients accumulate across them)


# ----------------------------------------------------------------------------------------------------- generalist
class GeneralistConfig(UnionSFTConfig):
    """SFT on the union of the domains' demonstrations (all modes), the student's start."""
    steps: int | None = Field(None, ge=1)      # default: the SFT specialists' steps together (the same SFT budget)
    repeats: dict[Domain, int] = {}     # times a domain's demonstrations enter the union; default: distill mixture


def domain_repeats(weights: dict[str, float], domains: list[str]) -> dict[str, int]:
    """How many times each domain's demonstrations enter the union, so that it sees the domains in (about) the
    proportions of the distillation ``mixture``: a domain's weight is the sum over its modes, the lightest positive
    domain counts once, a domain with weight 0 is left out. Uniform weights give 1 everywhere."""
    w = {d: sum(v for k, v in weights.items() if k.split(".")[0] == d) for d in domains}
    low = min((v for v in w.values() if v > 0), default=1.0)
    return {d: (max(1, round(v / low)) if v > 0 else 0) for d, v in w.items()}


def _expand_generalist(recipe, specs) -> list[StageSpec]:
    g, sft = recipe.generalist, recipe.sft
    steps = g.steps or (sum(sft.for_domain(d).steps for d in recipe.domains) if sft is not None else None)
    if steps is None:
        raise ValueError("generalist.steps: required when the recipe has no sft section to size it from")
    if g.repeats:
        repeats = {d: g.repeats.get(d, 1) for d in recipe.domains}
    elif recipe.distill is not None:
        repeats = domain_repeats(mixture_weights(recipe.distill, recipe.domains, recipe.modes), recipe.domains)
    else:
        repeats = {d: 1 for d in recipe.domains}
    return [union_sft_spec(recipe, "generalist", g, union_sft_stage(recipe, g, "generalist", steps, repeats))]


register_stage_kind(StageKind(
    name="generalist", section="generalist", config=GeneralistConfig, expand=_expand_generalist,
    run="distill.generalist:run", order=20, workload=union_sft_workload,
    progress_total=lambda cfg: cfg.steps, key_metrics=("loss",), curves=("loss",),
    label="the student's start: SFT on the union of every domain's demonstrations"))


# -------------------------------------------------------------------------------------------------------- distill
class TeacherRef(Strict):
    stage: str | None = None                # a stage of this recipe (e.g. grpo.math.think_max) ...
    path: str | None = None                 # ... or a Hugging Face folder outside the run
    weight: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _one(self):
        if (self.stage is None) == (self.path is None):
            raise ValueError("a teacher needs exactly one of stage or path")
        return self

    @property
    def name(self) -> str:
        """Metric key ``kl.<name>``: the stage id, or a path teacher's folder name (``<stage>/final`` -> stage)."""
        if self.stage is not None:
            return self.stage
        folder = Path(self.path).expanduser()
        name = folder.parent.name if folder.name == "final" and folder.parent.name else folder.name
        return name or str(folder)


class DistillConfig(Strict):
    """The ``distill`` stage: multi-teacher on-policy distillation (see docs/distillation.md)."""
    student_from: str | None = None         # the student's start (a stage id); default: generalist, else bootstrap
    teachers: dict[str, list[TeacherRef]] = {}   # "domain.mode" -> teachers; default: that cell's specialist
    mixture: dict[str, float] = {}          # "domain.mode" -> prompt weight; default uniform
    steps: int = Field(30, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(1, ge=1)
    payload: Literal["hidden", "logits"] = "hidden"
    chunk_size: int = Field(1024, ge=1)
    temperature: float = Field(1.0, gt=0)
    teacher_memory_gb: float = operational(Field(4.0, gt=0))   # teachers resident at once; the rest are evicted
    sampling: Sampling = Sampling()
    engine: EngineConfig = EngineConfig()
    placement: Placement = operational(Placement())   # colocate or split learner, engines and teachers
    max_tokens: dict[Mode, int] = {}        # per-mode generation budget; default: the run's mode budgets
    save_every: int = operational(Field(5, ge=1))
    keep_checkpoints: int = operational(Field(2, ge=1))
    learner: dict = {}
    resources: Resources = operational(Resources())

    @field_validator("teachers", "mixture")
    @classmethod
    def _keys(cls, v):
        for k in v:
            d, _, m = k.partition(".")
            if d not in DOMAINS or m not in MODES:
                raise ValueError(f"key {k!r} must be <domain>.<mode>, e.g. math.think_max")
        return v

    @field_validator("mixture")
    @classmethod
    def _weights(cls, v):
        nonnegative_values(v)
        if v and not any(v.values()):
            raise ValueError("all weights are 0")
        return v


class DistillStage(Strict):
    """What stage ``distill`` reads."""
    distill: DistillConfig
    student_from: str
    teachers: dict[str, list[TeacherRef]]   # every domain.mode with a teacher (defaults resolved)
    teacher_qat: dict[str, str] = {}        # teacher name -> "mxfp4" where its stage trained with MXFP4 QAT: served so
    weights: dict[str, float]               # prompt weight per domain.mode (mixture resolved)
    max_tokens: dict[str, int]              # per mode
    learner: LearnerConfig
    tasks: dict[str, TaskSource]
    domains: list[str]
    modes: list[str]
    seed: int
    heldout: HeldOut = operational(None)


def mixture_weights(cfg: DistillConfig, domains: list[str], modes: list[str]) -> dict[str, float]:
    """Prompt weight per ``domain.mode``: the recipe's ``mixture`` (keys it omits get 0), or uniform when empty."""
    keys = [f"{d}.{m}" for d in domains for m in modes]
    for k in cfg.mixture:
        if k not in keys:
            raise ValueError(f"distill.mixture.{k}: not a domain x mode of this recipe")
    return {k: float(cfg.mixture.get(k, 0.0)) for k in keys} if cfg.mixture else {k: 1.0 for k in keys}


def default_teachers(cfg: DistillConfig, domains, modes, specs) -> dict[str, list[TeacherRef]]:
    """``domain.mode`` -> teachers: the recipe's map, else the stage that specialises in that cell (a GRPO teacher
    before an SFT specialist: the later-expanded specialist of a cell wins)."""
    best: dict[str, str] = {}
    for s in specs:
        for d, m in s.teaches:
            best[f"{d}.{m}"] = s.id
    out = {}
    for d in domains:
        for m in modes:
            key = f"{d}.{m}"
            if key in cfg.teachers:
                out[key] = cfg.teachers[key]
            elif key in best:
                out[key] = [TeacherRef(stage=best[key])]
    return out


def teacher_qat(teachers: dict[str, list[TeacherRef]], specs) -> dict[str, str]:
    """Teacher name -> ``"mxfp4"`` for every stage teacher whose learner trained with ``qat: mxfp4``: the weights it
    learned are the fake-quantized ones, which is also what the fleet serves of it (distill/teachers.py). A path
    teacher is served as stored."""
    by_id = {s.id: s for s in specs}
    out = {}
    for refs in teachers.values():
        for t in refs:
            spec = by_id.get(t.stage) if t.stage else None
            learner = getattr(spec.config, "learner", None) if spec is not None else None
            if getattr(learner, "qat", "none") == "mxfp4":
                out[t.name] = "mxfp4"
    return out


def _expand_distill(recipe, specs) -> list[StageSpec]:
    cfg = recipe.distill
    ids = {s.id for s in specs}
    student = cfg.student_from or ("generalist" if "generalist" in ids else "bootstrap")
    teachers = default_teachers(cfg, recipe.domains, recipe.modes, specs)
    weights = mixture_weights(cfg, recipe.domains, recipe.modes)
    budgets = mode_budgets(recipe)
    stage = DistillStage(distill=cfg, student_from=student, teachers=teachers,
                         teacher_qat=teacher_qat(teachers, specs), weights=weights,
                         max_tokens={m: cfg.max_tokens.get(m, budgets[m]) for m in recipe.modes},
                         learner=recipe.learner.merged(cfg.learner, "distill"),
                         tasks={d: recipe.task_source(d) for d in recipe.domains}, domains=recipe.domains,
                         modes=recipe.modes, seed=recipe.seed, heldout=held_out(recipe))
    deps = [student] + sorted({t.stage for ts in teachers.values() for t in ts if t.stage})
    inputs = sorted({t.path for ts in teachers.values() for t in ts if t.path})
    cells = [(d, m) for d in recipe.domains for m in recipe.modes]
    return [StageSpec("distill", "distill", list(dict.fromkeys(deps)), stage, cfg.resources, "distill",
                      cells=cells, scores=list(recipe.domains), dep_field="distill.student_from/teachers",
                      inputs=inputs)]


def check_distill(spec: StageSpec) -> None:
    """What the distill stage checks of its config before any work (also run by `pipeline validate`)."""
    c = spec.config
    for k, w in c.weights.items():
        if w > 0 and not c.teachers.get(k):
            raise ValueError(f"distill.mixture.{k}: no teacher for this domain x mode (set distill.teachers.{k})")
    if not any(c.weights.values()):
        raise ValueError("distill.mixture: all weights are 0")
    seen: dict[str, str] = {}
    for key, refs in c.teachers.items():
        for t in refs:
            where = t.stage or str(Path(t.path).expanduser())
            if seen.setdefault(t.name, where) != where:
                raise ValueError(f"distill.teachers.{key}: two teachers named {t.name!r} ({seen[t.name]} and {where})")


def _distill_workload(spec: StageSpec) -> Workload:
    c = spec.config
    d = c.distill
    seq_len = PROMPT_TOKENS + max(c.max_tokens.values())
    gen = d.prompts_per_step * d.samples_per_prompt
    names = {}
    for refs in c.teachers.values():
        for t in refs:
            names.setdefault(t.name, t.path)
    fan = sum(len(v) for v in c.teachers.values()) / max(len(c.teachers), 1)
    return Workload(learner=c.learner, micro_batch_tokens=max(MICRO_BATCH_TOKENS, seq_len), micro_batch_per_rank=True,
                    teacher_forward_tokens=MICRO_BATCH_TOKENS, step_tokens=gen * seq_len, gen_seqs=gen, seq_len=seq_len, engine=d.engine,
                    placement=d.placement, teachers=list(names.items()), teacher_fanout=fan, payload=d.payload,
                    teacher_memory_gb=d.teacher_memory_gb, fused_logits=True)


register_stage_kind(StageKind(
    name="distill", section="distill", config=DistillConfig, expand=_expand_distill, run="distill.stage:run",
    order=60, check=check_distill, workload=_distill_workload, progress_total=lambda cfg: cfg.distill.steps,
    key_metrics=("kl", "loss"), curves=("loss",),
    label="one student from every teacher: full-vocabulary reverse KL on its own trajectories"))


# --------------------------------------------------------------------------------------------------- control.seqkd
class SeqKDConfig(Strict):
    """``control.seqkd``: the student's start fine-tuned on teacher-generated samples (off-policy sequence-level
    distillation) with the distill stage's teacher-token budget: prompts drawn with the distillation mixture, one
    sample each from its teacher, until the teachers have generated as many tokens as they graded in ``distill``;
    then SFT on them for ``distill.steps`` steps. Teachers, mixture, sampling and budgets are ``distill``'s."""
    learner: dict | None = None         # learner overrides; default: distill.learner
    batch_size: int | None = Field(None, ge=1)   # sequences per step; default: distill.prompts_per_step
    save_every: int = operational(Field(20, ge=1))
    keep_checkpoints: int = operational(Field(2, ge=1))
    resources: Resources = operational(Resources())


class SeqKDStage(Strict):
    """What stage ``control.seqkd`` reads: the distill stage's resolved config and its own."""
    base: DistillStage
    learner: LearnerConfig
    batch_size: int
    save_every: int = operational(20)
    keep_checkpoints: int = operational(2)


def _expand_seqkd(recipe, specs) -> list[StageSpec]:
    cfg = recipe.controls.seqkd
    if cfg is None:
        return []
    if recipe.distill is None:
        raise ValueError("controls.seqkd: the sequence-level KD control is matched to the distill stage, but there "
                         "is no distill section")
    base = next(s for s in specs if s.id == "distill")
    d = recipe.distill
    overrides = cfg.learner if cfg.learner is not None else d.learner
    stage = SeqKDStage(base=base.config, learner=recipe.learner.merged(overrides, "controls.seqkd"),
                       batch_size=cfg.batch_size or d.prompts_per_step, save_every=cfg.save_every,
                       keep_checkpoints=cfg.keep_checkpoints)
    return [StageSpec("control.seqkd", "control.seqkd", list(base.deps) + ["distill"], stage, cfg.resources,
                      "controls", cells=base.cells, scores=base.scores, dep_field="controls.seqkd",
                      inputs=base.inputs)]


register_stage_kind(StageKind(
    name="control.seqkd", section="controls", config=SeqKDConfig, expand=_expand_seqkd,
    run="distill.seqkd:run", order=70, check=lambda spec: check_distill(
        StageSpec("distill", "distill", [], spec.config.base, None, "distill")),
    workload=lambda spec: Workload(learner=spec.config.learner, micro_batch_tokens=MICRO_BATCH_TOKENS,
                                   micro_batch_per_rank=True),
    progress_total=lambda cfg: cfg.base.distill.steps, key_metrics=("loss",), curves=("loss",),
    label="a control: the student's start fine-tuned on teacher samples with distill's teacher-token budget"))
