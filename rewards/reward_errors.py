"""When verifier failures stop a stage: ``check_reward_errors``, applied to every batch of rewards a stage trains on.

A verifier failure (``Verdict.unscored``: a worker that crashed twice, a broken pool, the sandbox lost after the
stage's start check, a verifier that raised) scores 0 without judging the completion. Training on such zeros
teaches the model nothing true, so each step counts them (``reward_errors`` in the step's metrics row) and the
stage fails with one line when they pass the recipe's limits (``grpo.reward_errors``): by default any failure in
the first step (a broken set-up shows at once) and more than 5% of a step's rewards after it.
"""
from __future__ import annotations


class RewardErrorsExceeded(RuntimeError):
    """Too many rewards of a step were verifier failures; ``str(err)`` is one line."""


def check_reward_errors(errors: int, scored: int, step: int, first_step: int, max_fraction: float,
                        first_reason: str | None = None, where: str = "") -> None:
    """Raise ``RewardErrorsExceeded`` when ``errors`` of a step's ``scored`` rewards pass the limit: at most
    ``first_step`` failures in step 0, at most ``max_fraction`` of the step's rewards after it."""
    if errors <= 0:
        return
    if step == 0:
        if errors <= first_step:
            return
        allowed, field = f"at most {first_step} in the first step", "first_step"
    else:
        if errors <= max_fraction * scored:
            return
        allowed, field = f"at most {max_fraction:.1%} of a step's rewards after the first", "max_fraction"
    why = " ".join(str(first_reason or "?").split())[:200]
    raise RewardErrorsExceeded(
        f"{where + ' ' if where else ''}step {step}: {errors} of {scored} rewards were verifier failures, not "
        f"judgements (first: {why}); the recipe allows {allowed} (reward_errors.{field})")
