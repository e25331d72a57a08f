# Two commands do all the set-up on a fresh machine: `make suite` (the main job) and `make test`.
# Both (re)create .venv with python3 -m venv + pip install -e .[dev] when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
# REPRO=1 (`make suite REPRO=1`, `make test REPRO=1`): the same bits on any x86-64 CPU with AVX2, the math
# libraries' code paths pinned (workbench/repro.py, README "Reproducibility"); runs cached in runs/cache-repro/
REPRO ?=
ifeq ($(REPRO),1)
export WORKBENCH_REPRO := 1
endif
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0
export OMP_WAIT_POLICY := PASSIVE

.PHONY: venv test suite smoke demo lint bench clean-runs

$(STAMP): pyproject.toml
	@echo "[make] creating $(VENV) (python3 -m venv + pip install -e .[dev]); ~2 minutes the first time"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

# Two pytest-xdist workers, one thread each, whole test files per worker (TEST_WORKERS=0: one process, in order)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

suite: $(STAMP)
	$(PY) -m workbench suite --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m workbench suite --profile smoke

# The classroom app (notebooks/09_classroom.ipynb) served by Voila on 127.0.0.1:$(DEMO_PORT): first the runs it
# shows (the quick runs `make suite` caches; else a reduced quick run is trained here, with progress bars).
# Idle kernels are culled; SIGINT / SIGTERM stop it cleanly, with or without a terminal (workbench/demo.py).
DEMO_PORT ?= 8866
demo: $(STAMP)
	@$(PY) -m workbench.demo --port $(DEMO_PORT)

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests

bench: $(STAMP)
	$(PY) -m workbench bench combos
	$(PY) -m workbench bench losses
	$(PY) -m workbench bench step
	$(PY) -m workbench bench train --pairs 0
	$(PY) -m workbench bench contention
	$(PY) -m workbench bench repro

clean-runs:
	rm -rf runs
