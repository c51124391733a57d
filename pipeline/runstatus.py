"""What `pipeline status` and `pipeline gc` read from a run directory: every stage's state for the run's current
recipe (``<run>/recipe.yaml`` and the config hashes the last `pipeline run` computed for it, ``<run>/hashes.json``),
attempts beside finished outputs, the run cache.

A stage's status is its manifest's, except for a complete output that is not current for the recipe (its config
hash or input fingerprint differs, or a stage upstream is not current): that is ``stale`` -- the previous output,
kept -- with the reason (the attempt's error when an attempt for the current config failed), or ``skipped`` when a
stage upstream failed, or ``running`` while a run holds the lock and the stage's attempt runs.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import yaml

from core.rundir import Manifest, RunDirError, RunLock, read_json

from .graph import build_graph, config_hash, fingerprints
from .recipe import Recipe
from .runcache import ATTEMPT_SUFFIX, RunCache, attempt_dir, discard, fmt_bytes, folder_bytes, identity_of, \
    read_manifest


def run_recipe(run_dir: Path) -> Recipe | None:
    rec = Path(run_dir) / "recipe.yaml"
    try:
        return Recipe.model_validate(yaml.safe_load(rec.read_text())) if rec.exists() else None
    except Exception:  # noqa: BLE001 — an unreadable recipe.yaml: statuses as the manifests say
        return None


def wanted(run_dir: Path, recipe: Recipe | None) -> tuple[list, dict[str, tuple]]:
    """(graph, stage -> (config hash, input fingerprint)) the recipe asks for, given the outputs on disk."""
    if recipe is None:
        return [], {}
    try:
        graph = build_graph(recipe, check=False)
        recorded = read_json(Path(run_dir) / "hashes.json", {}) or {}     # what the last run computed, where it ran
        hashes = {s.id: recorded.get(s.id) or config_hash(s) for s in graph}
    except Exception:  # noqa: BLE001
        return [], {}
    outputs = {s.id: Manifest(Path(run_dir) / s.id).read().get("output_hash") for s in graph}
    fps = fingerprints(graph, outputs, hashes)
    return graph, {s.id: (hashes[s.id], fps[s.id]) for s in graph}


def _locked(run_dir: Path) -> bool:
    """Whether a `pipeline run` holds the run directory now (without taking or changing the lock)."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _stale(m: dict, a: dict, want: tuple, upstream: list[str], states: dict, live: bool) -> tuple[str, str, bool]:
    """(status, reason, failed) of a complete output that is not current."""
    same_config = a.get("config_hash") == want[0]
    stopped = a.get("status") == "running" or str(a.get("error") or "").startswith("interrupted")
    if same_config and a.get("status") == "failed" and not stopped:
        return "stale", f"attempt failed: {a.get('error')}; the previous output is kept", True
    if same_config and stopped:
        if live:
            return "running", "attempt running beside the previous output", False
        return "stale", "attempt interrupted; the next run resumes it; the previous output is kept", False
    bad = [d for d in upstream if states.get(d) in ("failed", "skipped")]
    if bad:
        return "skipped", f"a dependency failed ({', '.join(bad)}); the previous output is kept", True
    if upstream:
        return "stale", f"waiting for {', '.join(upstream)}; the previous output is kept", False
    why = "config changed" if m.get("config_hash") != want[0] else "inputs changed"
    return "stale", f"{why} since this output; the previous output is kept until a run replaces it", False


def status_rows(run_dir: Path) -> list[dict]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    graph, want = wanted(run_dir, run_recipe(run_dir))
    deps = {s.id: s.deps for s in graph}
    order = [s.id for s in graph]
    found = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")
                   and not p.name.endswith(ATTEMPT_SUFFIX) and (p / "manifest.json").exists())
    live = _locked(run_dir)
    rows, states, failed = [], {}, set()
    for sid in order + [f for f in found if f not in order]:
        m, a = Manifest(run_dir / sid).read(), read_manifest(attempt_dir(run_dir, sid))
        status, error = m.get("status", "pending"), m.get("error")
        if status == "complete" and sid in want:
            upstream = [d for d in deps.get(sid, ()) if states.get(d) != "complete"]
            if identity_of(m) != want[sid] or upstream:
                status, error, bad = _stale(m, a, want[sid], upstream, states, live)
                if bad:
                    failed.add(sid)
        states[sid] = "failed" if sid in failed else status
        rows.append({"id": sid, "kind": m.get("kind", sid.split(".")[0]), "status": status,
                     "started": m.get("started"), "finished": m.get("finished"), "metrics": m.get("metrics", {}),
                     "error": error, "warnings": list(m.get("warnings") or []),
                     "attempt": ({"status": a.get("status"), "error": a.get("error"), "config_hash": a.get("config_hash")}
                                 if a else None)})
    return rows


def gc(run_dir: Path, keep: int | None = None, echo=print) -> dict:
    """`pipeline gc`: trim the run cache to ``keep`` bytes (default: the recipe's ``keep_outputs``), remove the
    attempts the current recipe cannot resume (another config) and leftovers of interrupted renames."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    with RunLock(run_dir):
        recipe = run_recipe(run_dir)
        budget = keep if keep is not None else (recipe.keep_outputs if recipe is not None else None)
        cache = RunCache(run_dir, budget, echo)
        gone = cache.evict()
        _, want = wanted(run_dir, recipe)
        attempts = 0
        for att in sorted(run_dir.glob(f"*{ATTEMPT_SUFFIX}")):
            sid = att.name[: -len(ATTEMPT_SUFFIX)]
            a = read_manifest(att)
            if a.get("status") == "complete":
                cache.put(sid, att)           # finished: an output like any other
                continue
            if sid in want and a.get("config_hash") == want[sid][0]:
                continue                      # the current recipe resumes it
            n = folder_bytes(att)
            discard(att)
            attempts += 1
            echo(f"[gc] removed {att.name}/ ({fmt_bytes(n)}): the current recipe does not resume it")
        for junk in sorted(run_dir.glob(".*.trash-*")) + sorted((run_dir / ".cache").glob("*/.*.trash-*")):
            shutil.rmtree(junk, ignore_errors=True)
        left = cache.entries()
        out = {"evicted": len(gone), "evicted_bytes": sum(e["bytes"] for e in gone), "attempts": attempts,
               "cache_entries": len(left), "cache_bytes": sum(e["bytes"] for e in left), "budget": budget}
    echo(f"gc: removed {out['evicted']} cache entr{'y' if out['evicted'] == 1 else 'ies'} "
         f"({fmt_bytes(out['evicted_bytes'])}) and {attempts} attempt(s); the cache holds {len(left)} output(s), "
         f"{fmt_bytes(out['cache_bytes'])} (keep_outputs: {fmt_bytes(budget)})")
    return out
