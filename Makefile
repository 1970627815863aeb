# nerve — two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

# torch is an extra: its tests skip without it. `make test` installs it (pinned: an unpinned
# torch pulls gigabytes of CUDA packages); `make test TEST_EXTRAS=test` leaves it out.
TEST_EXTRAS ?= test,torch

.PHONY: demo test lint unit conformance conformance-table bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per extras set, so switching extras reinstalls and editing pyproject does too.
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[$*]"
	@touch $@

demo: $(VENV)/.installed-cli
	$(BIN)/nerve demo

test: $(VENV)/.installed-$(TEST_EXTRAS)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/mypy

unit: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python -m pytest tests/unit

conformance: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python -m pytest tests/conformance

conformance-table: $(VENV)/.installed-$(TEST_EXTRAS)
	$(BIN)/python scripts/gen_conformance.py

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/peers.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
