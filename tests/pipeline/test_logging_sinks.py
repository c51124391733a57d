"""recipe.logging: TensorBoard event files and W&B offline runs next to metrics.jsonl; a sink that is not installed
or fails never stops the metrics.jsonl record."""
import json
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from core.context import StageContext
from core.rundir import MetricsLog
from pipeline.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def stage_ctx(run_dir, stage_id="sft.math", kind="sft", recipe_name="x", **logging):
    """A stage context built as the runner builds it: the recipe's ``logging`` section, its name as W&B project."""
    recipe = Recipe(name=recipe_name, logging=logging)
    return StageContext(stage_id=stage_id, kind=kind, dir=run_dir / stage_id, config=None, deps={}, seed=0,
                        logging=recipe.logging, project=recipe.name)


def test_tensorboard_sink_writes_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ctx = stage_ctx(tmp_path, tensorboard=True)
    for s in range(1, 4):
        ctx.metrics.log(s, loss=1.0 / s, note="text is skipped")
    assert [r["step"] for r in ctx.metrics.rows()] == [1, 2, 3]
    ev = list((tmp_path / "tensorboard" / "sft.math").glob("events.out.tfevents.*"))
    assert ev
    acc = EventAccumulator(str(ev[0].parent))
    acc.Reload()
    assert [e.value for e in acc.Scalars("loss")] == [1.0, 0.5, 1 / 3] or \
        [round(e.value, 5) for e in acc.Scalars("loss")] == [1.0, 0.5, 0.33333]


def test_no_sinks_by_default_and_failing_sink_is_dropped(tmp_path):
    ctx = stage_ctx(tmp_path, "a")
    assert ctx.metrics.sinks == []

    class Boom:
        def log(self, step, metrics):
            raise RuntimeError("down")

    m = MetricsLog(tmp_path / "m.jsonl", sinks=[Boom()])
    m.log(1, loss=1.0)
    m.log(2, loss=0.5)
    assert m.sinks == [] and [json.loads(x)["step"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


# ---------------------------------------------------------------------------------------------------------------
# W&B (offline)


def wandb_records(path):
    """The protobuf records of an offline ``run-<id>.wandb`` file.

    wandb 0.31 has no Python reader for its transaction log (``wandb.sdk.internal.datastore`` is gone; wandb-core, in
    Go, writes the file), so this reads the framing itself -- a LevelDB-style log: a 7-byte header (``:W&B``, magic
    0xBEE1, version 0), then 32 KiB blocks of chunks ``crc32 (u32) | length (u16) | type (u8: 1 full, 2 first,
    3 middle, 4 last) | payload``, the CRC taken over the type byte and the payload -- and decodes each record with
    wandb's own ``Record`` message.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path}: not a W&B transaction log (header {data[:7]!r})"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                 # block trailer too small for a chunk header: zero padding
            pos += block - pos % block
            continue
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (crc, n, kind) == (0, 0, 0):             # zero padding / preallocated tail
            break
        payload = data[pos + 7:pos + 7 + n]
        assert len(payload) == n and zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc, f"{path}: chunk at {pos}"
        pos += 7 + n
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _item_key(item):
    return item.key or "/".join(item.nested_key)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """Real wandb, never the network: offline, silent, no console capture, all its dirs under tmp_path."""
    try:
        import wandb
    except ImportError:
        pytest.fail("wandb is not installed: it is in the `dev` extra (pip install -e '.[dev]')")
    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                 "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_STATS": "true",
                 "WANDB_CONFIG_DIR": str(tmp_path / ".wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / ".wandb-cache"),
                 "WANDB_DATA_DIR": str(tmp_path / ".wandb-data"), "WANDB_API_KEY": ""}.items():
        monkeypatch.setenv(k, v) if v else monkeypatch.delenv(k, raising=False)
    yield wandb
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()                                 # stop the wandb-core service this test started


def test_wandb_sink_logs_offline_run(tmp_path, wandb_offline):
    run_dir = tmp_path / "run"
    ctx = stage_ctx(run_dir, "grpo.math.think_max", "grpo", recipe_name="tiny", wandb=True)
    [sink] = [s for s in ctx.metrics.sinks if type(s).__name__ == "WandbSink"]
    logged = {1: {"reward": 0.25, "kl": 0.0}, 2: {"reward": 0.5, "kl": 0.125}, 3: {"reward": 0.75, "kl": 0.25}}
    for step, row in logged.items():
        ctx.metrics.log(step, **row, note="text is skipped", done=True)
    assert ctx.metrics.sinks == [sink]               # no sink failed (a failing sink is dropped)
    sink.close()

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted(p.name for p in (run_dir / "wandb").iterdir())
    [log_file] = runs[0].glob("run-*.wandb")
    records = list(wandb_records(log_file))
    kinds = [r.WhichOneof("record_type") for r in records]
    [run] = [r.run for r in records if r.HasField("run")]
    assert (run.project, run.display_name, run.run_group, run.job_type) == ("tiny", "grpo.math.think_max", "tiny",
                                                                             "grpo")
    assert _history(log_file) == logged              # every row, every numeric metric, nothing else
    assert "exit" in kinds and kinds.index("exit") > max(i for i, k in enumerate(kinds) if k == "history")
    assert [r.exit.exit_code for r in records if r.HasField("exit")] == [0]       # finished by sink.close()
    summary = {}
    for r in records:
        if r.HasField("summary"):
            summary.update({_item_key(u): json.loads(u.value_json) for u in r.summary.update})
    assert {k: summary[k] for k in ("reward", "kl")} == logged[3]


def _history(log_file):
    rows = {}
    for r in wandb_records(log_file):
        if r.HasField("history"):
            items = {_item_key(i): json.loads(i.value_json) for i in r.history.item}
            rows[items.pop("_step")] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


KILLED_WORKER = """
import os, signal, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd() + "/tests/pipeline")
from test_logging_sinks import stage_ctx
ctx = stage_ctx(Path(sys.argv[1]), "sft.math", wandb=True)
for step in (1, 2, 3):
    ctx.metrics.log(step, loss=1.0 / step)
time.sleep(2.5)                                  # the stage returned; its worker idles until Ray kills it
os.kill(os.getpid(), signal.SIGKILL)             # no wandb.finish, no atexit
"""


def test_wandb_rows_survive_a_killed_worker(tmp_path, wandb_offline):
    """A stage's Ray worker ends without finishing the W&B run: every committed row is on disk within a second."""
    r = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    [log_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert _history(log_file) == {1: {"loss": 1.0}, 2: {"loss": 0.5}, 3: {"loss": 1 / 3}}


def test_wandb_not_installed_is_a_warning(tmp_path, monkeypatch):
    from core.sinks import metric_sinks

    monkeypatch.setitem(sys.modules, "wandb", None)   # `import wandb` raises ImportError, installed or not
    warnings = []
    assert metric_sinks(Recipe(name="x", logging={"wandb": True}).logging, "x", "s", tmp_path, warnings.append) == []
    assert len(warnings) == 1 and "logging.wandb: not installed" in warnings[0] and "pip install wandb" in warnings[0]
    assert not (tmp_path / "wandb").exists()
    ctx = stage_ctx(tmp_path, "s", wandb=True)
    ctx.metrics.log(1, loss=1.0)                     # the record is still written
    assert [r["loss"] for r in ctx.metrics.rows()] == [1.0]
    assert "not installed" in (tmp_path / "s" / "log.txt").read_text()
