"""recipe.logging: TensorBoard event files next to metrics.jsonl; a sink that is not installed or fails never
stops the metrics.jsonl record."""
import json

from pipeline.core.context import StageContext
from pipeline.core.rundir import MetricsLog
from pipeline.recipe import Recipe


def test_tensorboard_sink_writes_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = Recipe(name="x", logging={"tensorboard": True})
    ctx = StageContext(stage_id="sft.math", kind="sft", dir=tmp_path / "sft.math", config=None, recipe=recipe,
                       deps={}, seed=0)
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
    ctx = StageContext(stage_id="a", kind="sft", dir=tmp_path / "a", config=None, recipe=Recipe(name="x"),
                       deps={}, seed=0)
    assert ctx.metrics.sinks == []

    class Boom:
        def log(self, step, metrics):
            raise RuntimeError("down")

    m = MetricsLog(tmp_path / "m.jsonl", sinks=[Boom()])
    m.log(1, loss=1.0)
    m.log(2, loss=0.5)
    assert m.sinks == [] and [json.loads(x)["step"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


def test_wandb_missing_is_a_warning(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        return
    warnings = []
    from pipeline.core.sinks import metric_sinks

    assert metric_sinks(Recipe(name="x", logging={"wandb": True}), "s", tmp_path, warnings.append) == []
    assert "not installed" in warnings[0]
