"""Placement on a local Ray with fake GPUs: the stage's placement group has the bundles ``pipeline plan`` prints, and
the actors a stage starts -- its learner ranks (train.ranks.stage_learner) and its teachers (distill TeacherPool) --
land in the bundles the layout gives them (a bundle's GPUs are the GPU ids Ray hands every actor in it)."""
from types import SimpleNamespace

import pytest

from conftest import run_cli, tiny_recipe
from pipeline.graph import build_graph
from pipeline.placement import stage_layout
from pipeline.recipe import load_recipe

CLUSTER = "nodes=1,gpus=8,gpu_mem_gb=80,cpus=16,ram_gb=64"


def _recipe(tmp_path):
    return tiny_recipe(
        tmp_path, name="gpus", domains=["math"], modes=["non_think"], tasks={"math": {"n_train": 8, "n_eval": 1}},
        learner={"warmup_steps": 1, "optimizer": "adamw"},
        grpo={"steps": 1, "group_size": 2, "prompts_per_step": 2, "learner": {"ranks": 2},
              "resources": {"num_cpus": 2, "num_gpus": 2}},
        distill={"student_from": "sft.math", "steps": 1, "prompts_per_step": 2,
                 "teachers": {"math.non_think": [{"stage": "grpo.math.non_think"}, {"stage": "sft.math"}]},
                 "placement": {"strategy": "split", "teacher_gpus": 1},
                 "resources": {"num_cpus": 2, "num_gpus": 3}})


@pytest.fixture(scope="module")
def fake_gpu_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=8, num_gpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _bundle_gpus(ray, pg, n):
    """The GPU ids of each bundle, asked by a tiny probe task per bundle."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=0, num_gpus=0.01)
    def probe():
        return sorted(ray.get_gpu_ids())

    return [ray.get(probe.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        pg, placement_group_bundle_index=b)).remote()) for b in range(n)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ranks_and_teachers_land_in_the_bundles_plan_prints(tmp_path, fake_gpu_ray, tiny_dir):
    ray = fake_gpu_ray
    path = _recipe(tmp_path)
    r = run_cli("plan", path, "--cluster", CLUSTER)
    assert r.returncode == 0, r.stdout + r.stderr
    graph = {s.id: s for s in build_graph(load_recipe(path, check=False), check=False)}

    from pipeline.runner import Runner

    runner = Runner(load_recipe(path, check=False), tmp_path / "run", graph=list(graph.values()), echo=lambda m: None)
    for sid in ("grpo.math.non_think", "distill"):
        layout = stage_layout(graph[sid])
        for line in layout.describe():                      # the layout the plan prints is the one built
            assert f"placement group: {line}" in r.stdout, (sid, line, r.stdout)
        got, pg, opts = runner._placement(graph[sid], ray)
        assert got.bundles == layout.bundles and pg.bundle_count == len(layout.bundles)
        ray.get(pg.ready(), timeout=60)
        gpus = _bundle_gpus(ray, pg, len(layout.bundles))
        assert len({tuple(g) for g in gpus if g}) == sum(1 for g in gpus if g)   # bundles hold distinct GPUs

        def in_stage(layout=layout, pg=pg, sid=sid, cfg=graph[sid].config):
            """What the stage's task does: its learner, and (distill) its teachers, in its placement group."""
            from core.where import where
            from train.ranks import stage_learner

            ctx = SimpleNamespace(services={"placement": {"pg": pg, "layout": layout}},
                                  num_gpus=graph[sid].resources.num_gpus)
            learner = stage_learner(ctx, tiny_dir, cfg.learner, total_steps=1, seed=0)
            ranks = [p["gpu_ids"] for p in learner.places] if hasattr(learner, "places") else [where()["gpu_ids"]]
            learner.close()
            teachers = []
            if layout.teacher_bundles:
                from distill.teachers import TeacherPool

                names = {f"t{j}": SimpleNamespace(name=f"t{j}", folder=str(tiny_dir))
                         for j in range(len(layout.teacher_bundles))}
                pool = TeacherPool(names, budget_gb=64, placement={"pg": pg, "bundles": layout.teacher_bundles,
                                                                   "num_gpus": layout.teacher_gpus})
                pool._start(list(names))
                teachers = [sorted(ray.get(pool.actors[n].where.remote())["gpu_ids"]) for n in names]
                for a in pool.actors.values():
                    ray.kill(a)
            return {"task": where()["gpu_ids"], "ranks": ranks, "teachers": teachers}

        out = ray.get(ray.remote(max_retries=0)(in_stage).options(**opts).remote(), timeout=300)
        ray.util.remove_placement_group(pg)
        assert sorted(out["task"]) == [str(g) for g in gpus[0]]              # the stage's task: bundle 0
        for rank, ids in enumerate(out["ranks"]):
            assert sorted(ids) == [str(g) for g in gpus[layout.ranks[rank]]], (sid, rank, ids, gpus)
        assert len(out["teachers"]) == len(layout.teacher_bundles)
        for j, ids in enumerate(out["teachers"]):
            assert [str(g) for g in gpus[layout.teacher_bundles[j]]] == ids, (sid, j, ids, gpus)
        if sid == "distill":
            assert out["teachers"] and all(layout.teacher_bundles[j] >= len(layout.ranks)
                                           for j in range(len(out["teachers"])))   # split: the teachers' own GPU
