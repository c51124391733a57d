"""Named registries: stage kinds, and small registries of pure functions (advantages, losses, engines, ...).

A stage kind declares, in one place beside its driver, everything the orchestrator needs to know about it: the
recipe section it reads, how that section becomes stages (``expand``: ids, dependencies, each stage's fully resolved
config), the checks a stage makes of its config at run time (``check``: the same function runs at ``pipeline
validate``), its run function (``run``: "module:function", imported only inside the stage's worker, so validating a
recipe imports no torch), what it asks of a machine (``workload``: the numbers `pipeline plan` turns into memory),
and how the live view and report show it. The orchestrator looks kinds up here and has no ``if kind == ...``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> T`` with a decorator to register and a one-line error naming the known entries."""

    def __init__(self, what: str):
        self.what, self._items = what, {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._items[name] = obj
            return obj
        return deco

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(f"unknown {self.what} {name!r} (known: {', '.join(sorted(self._items)) or 'none'})")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)


@dataclass
class StageSpec:
    """One stage of a run: its id, dependencies and fully resolved config (what ``ctx.config`` is)."""
    id: str
    kind: str
    deps: list[str]
    config: Any                        # the kind's resolved config (a pydantic model)
    resources: Any                     # core.config.Resources
    config_key: str                    # the recipe section, for error messages
    domain: str | None = None
    mode: str | None = None
    cells: list[tuple[str, str]] = field(default_factory=list)   # (domain, mode) cells its model is evaluated on
    teaches: list[tuple[str, str]] = field(default_factory=list)  # cells it is a specialist (teacher) for
    scores: list[str] = field(default_factory=list)   # domains whose verifiers it runs (training or evaluation)
    dep_field: str = ""                # the recipe field naming the dependencies, for error messages
    inputs: list[str] = field(default_factory=list)   # files outside the run whose content it reads
    fleet: dict | None = None          # the fleet settings that shape its samples, for a stage that samples with the
    #                                    run's fleet (FleetConfig.rollout_identity; set by the graph; in its hash)


@dataclass
class Workload:
    """What one stage asks of a machine, as numbers; ``pipeline plan`` turns them into per-actor memory."""
    learner: Any = None                # train.config.LearnerConfig, or None (no training)
    ranks: int = 1                     # learner ranks (data parallel)
    micro_batch_tokens: float = 0.0    # tokens per learner micro-batch (split over the ranks unless per_rank)
    micro_batch_per_rank: bool = False  # micro-batches are packed per rank (distillation's fixed token packs)
    step_tokens: float = 0.0
    gen_seqs: int = 0                  # sequences generated per step
    seq_len: int = 0                   # prompt + completion tokens
    engine: Any = None                 # rollout.config.EngineConfig, or None
    placement: Any = None              # rollout.config.Placement, or None
    reference_model: bool = False      # a frozen copy of the init model (GRPO's KL term)
    teachers: list[tuple[str, str | None]] = field(default_factory=list)  # (name, external path or None)
    teacher_fanout: float = 1.0        # teachers per sequence
    teacher_forward_tokens: float = 0.0  # tokens per teacher forward batch
    payload: str = "hidden"
    teacher_memory_gb: float = 0.0
    fused_logits: bool = False         # the loss never holds [tokens, V] logits (chunked)
    reward_workers: int = 0
    loads_model_only: bool = False     # bootstrap: builds or loads the model, writes final/
    evaluates: bool = False            # eval: one model at a time through an engine
    notes: list[str] = field(default_factory=list)


@dataclass
class StageKind:
    name: str
    section: str                                   # the recipe key it reads
    config: type                                   # the section's config class
    expand: Callable[..., list[StageSpec]]         # (recipe, specs so far) -> this kind's stages
    run: str                                       # "module:function" taking a StageContext, returning a summary
    check: Callable[[StageSpec], None] = lambda spec: None   # run-time config checks; ValueError, one line
    workload: Callable[[StageSpec], Workload] = lambda spec: Workload()
    progress_total: Callable[[Any], int | None] = lambda cfg: None
    key_metrics: tuple[str, ...] = ()              # live view: the first one present is shown
    curves: tuple[str, ...] = ()                   # report: metrics plotted per step
    label: str = ""                                # one line for docs and `pipeline stages`
    produces_model: bool = True
    order: int = 50                                # expansion order (a kind may read the stages expanded before)

    def run_fn(self) -> Callable:
        module, _, fn = self.run.partition(":")
        return getattr(importlib.import_module(module), fn)


STAGE_KINDS: dict[str, StageKind] = {}


def register_stage_kind(kind: StageKind) -> StageKind:
    if kind.name in STAGE_KINDS and STAGE_KINDS[kind.name] is not kind:
        raise ValueError(f"stage kind {kind.name!r} registered twice")
    STAGE_KINDS[kind.name] = kind
    return kind
