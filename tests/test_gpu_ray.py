"""Ray on GPU machines, checked on the CPU: GPU stage tasks get a fresh worker each (max_calls=1), devices and the
weight-sync backend follow the GPUs Ray gave the process (ray.get_gpu_ids), not torch.cuda.is_available() (Ray 2.60
no longer hides GPUs from a task that asked for none), and checkpoints carry the CUDA RNG state."""
import inspect
from types import SimpleNamespace

import pytest
import torch

import core.where as where_mod


def _cuda_everywhere(monkeypatch):
    """What a zero-GPU task sees on a GPU node under Ray 2.60: CUDA available."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("ids, expected", [(None, True), ([], False), (["3"], True)])
def test_use_cuda_follows_ray_gpu_ids(monkeypatch, ids, expected):
    _cuda_everywhere(monkeypatch)
    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: ids)
    assert where_mod.use_cuda() is expected
    assert where_mod.device() == ("cuda" if expected else "cpu")


def test_no_cuda_means_cpu_whatever_ray_says(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: ["0"])
    assert not where_mod.use_cuda() and where_mod.device() == "cpu"


def test_zero_gpu_task_picks_gloo_and_one_rank(monkeypatch):
    import torch.distributed as dist

    import rollout.fleet as fleet
    import train.rank_worker as rank_worker

    _cuda_everywhere(monkeypatch)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    lease = SimpleNamespace(info={"on_cpu": False}, weight_sync="collective", collective=True)   # engine on a GPU
    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: [])   # this stage task was given no GPU
    assert fleet.LeasedEngine._choose_transport(lease) == "gloo"
    assert rank_worker.resolve_ranks(None, gpus=2) == 1
    monkeypatch.setattr(where_mod, "ray_gpu_ids", lambda: ["0", "1"])
    assert fleet.LeasedEngine._choose_transport(lease) == "nccl"
    assert rank_worker.resolve_ranks(None, gpus=2) == 2


def test_checkpoint_rng_carries_cuda_state(monkeypatch):
    import train.learner as learner

    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    st = learner.rng_state()
    assert [s.tolist() for s in st["cuda"]] == [s.tolist() for s in states]
    restored = {}
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.__setitem__(i, s.tolist()))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(learner, "use_cuda", lambda: True)
    learner.set_rng_state(st)
    assert restored == {0: [1, 2, 3], 1: [4, 5, 6]}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in learner.rng_state()     # a process that never touched CUDA does not initialize it


def test_rng_restore_is_exact_on_cpu():
    import train.learner as learner

    torch.manual_seed(1)
    st = learner.rng_state()
    a = torch.rand(4)
    learner.set_rng_state(st)
    assert torch.equal(a, torch.rand(4))


@pytest.fixture(scope="module")
def fake_gpu_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(240)
def test_gpu_stage_tasks_get_fresh_workers_and_their_own_gpus(fake_gpu_ray):
    from pipeline.recipe import Recipe
    from pipeline.runner import Runner, fresh_workers, stage_task

    ray = fake_gpu_ray

    def _probe():                                   # nested: Ray ships it by value
        import os

        import torch

        import core.where as w
        torch.cuda.is_available = lambda: True      # a GPU node: every GPU visible to every process
        return os.getpid(), w.ray_gpu_ids(), w.use_cuda()

    real = Recipe.model_validate({"name": "r", "model": {"path": "/models/m"}})
    tiny = Recipe(name="t")
    assert fresh_workers(tiny, 1) and fresh_workers(real, 1) and fresh_workers(real, 0)
    assert not fresh_workers(tiny, 0)                # the tiny model's CPU stages share workers
    gpu = stage_task(ray, _probe, fresh_workers(tiny, 1)).options(num_cpus=1, num_gpus=1)
    cpu = stage_task(ray, _probe, fresh_workers(real, 0)).options(num_cpus=1, num_gpus=0)
    g1, g2 = ray.get(gpu.remote(), timeout=120), ray.get(gpu.remote(), timeout=120)
    c1, c2 = ray.get(cpu.remote(), timeout=120), ray.get(cpu.remote(), timeout=120)
    assert g1[0] != g2[0]                            # max_calls=1: a new process per GPU stage
    assert c1[0] != c2[0]                            # and per CPU stage of a real model (a reused worker keeps its heap)
    assert len(g1[1]) == 1 and g1[2] is True         # the task's one GPU, and it computes there
    assert c1[1] == [] and c1[2] is False            # zero-GPU task: CPU, though CUDA looks available
    assert "stage_task(" in inspect.getsource(Runner._loop)    # the runner submits stages through it
    assert "fresh_workers(" in inspect.getsource(Runner._loop)
