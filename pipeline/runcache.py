"""Attempts and the run cache: a stage's finished output is replaced only by a finished attempt, and the outputs it
replaces are kept by identity, so that going back to an earlier recipe restores them instead of re-running.

Beside ``<run>/<stage>/`` (docs/architecture.md, "The run directory"):

- ``<run>/<stage>.attempt/``: where a stage runs when ``<stage>/`` holds a complete output of another identity (its
  config or inputs changed) or the stage is forced. Same layout as a stage folder. When the attempt completes, the
  output it replaces goes into the cache and the attempt is renamed to ``<stage>/``; when it fails or is interrupted,
  ``<stage>/`` stays as it was, and the next run with the attempt's identity resumes from the attempt's checkpoints.
- ``<run>/.cache/<stage>/<config_hash>-<inputs_hash>/``: a complete stage folder moved aside as it was (byte for
  byte), with ``<config_hash>-<inputs_hash>.json`` beside it (``bytes``, ``cached``: when it was put there). A stage
  that is not up to date takes back the entry of its identity instead of running.

The cache holds at most the recipe's ``keep_outputs`` bytes (``null``: no limit): after each addition the entries
put there first are removed until it fits. ``pipeline gc`` does the same on demand (``pipeline.runstatus.gc``).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from core.rundir import Manifest, RunDirError, atomic_write_json, read_json

ATTEMPT_SUFFIX = ".attempt"
CACHE_DIR = ".cache"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(v):
    """``keep_outputs`` / ``gc --keep``: an int of bytes, or a string such as ``"20GB"``, ``"1.5 GiB"``, ``"500M"``."""
    if v is None or isinstance(v, bool) or isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(v))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"expected bytes as an int or a size such as 20GB or 1.5GiB (got {v!r})")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "no limit"
    for unit, k in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def attempt_dir(run_dir, sid: str) -> Path:
    return Path(run_dir) / f"{sid}{ATTEMPT_SUFFIX}"


def identity_of(manifest: dict) -> tuple:
    return manifest.get("config_hash"), manifest.get("inputs_hash")


def read_manifest(folder: Path) -> dict:
    return Manifest(folder).read() if Path(folder).is_dir() else {}


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink())


def discard(folder: Path) -> None:
    """Remove a folder: renamed out of the way in one step, then deleted."""
    folder = Path(folder)
    if folder.exists():
        trash = folder.with_name(f".{folder.name}.trash-{time.time_ns()}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)


class RunCache:
    """``<run>/.cache/``: complete stage folders by (stage, config hash, input fingerprint), ``budget`` bytes."""

    def __init__(self, run_dir, budget: int | None = None, echo=print):
        self.run_dir, self.budget, self.echo = Path(run_dir), budget, echo
        self.root = self.run_dir / CACHE_DIR

    def _entry(self, sid: str, ident: tuple) -> Path:
        return self.root / sid / f"{ident[0]}-{ident[1]}"

    def entries(self) -> list[dict]:
        """Every entry: stage, key, path, bytes, cached (time it was put there)."""
        out = []
        if not self.root.is_dir():
            return out
        for sdir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for e in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    meta = read_json(e.with_name(e.name + ".json"), {}) or {}
                except RunDirError:
                    meta = {}
                out.append({"stage": sdir.name, "key": e.name, "path": e,
                            "bytes": meta.get("bytes") if isinstance(meta.get("bytes"), int) else folder_bytes(e),
                            "cached": meta.get("cached") or e.stat().st_mtime})
        return out

    def put(self, sid: str, folder: Path, evict: bool = True) -> Path:
        """Move a complete stage folder into the cache under its manifest's identity (replacing an older entry)."""
        dest = self._entry(sid, identity_of(read_manifest(folder)))
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.drop(dest)
        n = folder_bytes(folder)
        os.replace(folder, dest)
        atomic_write_json(dest.with_name(dest.name + ".json"), {"stage": sid, "bytes": n, "cached": time.time()})
        self.echo(f"[cache] {sid}: previous output kept in {dest.relative_to(self.run_dir)} ({fmt_bytes(n)})")
        if evict:
            self.evict()
        return dest

    def find(self, sid: str, ident: tuple) -> Path | None:
        e = self._entry(sid, ident)
        m = read_manifest(e)
        return e if m.get("status") == "complete" and identity_of(m) == tuple(ident) else None

    def drop(self, entry: Path) -> None:
        discard(entry)
        entry.with_name(entry.name + ".json").unlink(missing_ok=True)

    def evict(self, budget: int | None | str = "recipe") -> list[dict]:
        """Remove the entries put there first until the cache holds at most ``budget`` bytes (default: the
        recipe's ``keep_outputs``; None: no limit). Returns the removed entries."""
        budget = self.budget if budget == "recipe" else budget
        if budget is None:
            return []
        es = sorted(self.entries(), key=lambda e: e["cached"])
        total, gone = sum(e["bytes"] for e in es), []
        while es and total > budget:
            e = es.pop(0)
            self.drop(e["path"])
            total -= e["bytes"]
            gone.append(e)
            self.echo(f"[cache] removed {e['stage']} {e['key']} ({fmt_bytes(e['bytes'])}): the cache holds at most "
                      f"{fmt_bytes(budget)} (keep_outputs)")
        return gone


