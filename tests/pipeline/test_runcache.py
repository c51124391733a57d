"""pipeline.runcache on hand-made stage folders (no Ray): an attempt beside a finished output replaces it only when it
completes, the replaced output is kept in the run cache byte for byte and taken back by identity, the cache keeps
to its budget (oldest out first), and `pipeline gc` prunes."""
import hashlib
import json
import time

import pytest

from pipeline.runcache import RunCache, attempt_dir, parse_bytes, prepare, promote, settle
from pipeline.runstatus import gc


def _stage(folder, ident, status="complete", payload=b"weights", error=None):
    """A stage folder as a run leaves it: manifest, final/, ckpt/, metrics."""
    (folder / "final").mkdir(parents=True, exist_ok=True)
    (folder / "ckpt" / "step_000002").mkdir(parents=True, exist_ok=True)
    (folder / "final" / "model.safetensors").write_bytes(payload)
    (folder / "ckpt" / "step_000002" / "state.pt").write_bytes(payload * 2)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": len(payload)}) + "\n")
    (folder / "manifest.json").write_text(json.dumps({"status": status, "config_hash": ident[0],
                                                      "inputs_hash": ident[1], "error": error}))


def _tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


A, B, C = ("cfgA", "inA"), ("cfgB", "inB"), ("cfgC", "inC")


def test_attempt_replaces_only_when_complete_and_cache_restores_byte_for_byte(tmp_path):
    run, msgs = tmp_path / "run", []
    cache = RunCache(run, None, msgs.append)
    _stage(run / "sft.math", A, payload=b"old")
    before = _tree(run / "sft.math")

    # a changed config runs beside the finished output
    assert prepare(run, "sft.math", B, False, msgs.append) == "sft.math.attempt"
    _stage(attempt_dir(run, "sft.math"), B, status="failed", payload=b"half", error="boom")
    assert _tree(run / "sft.math") == before                         # a failed attempt changes nothing
    assert settle(run, "sft.math", B, False, cache) is None          # nothing kept for B: it has to run
    assert prepare(run, "sft.math", B, False, msgs.append) == "sft.math.attempt"   # same identity: resumes
    assert (attempt_dir(run, "sft.math") / "ckpt" / "step_000002" / "state.pt").exists()

    _stage(attempt_dir(run, "sft.math"), B, payload=b"new")          # the attempt completes
    promote(run, "sft.math", cache)
    assert not attempt_dir(run, "sft.math").exists()
    assert (run / "sft.math" / "final" / "model.safetensors").read_bytes() == b"new"
    assert any("previous output kept" in m for m in msgs)

    # back to A: the kept output returns as it was, and B's goes into the cache
    assert settle(run, "sft.math", A, False, cache) == "restored from the run cache"
    assert _tree(run / "sft.math") == before
    assert {e["key"] for e in cache.entries()} == {"cfgB-inB"}
    # forced: never taken from the cache
    assert settle(run, "sft.math", B, True, cache) is None
    assert prepare(run, "sft.math", A, True, msgs.append) == "sft.math.attempt"


def test_attempt_of_another_identity_is_discarded_and_first_runs_stay_in_place(tmp_path):
    run, msgs = tmp_path / "run", []
    _stage(run / "sft.math", A)
    _stage(attempt_dir(run, "sft.math"), B, status="running")
    assert prepare(run, "sft.math", C, False, msgs.append) == "sft.math.attempt"
    assert not attempt_dir(run, "sft.math").exists()                  # B's checkpoints are no use to C
    assert any("earlier attempt discarded" in m for m in msgs)
    # no finished output: the stage runs in its own folder, an interrupted one of the same identity resumes there
    _stage(run / "grpo", A, status="running")
    assert prepare(run, "grpo", A, False, msgs.append) == "grpo"
    assert (run / "grpo" / "ckpt").exists()
    assert prepare(run, "grpo", B, False, msgs.append) == "grpo" and not (run / "grpo").exists()


def test_complete_attempt_left_by_a_crash_is_promoted_or_kept(tmp_path):
    run = tmp_path / "run"
    cache = RunCache(run, None, lambda m: None)
    _stage(run / "s", A, payload=b"a")
    _stage(attempt_dir(run, "s"), B, payload=b"b")                   # completed, the run died before promoting
    assert settle(run, "s", B, False, cache) == "its completed attempt is now the output"
    assert (run / "s" / "final" / "model.safetensors").read_bytes() == b"b"
    _stage(attempt_dir(run, "s"), C, payload=b"c")                   # completed for a recipe no longer asked for
    assert settle(run, "s", A, False, cache) == "restored from the run cache"
    assert {e["key"] for e in cache.entries()} == {"cfgB-inB", "cfgC-inC"}
    assert not attempt_dir(run, "s").exists()


def test_budget_evicts_oldest_first_and_gc_prunes(tmp_path):
    run, msgs = tmp_path / "run", []
    cache = RunCache(run, None, msgs.append)
    for i, ident in enumerate((A, B, C)):
        _stage(tmp_path / f"s{i}", ident, payload=b"x" * 1000)
        cache.put("s", tmp_path / f"s{i}")
        time.sleep(0.01)
    size = cache.entries()[0]["bytes"]
    assert size > 3000 and len(cache.entries()) == 3
    cache.budget = 2 * size
    gone = cache.evict()
    assert [e["key"] for e in gone] == ["cfgA-inA"]
    assert {e["key"] for e in cache.entries()} == {"cfgB-inB", "cfgC-inC"}

    _stage(run / "s", A)
    _stage(attempt_dir(run, "s"), B, status="failed")                # no recipe.yaml: nothing resumes it
    out = gc(run, 0, msgs.append)
    assert out["evicted"] == 2 and out["attempts"] == 1 and out["cache_entries"] == 0
    assert not attempt_dir(run, "s").exists() and (run / "s" / "manifest.json").exists()


@pytest.mark.parametrize("given,want", [(None, None), (0, 0), ("0", 0), (2048, 2048), ("20GB", 20 * 10**9),
                                        ("1.5GiB", 3 * 2**29), ("500 M", 5 * 10**8)])
def test_parse_bytes(given, want):
    assert parse_bytes(given) == want


def test_parse_bytes_refuses_nonsense():
    with pytest.raises(ValueError, match="20GB"):
        parse_bytes("lots")
