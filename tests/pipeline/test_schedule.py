"""Critical-path order of ready stages (pipeline.schedule): the runner submits the ready stage with the longest chain
of work to the end first, and only when its resources are free."""
from pathlib import Path
from types import SimpleNamespace

from core.registry import StageSpec
from pipeline.graph import build_graph
from pipeline.recipe import load_recipe
from pipeline.schedule import fits, priorities

ROOT = Path(__file__).resolve().parents[2]


def test_the_generalist_chain_goes_before_the_short_grpo_stages():
    graph = build_graph(load_recipe(ROOT / "recipes" / "think_max.yaml", check=False), check=False)
    p = priorities(graph)
    ranked = sorted(p, key=lambda i: -p[i])
    assert ranked[:4] == ["bootstrap", "base", "generalist", "sft.math"], ranked[:5]
    # a stage's priority covers its dependants: every stage outranks each stage that needs it
    for s in graph:
        for d in s.deps:
            assert p[d] > p[s.id], (d, s.id)
    assert ranked[-1] == "eval"


def test_priority_is_the_longest_chain_of_costs(monkeypatch):
    import pipeline.schedule as sch

    cost = {"a": 1, "b": 10, "c": 2, "d": 5}
    monkeypatch.setattr(sch, "stage_cost", lambda spec: cost[spec.id])
    res = SimpleNamespace(num_cpus=1, num_gpus=0)
    g = [StageSpec("a", "x", [], None, res, ""), StageSpec("b", "x", ["a"], None, res, ""),
         StageSpec("c", "x", ["a"], None, res, ""), StageSpec("d", "x", ["c"], None, res, "")]
    assert sch.priorities(g) == {"a": 1 + 10, "b": 10, "c": 2 + 5, "d": 5}


def test_fits_counts_cpus_and_gpus():
    spec = SimpleNamespace(resources=SimpleNamespace(num_cpus=2, num_gpus=1))
    assert fits(spec, {"CPU": 2, "GPU": 1})
    assert not fits(spec, {"CPU": 1, "GPU": 1})
    assert not fits(spec, {"CPU": 4, "GPU": 0.5})


def test_cpu_fleet_reserves_nothing_a_stage_needs():
    """Engines asking 0 CPUs get empty bundles and no placement group: a token CPU reservation (0.01 per engine)
    kept a second 1-CPU stage from starting beside the first on 2 cores (measured: sft.math waited 6 minutes)."""
    from pipeline.placement import fleet_layout
    from rollout.config import FleetConfig

    assert fleet_layout(FleetConfig(engines=2)).bundles == [{}, {}]
    gpu = fleet_layout(FleetConfig.model_validate({"engines": 2, "resources": {"num_cpus": 1, "num_gpus": 0.5}}))
    assert gpu.bundles == [{"CPU": 1.0, "GPU": 0.5}] * 2 and gpu.gpus == {0: [0], 1: [0]}
