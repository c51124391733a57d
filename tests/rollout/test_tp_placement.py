"""Tensor-parallel engines in placement groups (issue 24): one bundle per GPU, vLLM's own Ray executor.

vLLM 0.32's bundle rules are checked by vLLM's own code (``initialize_ray_cluster`` and ``get_bundles_for_indices``
in ``vllm/v1/executor/ray_utils.py``), run on CPU inside a Ray actor placed the way the fleet places an engine, with
the platform's Ray device key patched to the CUDA platform's ("GPU"; the CPU build has none) and fake GPUs in a
local Ray. No engine starts, no GPU is touched.
"""
import pytest

from pipeline.placement import engine_gpus, fleet_layout
from rollout.config import FleetConfig, engine_bundles, engine_placement


def _fleet(engines, tp, gpus, cpus=4):
    return FleetConfig.model_validate({"engines": engines, "tensor_parallel_size": tp,
                                       "resources": {"num_cpus": cpus, "num_gpus": gpus}})


@pytest.mark.parametrize("tp, gpus, bundles, actor_gpus, workers, engine1_gpus", [
    (1, 0, [{"CPU": 4.0}], 0, None, []),                      # CPU engine: the actor's CPUs only
    (1, 0.5, [{"CPU": 4.0, "GPU": 0.5}], 0.5, None, [0]),     # TP 1 on half a GPU, as before: both on GPU 0
    (1, 1, [{"CPU": 4.0, "GPU": 1.0}], 1, None, [1]),
    (2, 2, [{"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0}], 0, [2, 3], [2, 3]),   # engine 1's workers in bundles 2, 3
    (4, 4, [{"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}], 0, [4, 5, 6, 7], [4, 5, 6, 7]),
])
def test_bundles_per_tp_and_gpus(tp, gpus, bundles, actor_gpus, workers, engine1_gpus):
    layout = fleet_layout(_fleet(2, tp, gpus))
    assert layout.bundles == bundles + bundles                 # two engines, in order
    assert all(b.get("GPU", 0) <= 1 for b in layout.bundles)   # vLLM: no bundle of more than one GPU
    assert engine_bundles(tp, gpus, 4) == bundles
    bundle, opts, w = engine_placement(1, tp, gpus, 4)
    assert bundle == len(bundles)                              # engine 1's first bundle
    assert opts == {"num_cpus": 4, "num_gpus": actor_gpus}     # TP > 1: the actor holds no GPU, its workers do
    assert w == workers
    assert engine_gpus(layout, 1) == engine1_gpus
    assert any(f": engine 1{' (TP worker 0)' if tp > 1 else ''}" in line for line in layout.describe())


@pytest.mark.parametrize("tp, gpus", [(2, 1), (2, 4), (2, 0), (4, 2)])
def test_tp_needs_exactly_its_gpus(tp, gpus):
    with pytest.raises(ValueError, match=f"fleet.tensor_parallel_size {tp} needs exactly {tp}"):
        fleet_layout(_fleet(1, tp, gpus))


def test_validate_refuses_gpus_other_than_tp(tmp_path):
    from pipeline.recipe import RecipeError, load_with_graph

    src = "recipes/gpu/think_max_qwen3_8b.yaml"
    load_with_graph(src, [], check=True, cluster={})             # TP 2 on 2 GPUs per engine: valid
    with pytest.raises(RecipeError, match="fleet.resources.num_gpus: 4 GPU.*tensor_parallel_size 2 needs exactly 2"):
        load_with_graph(src, ["fleet.resources.num_gpus=4"], check=True, cluster={})


# ------------------------------------------------------------------------------------------ vLLM's own checks
class _Probe:
    """Stands in for ``_VLLMActor``: constructed by ``Fleet._start`` as an engine is, it does what the engine does
    before ``vllm.LLM`` (``tp_engine_args``) and then runs vLLM's placement-group code as ``LLM`` would."""

    def __init__(self, model_path, extra=None, worker_bundles=None, **_):
        from rollout.vllm_engine import tp_engine_args

        self.extra = tp_engine_args(dict(extra or {}), worker_bundles)

    def info(self):
        return {}

    def check(self, other_pg=None):
        import ray
        import vllm.envs as envs
        from vllm.config import ParallelConfig
        from vllm.platforms import current_platform
        from vllm.ray.lazy_utils import is_in_ray_actor
        from vllm.v1.executor import ray_utils

        current_platform.ray_device_key = "GPU"          # the CUDA platform's key (vllm/platforms/cuda.py)
        # EngineArgs.create_engine_config: inside a Ray actor the current placement group is the engine's
        pg = other_pg or (ray.util.get_current_placement_group() if is_in_ray_actor() else None)
        pc = ParallelConfig(tensor_parallel_size=self.extra.get("tensor_parallel_size", 1), placement_group=pg,
                            distributed_executor_backend=self.extra.get("distributed_executor_backend"))
        out = {"backend": pc.distributed_executor_backend, "gpu_ids": ray.get_gpu_ids(),
               "indices": envs.VLLM_RAY_BUNDLE_INDICES, "pg": pg.id.hex() if pg else None}
        try:
            ray_utils.initialize_ray_cluster(pc, require_gpu_on_driver=False)   # RayExecutorV2 (the default)
            ray_utils.initialize_ray_cluster(pc, require_gpu_on_driver=True)    # RayDistributedExecutor
        except ValueError as e:
            return {**out, "error": str(e)}
        ids = [int(i) for i in envs.VLLM_RAY_BUNDLE_INDICES.split(",")]
        out["worker_bundles"] = [b for b, _, _ in ray_utils.get_bundles_for_indices(pc.placement_group, ids,
                                                                                      pc.world_size)]
        return out


@pytest.fixture(scope="module")
def fake_gpus():
    ray = pytest.importorskip("ray")
    pytest.importorskip("vllm")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # _Probe travels by value to the actor
    ray.init(num_cpus=2, num_gpus=6, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_vllm_accepts_the_fleet_group_for_tp2(fake_gpus):
    """Two TP-2 engines in the fleet's group (the runner's: ``fleet_layout`` bundles, PACK): engine 1's actor, in
    its first bundle with no GPU, passes vLLM's bundle check on the group it captures, and vLLM places its two
    workers in bundles 2 and 3. The group the fleet built before (one bundle of 2 GPUs per engine) fails vLLM's
    check with vLLM's own message."""
    ray = fake_gpus
    from rollout.fleet import Fleet

    cfg = _fleet(2, 2, 2, cpus=0.5)
    pg = ray.util.placement_group(fleet_layout(cfg).bundles, strategy="PACK", name="fleet")
    ray.get(pg.ready(), timeout=60)
    fleet = Fleet.__new__(Fleet)                       # only _start: the fleet's placement of engine 1
    fleet.model_path, fleet.pg, fleet.starts = "unused", pg, 0
    fleet.engine_kwargs = {"extra": {"tensor_parallel_size": 2}}
    fleet.actor_options = {"num_cpus": cfg.resources.num_cpus, "num_gpus": cfg.resources.num_gpus}
    fleet._cls = ray.remote(_Probe)
    old_pg = ray.util.placement_group([{"CPU": 0.5, "GPU": 2.0}], strategy="PACK")   # before: one bundle, 2 GPUs
    ray.get(old_pg.ready(), timeout=60)
    try:
        actor, _ = fleet._start(1)
        out = ray.get(actor.check.remote(), timeout=300)
        assert out.get("error") is None, out
        assert out["backend"] == "ray" and out["pg"] == pg.id.hex()
        assert out["gpu_ids"] == []                    # the engine actor holds no GPU
        assert out["indices"] == "2,3" and out["worker_bundles"] == [2, 3]
        before = ray.get(actor.check.remote(old_pg), timeout=120)
        assert before["error"] == "Placement group bundle cannot have more than 1 GPU."
        ray.kill(actor)
    finally:
        ray.util.remove_placement_group(pg)
        ray.util.remove_placement_group(old_pg)
