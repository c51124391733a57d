"""Checkpoint folders with a commit marker written last, checksums, and fallback to the previous good one.

``<stage>/ckpt/step_000120/`` holds whatever the learner saved plus ``checksums.json`` and ``COMMITTED``;
``<stage>/ckpt/checkpoints.jsonl`` appends one line per commit. A folder without ``COMMITTED``, or whose checksums
do not match, is never resumed from.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from .rundir import atomic_write_json, atomic_write_text, now

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("checksums.json", "COMMITTED")}


class Checkpoints:
    def __init__(self, stage_dir: Path, keep: int = 2):
        self.root = Path(stage_dir) / "ckpt"
        self.keep = max(1, keep)
        self.warnings: list[str] = []

    def begin(self, step: int) -> Path:
        tmp = self.root / f".step_{step:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, step: int, **info) -> Path:
        atomic_write_json(tmp / "checksums.json", checksums(tmp))
        atomic_write_text(tmp / "COMMITTED", now() + "\n")
        final = self.root / f"step_{step:06d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        with open(self.root / "checkpoints.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "path": final.name, "time": now(), **info}) + "\n")
        self._prune()
        return final

    def _committed(self) -> list[Path]:
        if not self.root.exists():
            return []
        return sorted((p for p in self.root.glob("step_*") if (p / "COMMITTED").exists()), key=lambda p: p.name)

    def _prune(self) -> None:
        for p in self._committed()[: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)

    def verify(self, ckpt: Path) -> str | None:
        """None when ``ckpt`` matches its checksums, else what is wrong."""
        try:
            want = json.loads((ckpt / "checksums.json").read_text())
        except (OSError, json.JSONDecodeError):
            return "checksums.json missing or unreadable"
        got = checksums(ckpt)
        bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        return f"checksum mismatch in {', '.join(bad)}" if bad else None

    def latest(self) -> Path | None:
        """The newest committed checkpoint that verifies; corrupt newer ones are reported and skipped."""
        for ckpt in reversed(self._committed()):
            problem = self.verify(ckpt)
            if problem is None:
                return ckpt
            msg = f"checkpoint {ckpt} is corrupt ({problem}); falling back to the previous one"
            log.warning(msg)
            self.warnings.append(msg)
        return None

    @staticmethod
    def step_of(ckpt: Path) -> int:
        return int(ckpt.name.split("_")[1])
