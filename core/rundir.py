"""Run-directory I/O: atomic writes, manifests, the run lock and append-only metrics.

Layout: ``<run_dir>/<stage_id>/`` holds ``manifest.json``, ``metrics.jsonl``, ``log.txt``, ``ckpt/`` and ``final/``.
Every write goes to a temporary name first and is renamed into place, so a kill never leaves half a file; a stage
counts as complete only when its manifest says so.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

STATUSES = ("pending", "running", "complete", "failed", "skipped")


class RunDirError(RuntimeError):
    """A run-directory problem that the CLI reports in one line."""


_FAULT_HITS: dict[str, int] = {}


def inject_fault(path: Path) -> bool:
    """Test hook: True when this write should fail as if the disk were full. Off unless ``PIPELINE_FAULT`` is set.

    ``PIPELINE_FAULT="<substring>[@<n>]"``: the n-th (default 1st) write in this process to a path containing
    ``<substring>`` fails with ``OSError(ENOSPC)`` after half of its data was written (atomic writes: to the temporary
    file; ``metrics.jsonl``: a torn line). Used by tests/reliability to check that a failed write leaves earlier
    outputs intact and the stage resumable; it covers ``atomic_write_*`` (manifests, checkpoint checksums and commit
    markers, recipe.yaml) and ``MetricsLog.log``. Every such write passes ``PIPELINE_STALL`` (:func:`_stall`) first.
    """
    _stall(path)
    spec = os.environ.get("PIPELINE_FAULT")
    if not spec:
        return False
    sub, _, nth = spec.partition("@")
    if sub not in str(path):
        return False
    _FAULT_HITS[spec] = _FAULT_HITS.get(spec, 0) + 1
    return _FAULT_HITS[spec] == int(nth or 1)


def _stall(path: Path) -> None:
    """Test hook: ``PIPELINE_STALL="<substring>=<seconds>"``: the first write in this process to a path containing
    ``<substring>`` waits that long before it starts. Off unless set. tests/reliability holds a stage inside its next
    checkpoint's write this way, so that a kill lands mid-stage however fast the tiny model's steps are (three steps
    and a stage's end inside one second were seen, faster than a test can poll and kill).
    """
    spec = os.environ.get("PIPELINE_STALL")
    if not spec:
        return
    sub, _, seconds = spec.rpartition("=")
    key = f"stall:{spec}"
    if sub and sub in str(path) and key not in _FAULT_HITS:
        _FAULT_HITS[key] = 1
        time.sleep(float(seconds))


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by PIPELINE_FAULT)", str(path))


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            if inject_fault(path):
                f.write(text[: len(text) // 2])
                raise _enospc(path)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, default=None):
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place, replacing any older one."""
    final = Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Manifest:
    """``<stage>/manifest.json``: status, config and input hashes, times, outputs, metric summary."""

    def __init__(self, stage_dir: Path):
        self.path = Path(stage_dir) / "manifest.json"

    def read(self) -> dict:
        return read_json(self.path, default={}) or {}

    def update(self, **fields) -> dict:
        data = self.read()
        data.update(fields)
        atomic_write_json(self.path, data)
        return data


class RunLock:
    """An exclusive lock on a run directory (released by the kernel if the holder dies)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise RunDirError(f"{self.path.parent}: locked by a running `pipeline run` (pid {holder}); "
                              "wait for it or stop it first") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per step, flushed per line.

    ``truncate_after(step)`` drops lines past a checkpoint when a stage resumes, so a resumed stage never writes a
    step twice.
    """

    def __init__(self, path: Path, sinks=()):
        self.path = Path(path)
        self.sinks = list(sinks)         # pipeline.core.sinks: TensorBoard, W&B (each gets every log call)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill: everything after it is dropped
        return out

    def truncate_after(self, step: int) -> None:
        rows = [r for r in self.rows() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        """Finish every sink (a W&B run gets its exit record); metrics.jsonl needs no closing."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 — a view failing to close never fails the stage
                pass
        self.sinks = []

    def log(self, step: int, **metrics) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n"
        with open(self.path, "a") as f:
            if inject_fault(self.path):
                f.write(line[: len(line) // 2])
                raise _enospc(self.path)
            f.write(line)
            f.flush()
        for sink in list(self.sinks):
            try:
                sink.log(step, metrics)
            except Exception as e:  # noqa: BLE001 — a sink is a view; metrics.jsonl is the record
                self.sinks.remove(sink)
                import logging

                logging.getLogger(__name__).warning(f"metrics sink {type(sink).__name__} failed and is off: {e}")
