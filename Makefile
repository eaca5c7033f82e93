# opsroom: the README's commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check unit integration bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The embedded default: nats-server, the hub and four simulated rooms. Ctrl-C stops all.
demo: $(STAMP)
	$(BIN)/opsroom demo

## Lint, types, then every test (unit, contract, integration against real servers).
test: $(STAMP) check
	$(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check broker adapters tests bench protos/generate.py
	$(BIN)/ruff format --check broker adapters tests bench protos/generate.py
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract

integration: $(STAMP)
	$(BIN)/pytest tests/integration

## Hub versus raw JetStream, side by side (see docs/performance.md).
bench: $(STAMP)
	$(BIN)/python bench/run.py

## Regenerate the Python code of protos/ after editing a .proto file.
protos: $(STAMP)
	$(BIN)/python protos/generate.py
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .opsroom .pytest_cache .mypy_cache .ruff_cache
