# Every target creates the virtualenv on first use, so a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Empty: the service looks up $BRIDGE_CONFIG, else ./config.toml, else config.example.toml.
CONFIG ?=

.PHONY: run test fuzz lint typecheck unit demo bench clean

# What the service needs to run, and nothing more.
$(BIN)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The service plus the test and check tools.
$(BIN)/.installed: $(BIN)/.installed-run
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/.installed-run
	$(BIN)/messenger-bridge $(if $(CONFIG),--config $(CONFIG)) serve

# The simulators need only what the service does.
demo: $(BIN)/.installed-run
	$(BIN)/python -m tests.sim.demo $(if $(CONFIG),--config $(CONFIG))

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest -q

test: lint typecheck unit

# The long schema fuzz run (10,000 generated requests against a real bridge); `make test` runs a
# short one.
fuzz: $(BIN)/.installed
	FUZZ_REQUESTS=10000 $(BIN)/pytest -q tests/test_openapi.py -k fuzz

bench: $(BIN)/.installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
