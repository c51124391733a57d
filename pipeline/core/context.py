"""What a stage receives: its folder, typed config, the recipe, its dependencies' outputs, logging and progress."""
from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoints import Checkpoints
from .rundir import Manifest, MetricsLog


class DriverGone(RuntimeError):
    """The run that launched a stage no longer owns the run directory."""


@dataclass
class StageContext:
    stage_id: str
    kind: str
    dir: Path
    config: Any                  # the stage's typed config (pydantic model)
    recipe: Any                  # the whole validated recipe (pipeline.recipe.Recipe)
    deps: dict[str, Path]        # dependency stage id -> its final/ folder
    seed: int
    num_cpus: int = 1
    num_gpus: float = 0
    domain: str | None = None
    mode: str | None = None
    extra: dict = field(default_factory=dict)
    driver: tuple | None = None  # (hostname, pid) of the `pipeline run` that launched this stage

    def __post_init__(self):
        self.dir = Path(self.dir)
        self.manifest = Manifest(self.dir)
        self.final_dir = self.dir / "final"
        self.log = _stage_logger(self.stage_id, self.dir / "log.txt")
        from .sinks import metric_sinks  # TensorBoard / W&B when the recipe's `logging` section asks

        self.metrics = MetricsLog(self.dir / "metrics.jsonl",
                                  sinks=metric_sinks(self.recipe, self.stage_id, self.dir.parent, self.log.warning))

    def check_driver(self) -> None:
        """Stop if the `pipeline run` that launched this stage is gone (SIGKILLed) or another run took the lock.

        Ray normally ends a dead driver's workers, but not instantly; an orphaned worker must not keep writing
        checkpoints or mark the stage complete behind the back of the next run.
        """
        if not self.driver or self.driver[0] != socket.gethostname():
            return  # on another node Ray's own job cleanup is the guard
        pid = self.driver[1]
        try:
            os.kill(pid, 0)
            holder = (self.dir.parent / ".lock").read_text().strip()
        except ProcessLookupError:
            raise DriverGone(f"{self.stage_id}: the pipeline run (pid {pid}) is gone; stopping") from None
        except OSError:
            return
        if holder and holder != str(pid):
            raise DriverGone(f"{self.stage_id}: another pipeline run (pid {holder}) holds the run directory")

    def checkpoints(self, keep: int = 2) -> Checkpoints:
        return Checkpoints(self.dir, keep=keep)

    def dep(self, stage_id: str) -> Path:
        if stage_id not in self.deps:
            raise KeyError(f"{self.stage_id}: {stage_id} is not a dependency (have {sorted(self.deps)})")
        return self.deps[stage_id]

    def progress(self, total: int, initial: int = 0, desc: str | None = None) -> "Progress":
        return Progress(self, total, initial, desc or self.stage_id)


class Progress:
    """A progress line per stage: step/total, rate, ETA and the key metric, printed at most every few seconds."""

    def __init__(self, ctx: StageContext, total: int, initial: int, desc: str, every_s: float = 5.0):
        self.ctx, self.total, self.n, self.desc, self.every_s = ctx, total, initial, desc, every_s
        self.t0, self.n0, self.last = time.time(), initial, 0.0

    def update(self, n: int = 1, **metrics) -> None:
        self.ctx.check_driver()
        self.n += n
        t = time.time()
        if t - self.last >= self.every_s or self.n >= self.total:
            self.last = t
            rate = (self.n - self.n0) / max(t - self.t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            self.ctx.log.info(f"[{self.desc}] {self.n}/{self.total} {rate:.2f} it/s eta {eta:.0f}s {shown}")


def _stage_logger(stage_id: str, path: Path) -> logging.Logger:
    logger = logging.getLogger(f"stage.{stage_id}")
    if not logger.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        logger.addHandler(fh)
        logger.addHandler(sh)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
