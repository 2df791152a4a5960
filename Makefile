# pglocalai: in-database text embeddings for PostgreSQL.
#
# From a fresh Debian 12 or 13 machine, as root:
#   make demo    install everything, start a private cluster and the runtime, run the demo
#   make test    the same set-up, then ruff, pytest and the SQL regression tests
# Every step checks what is already there, so re-running either is fast.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
VENV_STAMP := $(VENV)/.pglocalai-installed
# Models, logs, the cluster record and .run/env live under .run (ignored by git).
export PGLOCALAI_HOME ?= $(CURDIR)/.run

.PHONY: help system venv model install-ext up down status demo test lint bench

help:
	@echo "make demo          set everything up and run the multilingual search demo"
	@echo "make test          set everything up and run every test (what CI runs)"
	@echo "make system        PostgreSQL, PL/Python, pgvector, PGXS, python3-venv (apt)"
	@echo "make venv          .venv with the package and its pinned dependencies"
	@echo "make model         install the models into .run/models"
	@echo "make install-ext   install the azure_local_ai extension into the server"
	@echo "make up|down|status  the private PostgreSQL cluster and the runtime (run as postgres,"
	@echo "                   from its own venv and model store next to the cluster)"
	@echo "PGLOCALAI_PG_MAJOR=N make venv   the packages for server N (README: Install into an"
	@echo "                   existing PostgreSQL), then: .venv/bin/pglocalai install"
	@echo "make lint          ruff"
	@echo "make bench         the benchmarks"

system:
	@scripts/install-system.sh

# Rebuilt only when pyproject.toml (the one place versions are pinned) or the script changed.
venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml scripts/setup-venv.sh | system
	@scripts/setup-venv.sh

model: venv
	@scripts/install-models.sh

install-ext: system
	@scripts/install-ext.sh

up: install-ext model
	@scripts/cluster.sh up

down:
	@scripts/cluster.sh down

# Informational: prints both states and does not fail the make when something is stopped.
status:
	@scripts/cluster.sh status || true

demo: up
	@source .run/env && $(VENV)/bin/python demo/demo.py

test: up
	@scripts/run-tests.sh

lint: venv
	@$(VENV)/bin/ruff check .

# make bench BENCH_ARGS=--quick : small sizes, written to .run/bench/quick
BENCH_ARGS ?=
bench: up
	@source .run/env && $(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)
