# One entry point for people and CI. `make test` builds its own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BROKER ?= memory://
COMPOSE ?= docker compose

.PHONY: test lint typecheck pytest demo up down bench bench-all clean

test: lint typecheck pytest

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "choreo needs Python >= 3.11 (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check choreo services tests bench examples
	$(BIN)/ruff format --check choreo services tests bench examples

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

# Figures, not asserts: see bench/README.md. Needs RabbitMQ (CHOREO_BENCH_URL).
bench: $(STAMP)
	$(BIN)/python -m bench.fanout --n 20000 --runs 3 --json bench/last-fanout.json

bench-all: bench
	$(BIN)/python -m bench.fanout --n 20000 --runs 3 --variant split
	$(BIN)/python -m bench.fanout --n 20000 --runs 3 --variant backlog
	$(BIN)/python -m bench.rpc --n 5000 --runs 3
	$(BIN)/python -m bench.workers --n 4000 --runs 3

# The database store (#13): inbox overhead, outbox relay vs direct publishing. Needs
# RabbitMQ and PostgreSQL (CHOREO_BENCH_POSTGRES_URL); bigger: STORE_BENCH_ARGS='--n 10000'.
.PHONY: bench-store
bench-store: $(STAMP)
	$(BIN)/python -m bench.store --n 1000 --runs 3 $(STORE_BENCH_ARGS)

# Sagas (#15): saga events handled/s vs a stored service doing the same handler work, on
# PostgreSQL. Needs RabbitMQ and PostgreSQL; bigger: SAGA_BENCH_ARGS='--n 5000'.
.PHONY: bench-saga
bench-saga: $(STAMP)
	$(BIN)/python -m bench.saga --n 1000 --runs 3 $(SAGA_BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Partitions (#14): ordered (8 partitions) vs unordered throughput on 1 and 2 processes with
# a 1 ms CPU handler, and the rebalance after a kill -9. Needs RabbitMQ.
.PHONY: bench-partitions
bench-partitions: $(STAMP)
	$(BIN)/python -m bench.partitions --n 8000 --runs 3 $(PARTITIONS_BENCH_ARGS)
