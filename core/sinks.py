"""Optional metric sinks besides ``metrics.jsonl``: TensorBoard and Weights & Biases (offline), per the recipe's
``logging`` section. Each sink gets every ``MetricsLog.log`` call; its library is imported only when switched on,
a missing library is reported once in the stage log and skipped, and a sink that fails is switched off (metrics.jsonl
is the record; sinks are views of it).

    logging: {tensorboard: true}        # tensorboard --logdir runs/<name>/tensorboard
    logging: {wandb: true}              # wandb sync runs/<name>/wandb/offline-run-*
"""
from __future__ import annotations

import logging
from pathlib import Path

from .config import Strict

log = logging.getLogger(__name__)


class LoggingConfig(Strict):
    """Where stage metrics go besides ``<stage>/metrics.jsonl`` (always written). Operational."""
    tensorboard: bool = False               # event files in <run_dir>/tensorboard/<stage> (needs `tensorboard`)
    wandb: bool = False                     # Weights & Biases in offline mode, files in <run_dir>/wandb (needs `wandb`)
    wandb_project: str | None = None        # default: the recipe name


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}


class TensorBoardSink:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

        self.writer = SummaryWriter(log_dir=str(logdir), flush_secs=10)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in _numeric(metrics).items():
            self.writer.add_scalar(k.replace(".", "/", 1) if k.count(".") == 1 else k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, run_dir: Path, project: str, stage_id: str, config: dict | None = None):
        import wandb

        if wandb.run is not None:       # a Ray worker reused for another stage: close the previous stage's run
            wandb.finish()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        # wandb-core buffers the run's .wandb file and writes it on finish or every 15 s; a stage's Ray worker is
        # killed without finishing the run (no atexit), so flush every second (wandb >= 0.31) to lose at most that
        settings = {"x_transaction_log_flush_interval": 1.0} \
            if "x_transaction_log_flush_interval" in wandb.Settings.model_fields else {}
        self.run = wandb.init(project=project, name=stage_id, group=project, dir=str(run_dir), mode="offline",
                              config=config or {}, job_type=stage_id.split(".")[0], settings=wandb.Settings(**settings))

    def log(self, step: int, metrics: dict) -> None:
        # one MetricsLog.log call is one whole step: commit it now (with an explicit step wandb holds the row open
        # until a later step or finish, so a stage's last row was lost when its worker ended without finish)
        self.run.log(_numeric(metrics), step=step, commit=True)

    def close(self) -> None:
        self.run.finish()


def metric_sinks(cfg, project: str, stage_id: str, run_dir: Path, warn=None) -> list:
    """The sinks the recipe's ``logging`` section ``cfg`` switches on (empty when none)."""
    warn = warn or log.warning
    sinks = []
    if cfg is None:
        return sinks
    if cfg.tensorboard:
        try:
            sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard" / stage_id))
        except ImportError as e:
            warn(f"logging.tensorboard: not installed ({e}); pip install tensorboard (the `report` extra)")
    if cfg.wandb:
        try:
            sinks.append(WandbSink(Path(run_dir), cfg.wandb_project or project, stage_id))
        except ImportError as e:
            warn(f"logging.wandb: not installed ({e}); pip install wandb")
    return sinks
