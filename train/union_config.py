"""Union SFT -- SFT on the union of the domains' demonstrations, every mode -- as the ``base`` and ``generalist``
sections share it: ``UnionSFTConfig`` (the recipe fields), ``UnionSFTStage`` (what such a stage reads), the helpers
that expand a section into its stage, and the stage kind ``base`` (driver ``train/base.py``). The ``generalist``
section and kind are in ``distill/config.py``; both stages run ``train.sft.run_union_sft``.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from core.config import Domain, Resources, Strict, operational
from core.registry import StageKind, StageSpec, Workload, register_stage_kind

from .config import HeldOut, LearnerConfig, TaskSource, held_out


def nonnegative_values(v: dict) -> dict:
    """``v`` unchanged, or a ValueError naming the first key with a negative value."""
    for k, n in v.items():
        if n < 0:
            raise ValueError(f"{k}: must be >= 0, got {n}")
    return v


class UnionSFTConfig(Strict):
    """SFT on the union of the domains' demonstrations (every mode): the fields ``base`` and ``generalist`` share."""
    init_from: str = "bootstrap"
    batch_size: int | None = Field(None, ge=1)  # default: sft.batch_size
    max_len: int | None = Field(None, ge=16)    # default: sft.max_len
    repeats: dict[Domain, int] = {}     # times a domain's demonstrations enter the union (0: left out)
    learner: dict | None = None         # learner overrides; default: sft.learner
    save_every: int = operational(Field(50, ge=1))
    keep_checkpoints: int = operational(Field(2, ge=1))
    resources: Resources = operational(Resources())

    @field_validator("repeats")
    @classmethod
    def _nonneg(cls, v):
        return nonnegative_values(v)


class BaseConfig(UnionSFTConfig):
    """The shared base: SFT on the union of the domains' demonstrations from ``init_from``, the model every SFT
    specialist and the student's start fine-tune (``sft.init_from: base``, ``generalist.init_from: base``). On the
    embedded model it stands in for pretraining, so that specialists and student share what DeepSeek-V4's share, a
    base that already knows the chat format and the domains; a real base model comes from ``model.path`` and needs
    no base stage (docs/results.md, "A shared base stage")."""
    steps: int = Field(ge=1)
    repeats: dict[Domain, int] = {}     # times a domain's demonstrations enter the union; default 1 each


class UnionSFTStage(Strict):
    """What a union-SFT stage (``base``, ``generalist``) reads."""
    init_from: str
    steps: int
    batch_size: int
    max_len: int
    repeats: dict[str, int]
    learner: LearnerConfig
    tasks: dict[str, TaskSource]
    modes: list[str]
    seed: int
    save_every: int = operational(50)
    keep_checkpoints: int = operational(2)
    heldout: HeldOut = operational(None)


def union_sft_stage(recipe, cfg: UnionSFTConfig, section: str, steps: int, repeats: dict[str, int]) -> UnionSFTStage:
    """The stage config of a union-SFT section: batch size, length and learner default to the ``sft`` section's."""
    sft = recipe.sft
    overrides = cfg.learner if cfg.learner is not None else (sft.learner if sft is not None else {})
    return UnionSFTStage(
        init_from=cfg.init_from, steps=steps, batch_size=cfg.batch_size or (sft.batch_size if sft else 32),
        max_len=cfg.max_len or (sft.max_len if sft else 256), repeats=repeats,
        learner=recipe.learner.merged(overrides, section),
        tasks={d: recipe.task_source(d) for d in recipe.domains}, modes=recipe.modes, seed=recipe.seed,
        save_every=cfg.save_every, keep_checkpoints=cfg.keep_checkpoints, heldout=held_out(recipe))


def union_sft_spec(recipe, section: str, cfg: UnionSFTConfig, stage: UnionSFTStage) -> StageSpec:
    """A union-SFT stage: id and kind ``section``, evaluated on every domain x mode."""
    cells = [(d, m) for d in recipe.domains for m in recipe.modes]
    return StageSpec(section, section, [cfg.init_from], stage, cfg.resources, section, cells=cells,
                     scores=list(recipe.domains), dep_field=f"{section}.init_from")


def union_sft_workload(spec) -> Workload:
    c = spec.config
    return Workload(learner=c.learner, micro_batch_tokens=c.batch_size * c.max_len,
                    step_tokens=c.batch_size * c.max_len)


def _expand_base(recipe, specs) -> list[StageSpec]:
    b = recipe.base
    stage = union_sft_stage(recipe, b, "base", b.steps, {d: b.repeats.get(d, 1) for d in recipe.domains})
    return [union_sft_spec(recipe, "base", b, stage)]


register_stage_kind(StageKind(
    name="base", section="base", config=BaseConfig, expand=_expand_base, run="train.base:run", order=5,
    workload=union_sft_workload, progress_total=lambda cfg: cfg.steps, key_metrics=("loss",), curves=("loss",),
    label="the shared base: SFT on the union of the domains, what the specialists and the student's start fine-tune"))
