# Quick start: `make run` (set up, then reproduce the pipeline on the demo source) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# DVC runs each stage's `python -m pipelines.<stage>` with this PATH: the project's interpreter.
export PATH := $(BIN):$(PATH)
# librosa's MFCC is JIT-compiled by numba on first use; keep the compiled code between runs.
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba

.PHONY: run test setup clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[pipeline,test]'
	touch $@

run: setup
	dvc repro

test: setup chromium
	python -m pytest

# The variants of each case for a size or latency budget (after `make run`): deployed accuracy with its
# interval, file size, latency, the Pareto fronts. The headline figures: `dvc metrics show`.
.PHONY: compare
compare:
	@for table in reports/*/budget.md; do cat "$$table"; echo; done

# Headless Chromium for the browser tests: Debian's package, installed when missing (as root, as in CI).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }

clean-venv:
	rm -rf $(VENV)

# The runtime extra and the exported artifacts in an aarch64 Python under qemu-user (a Raspberry Pi 4's
# Cortex-A72): predictions must equal this machine's (scripts/check_aarch64.py; downloads under .cache/aarch64).
.PHONY: check-aarch64
check-aarch64: setup
	python scripts/check_aarch64.py

# Local Prefect server + deployments (prefect.yaml) + process worker, and the MLflow UI on mlflow.db.
# HOST=0.0.0.0 make ui listens on every interface, with logins (see scripts/ui.py); PREFECT_PORT /
# MLFLOW_PORT change the ports. Ctrl-C or SIGTERM stops everything (exit 0).
.PHONY: ui
ui: setup
	python scripts/ui.py
