import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = [sys.executable, "-m", "pipeline.cli"]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args, timeout=600, cwd=ROOT, **kw):
    """Run the `pipeline` CLI in a subprocess; returns CompletedProcess with text output."""
    return subprocess.run([*PIPELINE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, **kw)


def tiny_recipe(tmp_path: Path, name="tiny", **over) -> Path:
    """A recipe small enough for tests: a few SFT steps on a few tasks."""
    data = {
        "name": name, "seed": 7,
        "ray": {"num_cpus": 2},
        "model": {"tiny": {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
                           "moe_intermediate_size": 64, "num_hidden_layers": 1, "tokenizer_corpus_per_domain": 40}},
        "domains": ["math", "code"],
        "tasks": {"math": {"n_train": 40, "n_eval": 3}, "code": {"n_train": 40, "n_eval": 3}},
        "learner": {"warmup_steps": 1},
        "sft": {"steps": 6, "batch_size": 4, "max_len": 160, "save_every": 2},
    }
    for k, v in over.items():
        node = data
        *path, last = k.split("__")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(data))
    return f


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """`datasets` caches every file it loads: keep a module's tmp files out of the user's cache."""
    import datasets

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf_datasets")
    yield
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture
def recipe_file(tmp_path):
    return tiny_recipe(tmp_path)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from helpers_tiny import tiny_model_dir

    return tiny_model_dir(str(tmp_path_factory.mktemp("tiny")))


# Time limits (pytest-timeout; `timeout`, `timeout_method` in pyproject.toml): tests marked `slow` get `slow_timeout`.
def pytest_addoption(parser):
    parser.addini("slow_timeout", "pytest-timeout limit (s) for tests marked slow without their own timeout marker",
                  default="1500")


def pytest_collection_modifyitems(config, items):
    if config.getoption("timeout", None) is not None:   # --timeout on the command line applies to every test
        return
    slow = float(config.getini("slow_timeout"))
    for item in items:
        if item.get_closest_marker("slow") and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(slow))


@pytest.fixture(scope="module")
def ray_vllm():
    """A local Ray of 2 CPUs for a module's vLLM engines (skipped without Ray or vLLM)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("vllm")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()
