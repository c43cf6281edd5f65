# One entry point for people and CI. `make test` builds its own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BROKER ?= memory://

.PHONY: test lint typecheck pytest demo bench clean

test: lint typecheck pytest

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "choreo needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check choreo tests
	$(BIN)/ruff format --check choreo tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict choreo

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "The SKU demo stack lands with issue #4 (services/ and make demo)." >&2; exit 1

bench: $(STAMP)
	@echo "Benchmarks land with issue #6 (bench/)." >&2; exit 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
