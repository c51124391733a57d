"""What every verifier returns: a score in [0, 1] and the details of how it was reached."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Verdict:
    score: float
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        self.score = float(min(1.0, max(0.0, self.score)))
        for k, v in (("extracted", None), ("failed_checks", []), ("error", None), ("time_s", 0.0),
                     ("format_ok", None)):
            self.details.setdefault(k, v)

    def to_dict(self) -> dict:
        return asdict(self)
