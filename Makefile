# `make demo` and `make test` each work on a fresh clone: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bytecode bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m example_app.demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# Two processes, a test file each at a time: every process has databases, Redis keys and Celery
# queues of its own, and a file's tests share their fixtures.
PYTEST_WORKERS ?= 2
unit: $(VENV)/.installed-dev bytecode
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

# The project's own modules compiled once: every `backfill` command and worker the suite and the
# benchmark start would otherwise compile them again (an editable install leaves them as source,
# and PYTHONDONTWRITEBYTECODE keeps Python from caching them).
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q backfill example_app bench tests

test: lint typecheck unit

# The players/teams migration on PostgreSQL five ways; e.g. make bench BENCH_ARGS="--rows 200000";
# then beside a live application (pgbench on PostgreSQL, a TPC-B-like client on MariaDB), e.g.
# make bench OLTP_ARGS="--scale 5 --rounds 1"; then backfill lint over 1,000 generated revisions.
bench: $(VENV)/.installed-dev bytecode
	$(BIN)/python -m bench.run $(BENCH_ARGS)
	$(BIN)/python -m bench.oltp $(OLTP_ARGS)
	$(BIN)/python -m bench.oltp --dialect mariadb $(OLTP_ARGS)
	$(BIN)/python -m bench.lint

# The interleaving simulator at length: 100,000 schedules on SQLite, then a slice on PostgreSQL.
soak: $(VENV)/.installed-dev
	$(BIN)/python -m tests.sim --seeds 0:$(SOAK_SCHEDULES) --jobs 2
	$(BIN)/python -m tests.sim --seeds 0:$(SOAK_POSTGRES_SCHEDULES) --jobs 2 --postgres $(SOAK_POSTGRES_URL)

SOAK_SCHEDULES ?= 100000
SOAK_POSTGRES_SCHEDULES ?= 2000
SOAK_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres

clean:
	rm -rf $(VENV) demo.sqlite3 demo.sqlite3-wal demo.sqlite3-shm
