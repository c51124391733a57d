"""Run-directory primitives: atomic writes, the lock, append-only metrics, committed checkpoints with checksums."""
import json
import multiprocessing as mp

import pytest

from core.checkpoints import Checkpoints
from core.rundir import MetricsLog, RunDirError, RunLock, atomic_write_json, read_json


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_old(tmp_path, monkeypatch):
    import core.rundir as rd

    atomic_write_json(tmp_path / "a.json", {"x": 1})

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rd.os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def _hold(path, q):
    with RunLock(path):
        q.put("held")
        q.get()


def test_lock_refuses_second_holder(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(tmp_path, q))
    p.start()
    assert q.get(timeout=30) == "held"
    with pytest.raises(RunDirError, match="locked by a running"):
        with RunLock(tmp_path):
            pass
    q.put("go")
    p.join(10)
    with RunLock(tmp_path):  # released when the holder exits
        pass


def test_metrics_truncate_and_torn_line(tmp_path):
    m = MetricsLog(tmp_path / "metrics.jsonl")
    for s in range(1, 6):
        m.log(s, loss=1.0 / s)
    with open(m.path, "a") as f:
        f.write('{"step": 6, "lo')  # a kill mid-write
    assert [r["step"] for r in m.rows()] == [1, 2, 3, 4, 5]
    m.truncate_after(3)
    m.log(4, loss=0.0)
    assert [r["step"] for r in m.rows()] == [1, 2, 3, 4]


def test_checkpoints_commit_prune_and_corruption_fallback(tmp_path):
    c = Checkpoints(tmp_path, keep=2)
    for step in (10, 20, 30):
        tmp = c.begin(step)
        (tmp / "w.bin").write_bytes(bytes([step]) * 100)
        c.commit(tmp, step)
    names = sorted(p.name for p in (tmp_path / "ckpt").glob("step_*"))
    assert names == ["step_000020", "step_000030"]
    assert c.latest().name == "step_000030"
    # an uncommitted folder (killed before COMMITTED) is ignored
    t = c.begin(40)
    (t / "w.bin").write_bytes(b"partial")
    assert c.latest().name == "step_000030"
    # flip a byte in the newest: fall back to the previous one, with a warning
    f = tmp_path / "ckpt" / "step_000030" / "w.bin"
    b = bytearray(f.read_bytes()); b[0] ^= 0xFF; f.write_bytes(bytes(b))
    assert c.latest().name == "step_000020"
    assert c.warnings and "step_000030" in c.warnings[0]
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "checkpoints.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30]