def promote(run_dir, sid: str, cache: RunCache) -> None:
    """A complete attempt becomes ``<stage>/``; the complete output it replaces goes into the cache."""
    main, att = Path(run_dir) / sid, attempt_dir(run_dir, sid)
    m = read_manifest(main)
    if m.get("status") == "complete" and identity_of(m) != identity_of(read_manifest(att)):
        cache.put(sid, main, evict=False)
    else:
        discard(main)             # an unfinished run, or the same identity (forced): nothing to keep
    os.replace(att, main)         # a crash before this line: the next run finds the complete attempt (settle)
    cache.evict()


def settle(run_dir, sid: str, ident: tuple, fresh: bool, cache: RunCache) -> str | None:
    """For a stage that is not up to date: use what a complete attempt or the cache already holds for ``ident``.
    Returns what was done (the stage is now up to date), or None (it has to run)."""
    main, att = Path(run_dir) / sid, attempt_dir(run_dir, sid)
    a = read_manifest(att)
    if a.get("status") == "complete":
        if not fresh and identity_of(a) == tuple(ident):
            promote(run_dir, sid, cache)
            return "its completed attempt is now the output"
        if identity_of(a) == tuple(ident):
            discard(att)          # forced: it is re-run anyway
        else:
            cache.put(sid, att)   # finished for another recipe (a run stopped before it could be used): keep it
    if fresh:
        return None
    entry = cache.find(sid, ident)
    if entry is None:
        return None
    if read_manifest(main).get("status") == "complete":
        cache.put(sid, main, evict=False)
    else:
        discard(main)
    os.replace(entry, main)       # a crash before this line: the entry is still there for the next run
    entry.with_name(entry.name + ".json").unlink(missing_ok=True)
    cache.evict()
    return "restored from the run cache"


def prepare(run_dir, sid: str, ident: tuple, fresh: bool, echo=print) -> str:
    """The folder (its name under ``run_dir``) a stage that has to run runs in: ``<stage>.attempt`` beside a complete
    output, else ``<stage>`` itself. Keeps an interrupted or failed run of the same identity (it resumes from its
    checkpoints); clears one of another identity, or any when forced."""
    main, att = Path(run_dir) / sid, attempt_dir(run_dir, sid)
    why = "forced" if fresh else "config or inputs changed"
    m, a = read_manifest(main), read_manifest(att)
    resumable = not fresh and identity_of(a) == tuple(ident)
    if att.exists() and not resumable:
        discard(att)
        if a:
            echo(f"[reset] {sid}: earlier attempt discarded ({why})")
    if m.get("status") == "complete":
        echo(f"[attempt] {sid}: {why}; {'resuming' if att.exists() else 'running'} in {att.name}/, beside the "
             "finished output, which is replaced only when the attempt completes")
        return att.name
    if att.exists():              # no finished output beside it (removed by hand): the attempt still resumes
        return att.name
    stale = bool(m.get("config_hash")) and identity_of(m) != tuple(ident)
    if main.exists() and (fresh or stale):
        discard(main)
        echo(f"[reset] {sid}: {why}; starting fresh")
    return sid
