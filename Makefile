# The two commands of the README:  `make demo`  and  `make test`  (`make test-unit`: its fast part).
# Both create .venv (torch==2.13.0 first, then the rest) and are idempotent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-unit lint clean-demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	launch/demo.sh

test: lint
	$(BIN)/python -m pytest -q --durations=15 tests

# ruff (defect rules, no formatting) and mypy; their settings are in pyproject.toml
# ([tool.ruff], [tool.mypy]: mypy checks pipeline/ and data_prep/). `make lint` runs them alone.
lint: $(STAMP)
	$(BIN)/ruff check pipeline data_prep benchmarks tests
	$(BIN)/mypy

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

clean-demo:
	rm -rf runs/demo data/stdlib
