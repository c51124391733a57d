"""Reward shaping: pure functions plus the typed per-mode config the recipe fills in.

* ``overlong_penalty`` — DAPO's soft overlong punishment: 0 up to ``L_max - L_buffer`` tokens, then linear down to
  -1 at ``L_max`` (and -1 beyond).
* ``length_cost`` — a per-token cost ``-cost_per_token * n_tokens``.
* ``format_reward`` — 1 when the completion follows its mode's think-tag format (``core.chat.split_reasoning``),
  else 0.
* ``combine`` — the weighted sum of named components; an unknown or missing name is an error, not a silent 0.

Per-mode defaults (``ShapingConfig.for_mode``): ``non_think`` has the smallest budget and the strongest length
penalty, ``think_high`` sits between, ``think_max`` has the largest budget and a reduced penalty.
"""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import clean_completion
from core.chat import MODES, check_mode, split_reasoning


def overlong_penalty(n_tokens: int, l_max: int, l_buffer: int) -> float:
    if l_max <= 0 or l_buffer < 0 or l_buffer > l_max:
        raise ValueError("need 0 <= l_buffer <= l_max and l_max > 0")
    start = l_max - l_buffer
    if n_tokens <= start:
        return 0.0
    if n_tokens >= l_max or l_buffer == 0:
        return -1.0
    return (start - n_tokens) / l_buffer


def length_cost(n_tokens: int, cost_per_token: float) -> float:
    return -float(cost_per_token) * max(0, int(n_tokens))


def format_reward(completion: str, mode: str) -> float:
    try:  # an empty answer is a format failure too (otherwise "say nothing" would earn the format reward)
        _, answer, ok = split_reasoning(clean_completion(completion), check_mode(mode))
        return 1.0 if ok and answer.strip() else 0.0
    except TypeError:
        return 0.0


def combine(components: dict, weights: dict) -> float:
    """sum(weights[k] * components[k]); every weighted component must be present and finite."""
    missing = set(weights) - set(components)
    if missing:
        raise KeyError(f"components missing for weights: {sorted(missing)}")
    unknown = set(components) - set(weights)
    if unknown:
        raise KeyError(f"components without a weight: {sorted(unknown)}")
    total = 0.0
    for k, w in weights.items():
        v = float(components[k])
        if not math.isfinite(v):
            raise ValueError(f"component {k!r} is not finite: {v}")
        total += float(w) * v
    return total


class ModeShaping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    l_max: int = Field(gt=0, description="hard generation budget in tokens")
    l_buffer: int = Field(ge=0, description="the soft zone before l_max where the overlong penalty ramps to -1")
    length_cost_per_token: float = Field(ge=0.0)
    overlong_weight: float = Field(ge=0.0, default=1.0)

    @model_validator(mode="after")
    def _check(self):
        if self.l_buffer > self.l_max:
            raise ValueError("l_buffer must not exceed l_max")
        return self


def _default_modes() -> dict[str, ModeShaping]:
    return {
        "non_think": ModeShaping(l_max=1024, l_buffer=256, length_cost_per_token=2e-4, overlong_weight=1.0),
        "think_high": ModeShaping(l_max=4096, l_buffer=1024, length_cost_per_token=5e-5, overlong_weight=1.0),
        "think_max": ModeShaping(l_max=16384, l_buffer=4096, length_cost_per_token=1e-5, overlong_weight=0.5),
    }


class ShapingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modes: dict[str, ModeShaping] = Field(default_factory=_default_modes)
    weights: dict[str, float] = Field(default_factory=lambda: {"correct": 1.0, "format": 0.1, "overlong": 1.0,
                                                               "length": 1.0})

    @model_validator(mode="after")
    def _check(self):
        bad = set(self.modes) - set(MODES)
        if bad:
            raise ValueError(f"unknown modes {sorted(bad)}")
        defaults = _default_modes()
        for m in MODES:  # a recipe may override some modes only
            self.modes.setdefault(m, defaults[m])
        return self

    def only(self, mode: str) -> "ShapingConfig":
        """The shaping one mode's stage uses (its mode's budgets, the weights; the other modes at their defaults), so
        a stage's identity does not change when another mode's shaping does."""
        return ShapingConfig(modes={mode: self.for_mode(mode)}, weights=self.weights)

    def for_mode(self, mode: str) -> ModeShaping:
        return self.modes[check_mode(mode)]

    def components(self, correct: float, completion: str, n_tokens: int, mode: str,
                   format_ok: bool | None = None) -> dict:
        """``format_ok``: the verifier's own format verdict where one completion is not one turn (an agent
        transcript: every assistant turn keeps the mode's format); else the completion's think-tag format."""
        m = self.for_mode(mode)
        fmt = float(bool(format_ok)) if format_ok is not None else format_reward(completion, mode)
        return {"correct": float(correct), "format": fmt,
                "overlong": m.overlong_weight * overlong_penalty(n_tokens, m.l_max, m.l_buffer),
                "length": length_cost(n_tokens, m.length_cost_per_token)}

    def shaped(self, correct: float, completion: str, n_tokens: int, mode: str) -> float:
        return combine(self.components(correct, completion, n_tokens, mode), self.weights)
