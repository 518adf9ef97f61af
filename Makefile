# tickflow — the two commands a user needs are `make run` and `make test`; the rest are their parts.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .cache/venv
PY := $(VENV)/bin/python
KAFKA_PORT ?= 19092
PG_PORT ?= 15432
export KAFKA_PORT PG_PORT
export TICKFLOW_KAFKA__BOOTSTRAP_SERVERS ?= 127.0.0.1:$(KAFKA_PORT)
export TICKFLOW_POSTGRES__PORT ?= $(PG_PORT)
PYTEST_ARGS ?=

.PHONY: help setup system system-test venv native stack-setup stack-up stack-down stack-status topics db run worker test test-unit lint bench clean

help:
	@echo "make run        start the local stack and a worker on the simulated feed (RUN_SECONDS=N to stop after N s)"
	@echo "make test       set up, start the stack, run the whole test suite (unit + integration)"
	@echo "make stack-up / stack-down / stack-status   the local Kafka broker and PostgreSQL"
	@echo "make topics     create/check the topics of topics.yaml;  make db   migrate the schema"
	@echo "make lint       ruff and the import rules (import-linter);  make bench   throughput/latency benchmark (bench/)"

setup: system venv native stack-setup

# System packages from Debian's packages, only those missing (dev/system-packages.sh says which).
system:
	dev/system-packages.sh run

system-test:
	dev/system-packages.sh test

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt | system
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,compiled]'
	@touch $@

# The anomaly detectors compiled with mypyc (streams/anomalies/native.py): a no-op when the build of the current
# sources exists; without a compiler they run as Python.
native: venv
	$(PY) dev/build_detectors.py

stack-setup:
	dev/stack.sh setup

stack-up: setup
	dev/stack.sh start

stack-down:
	dev/stack.sh stop

stack-status:
	dev/stack.sh status

topics: venv
	$(PY) -m streams topics create

db: venv
	$(PY) -m streams db migrate

run: setup
	$(PY) dev/run.py

worker: venv
	$(PY) -m streams worker -l info

test: system-test stack-up
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

QUIX_VENV := .cache/bench-quix-venv

# Quix Streams (a peer of bench/throughput.py) pins pydantic below tickflow's: its own venv, never $(VENV).
$(QUIX_VENV)/.installed: bench/peers/requirements-quix.txt
	@test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install -q --disable-pip-version-check -r bench/peers/requirements-quix.txt
	@touch $@

bench: stack-up $(QUIX_VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,compiled,bench]'
	$(PY) bench/throughput.py
	$(PY) bench/anomaly_quality.py

bench-soak: stack-up
	BENCH_SOAK=$${BENCH_SOAK:-600} $(PY) bench/throughput.py

clean: stack-down
	rm -rf .cache/stack
