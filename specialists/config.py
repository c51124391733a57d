"""The ``sft`` and ``grpo`` recipe sections, what each ``sft.<domain>`` / ``grpo.<domain>.<mode>`` stage reads after
the graph resolved it, and their stage kinds (drivers: ``specialists/sft.py``, ``specialists/grpo.py``).
"""
from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from core.config import Domain, Mode, Resources, Strict, first_error, operational
from core.registry import StageKind, StageSpec, Workload, register_stage_kind
from rewards.shaping import ShapingConfig
from rollout.config import EngineConfig, Placement, Sampling
from train.config import HeldOut, LearnerConfig, TaskSource, held_out

PROMPT_TOKENS = 512          # assumed prompt length when sizing rollouts for `pipeline plan`


def _merge(cls, base: dict, over: dict, where: str):
    try:
        return cls.model_validate({**base, **over})
    except ValidationError as e:
        raise ValueError(first_error(e, where)) from None


# ------------------------------------------------------------------------------------------------------------ sft
class SFTConfig(Strict):
    init_from: str = "bootstrap"        # a stage id; its final/ folder is the starting point
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    max_len: int = Field(256, ge=16)
    save_every: int = operational(Field(50, ge=1))
    keep_checkpoints: int = operational(Field(2, ge=1))
    learner: dict = {}                  # overrides of the recipe's learner section for this stage
    resources: Resources = operational(Resources())
    per_domain: dict[Domain, dict] = {}  # per-domain overrides of any field above

    @model_validator(mode="after")
    def _check_overrides(self):
        for d in self.per_domain:
            self.for_domain(d)
        return self

    def for_domain(self, domain: str) -> "SFTConfig":
        return _merge(SFTConfig, self.model_dump(exclude={"per_domain"}), self.per_domain.get(domain, {}),
                      f"per_domain.{domain}.")


class SFTStage(Strict):
    """What stage ``sft.<domain>`` reads."""
    sft: SFTConfig                      # the section with its per-domain overrides applied
    learner: LearnerConfig              # recipe.learner merged with sft.learner
    task: TaskSource
    domain: str
    modes: list[str]
    seed: int
    heldout: HeldOut = operational(None)  # rows carry their spec: the eval stage recomputes rows that differ


def _expand_sft(recipe, specs) -> list[StageSpec]:
    out = []
    for d in recipe.domains:
        cfg = recipe.sft.for_domain(d)
        stage = SFTStage(sft=cfg, learner=recipe.learner.merged(cfg.learner, "sft"), task=recipe.task_source(d),
                         domain=d, modes=recipe.modes, seed=recipe.seed, heldout=held_out(recipe))
        out.append(StageSpec(f"sft.{d}", "sft", [cfg.init_from], stage, cfg.resources, "sft", domain=d,
                             cells=[(d, m) for m in recipe.modes], teaches=[(d, m) for m in recipe.modes], scores=[d],
                             dep_field="sft.init_from", inputs=_task_inputs(stage.task)))
    return out


def _task_inputs(src: TaskSource) -> list[str]:
    return [p for p in (src.data_files,) if p] + [s for s in src.sources() if s != "generated"]


register_stage_kind(StageKind(
    name="sft", section="sft", config=SFTConfig, expand=_expand_sft, run="specialists.sft:run", order=10,
    workload=lambda spec: Workload(learner=spec.config.learner, micro_batch_tokens=spec.config.sft.batch_size
                                   * spec.config.sft.max_len, step_tokens=spec.config.sft.batch_size
                                   * spec.config.sft.max_len),
    progress_total=lambda cfg: cfg.sft.steps, key_metrics=("loss",), curves=("loss",),
    label="a domain specialist: SFT on the domain's demonstrations in every reasoning mode"))


# ----------------------------------------------------------------------------------------------------------- grpo
class RewardErrorLimits(Strict):
    """When verifier failures (a reward of 0 that judged nothing: a worker crashed twice, the pool broke, the sandbox
    was lost after the start check) stop a GRPO stage with one line. Each step's ``reward_errors`` counts them."""
    first_step: int = Field(0, ge=0)               # failures allowed in the first step (0: any one stops the stage)
    max_fraction: float = Field(0.05, ge=0, le=1)  # after it: the largest fraction of a step's rewards that may fail


