# Two commands do all the set-up on a fresh machine: `make suite` (the main job) and `make test`.
# Both (re)create .venv with python3 -m venv + pip install -e .[dev] when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
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

test: $(STAMP)
	$(PY) -m pytest -q

suite: $(STAMP)
	$(PY) -m workbench suite --profile $(PROFILE)

smoke: $(STAMP)
	$(PY) -m workbench suite --profile smoke

# The classroom app (notebooks/09_classroom.ipynb) served by Voila on 127.0.0.1:$(DEMO_PORT): first the runs it
# shows (the quick runs `make suite` caches; else a reduced quick run is trained here, with progress bars).
DEMO_PORT ?= 8866
demo: $(STAMP)
	@$(PY) -c "from workbench.logs import setup_logging; setup_logging(); \
	from workbench.sliders import prepare_classroom; print('[make] runs:', prepare_classroom())"
	@KERNELS=$$($(PY) -c "from workbench.suite import ensure_kernel; from workbench.paths import runs_dir; \
	ensure_kernel(); print(runs_dir() / 'suite' / 'jupyter')") && \
	echo "[make] classroom app: http://127.0.0.1:$(DEMO_PORT)/ (open it in a browser; Ctrl-C stops it)" && \
	JUPYTER_PATH=$$KERNELS $(PY) -m voila notebooks/09_classroom.ipynb --no-browser --Voila.ip=127.0.0.1 \
	  --port=$(DEMO_PORT) --Voila.port_retries=0 --progressive_rendering=True

lint: $(STAMP)
	$(VENV)/bin/ruff check workbench tests

bench: $(STAMP)
	$(PY) -m workbench bench combos
	$(PY) -m workbench bench losses
	$(PY) -m workbench bench step
	$(PY) -m workbench bench train --pairs 0
	$(PY) -m workbench bench contention

clean-runs:
	rm -rf runs
