"""What a stage receives, and the lifecycle every stage shares.

``StageContext``: the stage's folder, its fully resolved config (``config``, built once by the graph; a stage reads
nothing else of the recipe), its dependencies' ``final/`` folders, seed, resources, manifest, metrics log, logger.

The lifecycle, so a driver reads as an outline:

    loop = ctx.train_loop(learner, total=cfg.steps, save_every=cfg.save_every, keep=cfg.keep_checkpoints)
    for step in loop:                 # resumes after the newest good checkpoint; metrics past it are dropped
        ...                           # one optimizer step
        loop.log(loss=..., ...)       # metrics.jsonl + progress line + a checkpoint at save points
    ctx.publish(learner.save_pretrained, tok)      # final/, written atomically
    rows = ctx.evaluate(cells)        # held-out rows of final/ (the evaluator the runner installed)

A learner is anything with ``save(folder, extra)`` / ``load(folder) -> extra`` (``train.learner.Learner``).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .checkpoints import Checkpoints
from .rundir import Manifest, MetricsLog, replace_dir


class DriverGone(RuntimeError):
    """The run that launched a stage no longer owns the run directory."""


@dataclass
class StageContext:
    stage_id: str
    kind: str
    dir: Path
    config: Any                  # the stage's resolved config (pydantic model)
    deps: dict[str, Path]        # dependency stage id -> its final/ folder
    seed: int
    num_cpus: int = 1
    num_gpus: float = 0
    domain: str | None = None
    mode: str | None = None
    driver: tuple | None = None  # (hostname, pid) of the `pipeline run` that launched this stage
    logging: Any = None          # the recipe's logging section (metric sinks), or None
    project: str = "run"         # W&B project default (the recipe name)
    evaluator: Any = None        # held-out evaluation: ``evaluator(model_id, folder, cells) -> rows`` (runner)
    services: dict = field(default_factory=dict)   # run-wide services the runner hands in (rollout fleet, ...)

    def __post_init__(self):
        self.dir = Path(self.dir)
        self.manifest = Manifest(self.dir)
        self.final_dir = self.dir / "final"
        self.log = _stage_logger(self.stage_id, self.dir / "log.txt")
        from .sinks import metric_sinks  # TensorBoard / W&B when the recipe's `logging` section asks

        self.metrics = MetricsLog(self.dir / "metrics.jsonl",
                                  sinks=metric_sinks(self.logging, self.project, self.stage_id, self.dir.parent,
                                                     self.log.warning))

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

    def close(self) -> None:
        """End of the stage (the runner calls it whatever happened): finish the metric sinks."""
        self.metrics.close()

    def checkpoints(self, keep: int = 2) -> Checkpoints:
        return Checkpoints(self.dir, keep=keep)

    def dep(self, stage_id: str) -> Path:
        if stage_id not in self.deps:
            raise KeyError(f"{self.stage_id}: {stage_id} is not a dependency (have {sorted(self.deps)})")
        return self.deps[stage_id]

    def progress(self, total: int, initial: int = 0, desc: str | None = None) -> "Progress":
        return Progress(self, total, initial, desc or self.stage_id)

    # ------------------------------------------------------------------------------------------ lifecycle
    def train_loop(self, learner, total: int, save_every: int, keep: int = 2, show=("loss",)) -> "TrainLoop":
        return TrainLoop(self, learner, total, save_every, keep, show)

    def publish(self, write: Callable[..., None], *args) -> Path:
        """``write(folder, *args)`` fills a temporary folder that then replaces ``final/`` in one rename."""
        tmp = self.dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp, *args)
        replace_dir(tmp, self.final_dir)
        return self.final_dir

    def evaluate(self, cells: list[tuple[str, str]], folder: Path | None = None, model_id: str | None = None
                 ) -> list[dict]:
        """Held-out rows of ``folder`` (default ``final/``) on ``cells``, recorded in the manifest (``eval_rows``)
        so the eval stage reuses them instead of generating again."""
        if self.evaluator is None or not cells:
            return []
        rows = self.evaluator(model_id or self.stage_id, Path(folder or self.final_dir), cells, log=self.log.info)
        if folder is None or Path(folder) == self.final_dir:
            self.manifest.update(eval_rows=rows, eval_rollout=getattr(self.evaluator, "rollout", None))
        return rows


class TrainLoop:
    """Resume, step, log, checkpoint: the part of every training stage that is the same."""

    def __init__(self, ctx: StageContext, learner, total: int, save_every: int, keep: int, show):
        self.ctx, self.learner, self.total, self.save_every, self.show = ctx, learner, total, save_every, show
        self.ckpts = ctx.checkpoints(keep)
        latest = self.ckpts.latest()
        self.start, self.extra = 0, {}
        if latest is not None:
            self.extra = learner.load(latest)
            self.start = int(self.extra["step"])
            ctx.log.info(f"[{ctx.stage_id}] resumed from {latest.name} (step {self.start})")
        if self.ckpts.warnings:                 # also when every checkpoint was corrupt (a restart from step 0)
            ctx.manifest.update(warnings=self.ckpts.warnings)
        ctx.metrics.truncate_after(self.start)
        self.bar = ctx.progress(total, initial=self.start)
        self.step = self.start

    def __iter__(self):
        for step in range(self.start, self.total):
            self.step = step
            yield step

    def log(self, extra: dict | None = None, **row) -> None:
        """Record step ``self.step + 1``; checkpoint it (with ``extra``, e.g. the data position) at save points."""
        n = self.step + 1
        self.ctx.metrics.log(n, **row)
        self.bar.update(1, **{k: row[k] for k in self.show if k in row})
        if n % self.save_every == 0 or n == self.total:
            tmp = self.ckpts.begin(n)
            self.learner.save(tmp, {"step": n, **(extra or {})})
            self.ckpts.commit(tmp, n)


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
