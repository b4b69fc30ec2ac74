# Two entry points: `make run` (default experiment on the bundled MNIST) and `make test`.
# `make run` installs what running needs; `make test` adds the development tools; `make docs`
# the documentation tools. Each step installs into .venv only once (stamp files).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP = $(PY) -m pip install -q -c $(TORCH_CONSTRAINTS)
TORCH_CONSTRAINTS ?= constraints.txt
OUTDIR ?= outputs/default

.PHONY: run test test-all test-slow test-docs docs docs-serve wheel-check lint format bench clean

$(VENV)/.venv:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-run: $(VENV)/.venv pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run
	$(PIP) -e '.[dev]'
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed-run
	$(PIP) -e '.[docs]'
	touch $@

run: $(VENV)/.installed-run
	$(VENV)/bin/sublim run --device cpu --outdir $(OUTDIR)

test: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks docs notebooks
	$(VENV)/bin/ruff format --check src tests benchmarks docs notebooks
	$(PY) -m pytest -q -m "not slow and not docs"

# the slow checks (a published number, real processes and signals, a Dask cluster); CI runs them
test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "slow and not docs" --durations=0

# the tutorials' commands and the notebook, executed at small scale (several minutes)
test-docs: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m docs --durations=0

# everything, the slow scientific checks included
test-all: $(VENV)/.installed-dev
	$(PY) -m pytest -q

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# build the wheel and sdist, install the wheel into a clean venv, run sublim from it
wheel-check: $(VENV)/.installed-dev
	bash .ci/wheel_check.sh $(PY)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks docs notebooks

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format src tests benchmarks docs notebooks

bench: $(VENV)/.installed-run
	$(PY) benchmarks/default_run.py

clean:
	rm -rf $(VENV) outputs site dist build .pytest_cache .ruff_cache
