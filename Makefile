# Two entry points: `make run` (default experiment on the bundled MNIST) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_CONSTRAINTS ?= constraints.txt
OUTDIR ?= outputs/default

.PHONY: run test lint format bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(TORCH_CONSTRAINTS) -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/sublim run --device cpu --outdir $(OUTDIR)

test: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

format: $(VENV)/.installed
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(VENV)/.installed
	$(PY) benchmarks/default_run.py

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