class GRPOConfig(Strict):
    """One ``grpo.<domain>.<mode>`` stage per domain x mode; see docs/grpo.md for the objective."""
    init_from: str = "sft.{domain}"         # ``{domain}`` / ``{mode}`` are filled in per stage
    modes: list[Mode] | None = None         # default: the recipe's modes
    steps: int = Field(10, ge=1)
    prompts_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=2)
    ppo_epochs: int = Field(1, ge=1)
    minibatches: int = Field(2, ge=1)       # > 1 makes pi_old != pi_theta within a batch
    # sequences per learner forward/backward: a rank's share of a minibatch in parts of at most this many, their
    # gradients accumulated into the minibatch's one optimizer step (None: the share at once). Memory (full-
    # vocabulary logits per sequence), not the step: the same step up to float summation order
    micro_batch_seqs: int | None = operational(Field(None, ge=1))
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
    shaping: ShapingConfig = ShapingConfig()   # per-mode budgets and length shaping, reward weights
    reward_errors: RewardErrorLimits = operational(RewardErrorLimits())   # when verifier failures stop the stage
    engine: EngineConfig = EngineConfig()
    placement: Placement = operational(Placement())   # colocate or split learner and engines on the stage's GPUs
    save_every: int = operational(Field(5, ge=1))
    keep_checkpoints: int = operational(Field(2, ge=1))
    learner: dict = {}
    resources: Resources = operational(Resources())
    per_domain: dict[Domain, dict] = {}
    per_mode: dict[Mode, dict] = {}

    @model_validator(mode="after")
    def _check_overrides(self):
        base = self.model_dump(exclude={"per_domain", "per_mode"})
        for key, table in (("per_domain", self.per_domain), ("per_mode", self.per_mode)):
            for k, over in table.items():
                _merge(GRPOConfig, base, over, f"{key}.{k}.")
        return self

    def resolved(self, domain: str, mode: str) -> "GRPOConfig":
        base = self.model_dump(exclude={"per_domain", "per_mode"})
        base.update(self.per_domain.get(domain, {}))
        base.update(self.per_mode.get(mode, {}))
        base["init_from"] = base["init_from"].format(domain=domain, mode=mode)
        return _merge(GRPOConfig, base, {}, f"grpo ({domain}.{mode}): ")


class GRPOStage(Strict):
    """What stage ``grpo.<domain>.<mode>`` (and its reward-free control ``control.entropy.<domain>.<mode>``) reads."""
    grpo: GRPOConfig                    # the section with its per-domain and per-mode overrides applied
    learner: LearnerConfig
    task: TaskSource
    domain: str
    mode: str
    seed: int
    reward_signal: bool = True          # False: the control -- every reward 0, so only the other terms act
    heldout: HeldOut = operational(None)

    @property
    def budget(self) -> int:
        return self.grpo.shaping.for_mode(self.mode).l_max


def _expand_grpo(recipe, specs, control: bool = False) -> list[StageSpec]:
    out = []
    for d in recipe.domains:
        for m in recipe.grpo.modes or recipe.modes:
            cfg = recipe.grpo.resolved(d, m)
            cfg = cfg.model_copy(update={"shaping": cfg.shaping.only(m)})   # what this stage's mode uses
            stage = GRPOStage(grpo=cfg, learner=recipe.learner.merged(cfg.learner, "grpo"),
                              task=recipe.task_source(d), domain=d, mode=m, seed=recipe.seed,
                              reward_signal=not control, heldout=held_out(recipe))
            sid, kind = (f"control.entropy.{d}.{m}", "control.entropy") if control else (f"grpo.{d}.{m}", "grpo")
            out.append(StageSpec(sid, kind, [cfg.init_from], stage, cfg.resources, "controls" if control else "grpo",
                                 domain=d, mode=m, cells=[(d, m)], teaches=[] if control else [(d, m)], scores=[d],
                                 dep_field="grpo.init_from", inputs=_task_inputs(stage.task)))
    return out


