# One entry point for people and CI. `make test` builds its own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BROKER ?= memory://
COMPOSE ?= docker compose

.PHONY: test lint typecheck pytest demo up down bench clean

test: lint typecheck pytest

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "choreo needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check choreo services tests
	$(BIN)/ruff format --check choreo services tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict choreo

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m services.demo --fresh --broker '$(BROKER)'

up:
	$(COMPOSE) up --build -d
	@echo "follow the choreography: $(COMPOSE) logs -f inventory catalog wishlist"

down:
	$(COMPOSE) down -v

bench: $(STAMP)
	@echo "Benchmarks land with issue #6 (bench/)." >&2; exit 1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
