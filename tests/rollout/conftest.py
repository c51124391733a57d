import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of 2 CPUs for the module's vLLM engines (skipped without Ray or vLLM)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("vllm")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()