def _check_grpo(spec: StageSpec) -> None:
    from .algos import ADVANTAGES, LOSS_AGGREGATIONS

    g = spec.config.grpo
    if g.engine.kind == "vllm" and g.keep_sampling_mask and g.sampling.truncating and g.sampling.top_k == 0:
        raise ValueError("grpo.sampling.top_k: the Keep Sampling Mask with vllm needs a bounded kept set: set top_k "
                         "(with top_p < 1) so the engine can return the ids it kept")
    if g.advantage not in ADVANTAGES:
        raise ValueError(f"grpo.advantage: unknown {g.advantage!r} (known: {', '.join(ADVANTAGES.names())})")
    if g.loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"grpo.loss_agg: unknown {g.loss_agg!r} (known: {', '.join(LOSS_AGGREGATIONS.names())})")


def _grpo_workload(spec: StageSpec) -> Workload:
    c = spec.config
    g = c.grpo
    seq_len = PROMPT_TOKENS + c.budget
    gen = g.prompts_per_step * g.group_size
    per_step = max(1, gen // g.minibatches)
    if g.micro_batch_seqs:       # per rank: a rank's share in parts of at most micro_batch_seqs sequences
        return Workload(learner=c.learner, micro_batch_tokens=min(per_step, g.micro_batch_seqs) * seq_len,
                        micro_batch_per_rank=True, step_tokens=gen * seq_len, gen_seqs=gen, seq_len=seq_len,
                        engine=g.engine, placement=g.placement, reference_model=g.kl_coef > 0,
                        reward_workers=max(1, int(spec.resources.num_cpus) - 1))
    return Workload(learner=c.learner, micro_batch_tokens=per_step * seq_len,
                    step_tokens=gen * seq_len, gen_seqs=gen, seq_len=seq_len, engine=g.engine, placement=g.placement,
                    reference_model=g.kl_coef > 0, reward_workers=max(1, int(spec.resources.num_cpus) - 1))


register_stage_kind(StageKind(
    name="grpo", section="grpo", config=GRPOConfig, expand=_expand_grpo, run="specialists.grpo:run", order=30,
    check=_check_grpo, workload=_grpo_workload, progress_total=lambda cfg: cfg.grpo.steps,
    key_metrics=("reward", "accuracy"), curves=("reward", "accuracy", "response_length", "entropy"),
    label="a teacher: GRPO from the domain's SFT specialist in one reasoning mode"))


# ------------------------------------------------------------------------------------------------ control.entropy
def _expand_control(recipe, specs) -> list[StageSpec]:
    if not recipe.controls.entropy:
        return []
    if recipe.grpo is None:
        raise ValueError("controls.entropy: the reward-free control copies the grpo stages, but there is no grpo "
                         "section")
    return _expand_grpo(recipe, specs, control=True)


def _check_control(spec: StageSpec) -> None:
    """Every advantage of the control is 0, so the entropy term is its whole loss (the KL to its start is 0 there,
    and so is its gradient): at entropy_coef 0 the stage would publish its SFT start unchanged (measured on SmolLM2:
    grad_norm 0 at every step, held-out rows identical to sft.math's; docs/results.md)."""
    _check_grpo(spec)
    if spec.config.grpo.entropy_coef == 0:
        raise ValueError(f"controls.entropy: grpo.entropy_coef is 0 for {spec.id}: with every reward 0 the control "
                         "has no loss and would be its SFT start unchanged; set grpo.entropy_coef (e.g. -0.1: "
                         "sharpening) or drop controls.entropy")


register_stage_kind(StageKind(
    name="control.entropy", section="controls", config=GRPOConfig,
    expand=lambda recipe, specs: _expand_control(recipe, specs),
    run="specialists.grpo:run", order=35, check=_check_control, workload=_grpo_workload,
    progress_total=lambda cfg: cfg.grpo.steps, key_metrics=("reward", "entropy"), curves=("reward", "entropy"),
    label="a control: each GRPO stage with every reward 0 (what sharpening alone does), settings from grpo"))
