"""What every verifier returns: a score in [0, 1] and the details of how it was reached.

A score of 0 is either a judgement (the answer is wrong, the format is broken, the program failed its tests) or no
judgement at all: the verifier itself failed (its worker crashed twice, the pool broke, the sandbox was lost after
the stage's start check, the verifier raised). The second kind carries ``details["verifier_error"]`` (a one-line
reason; ``None`` for a judgement), so it can be counted (``reward_errors``) and never passes for a wrong answer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    score: float
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        self.score = float(min(1.0, max(0.0, self.score)))
        for k, v in (("extracted", None), ("failed_checks", []), ("error", None), ("time_s", 0.0),
                     ("format_ok", None), ("verifier_error", None)):
            self.details.setdefault(k, v)

    @property
    def unscored(self) -> bool:
        """True when the verifier failed to judge (``details["verifier_error"]``), not the completion."""
        return self.details.get("verifier_error") is not None

    def to_dict(self) -> dict:
        return asdict(self)


def verifier_failure(reason: str, **details) -> Verdict:
    """Score 0 because the verifier could not judge: ``error`` and ``verifier_error`` both say why."""
    return Verdict(0.0, {**details, "error": reason, "verifier_error": reason})


def count_unscored(verdicts) -> tuple[int, str | None]:
    """(how many verdicts are verifier failures, the first one's reason)."""
    bad = [v for v in verdicts if v.unscored]
    return len(bad), (bad[0].details["verifier_error"] if bad else None)
