# One-command setup, serve and test. Everything installs into ./.venv from pyproject.toml (every
# extra but gpu), constrained by requirements.lock, so nothing depends on what the machine already has.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup serve test lint unit integration protos lock chart-check clean help

help:
	@echo "make serve    set up and start the gateway (embedded Ray, example models; ARGS='...' adds flags)"
	@echo "make test     set up and run lint, types, proto freshness and every test"
	@echo "make setup    only create .venv and install"
	@echo "make protos   regenerate gateway/_proto from protos/"
	@echo "make lock     refresh requirements.lock from the current .venv"
	@echo "make chart-check  check the Helm chart (helm lint + kubernetes-validate where helm exists)"

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --constraint requirements.lock --editable '.[all,dev]'
	@touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(BIN)/gateway serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_protos.py --check

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

test: lint
	$(BIN)/python -m pytest

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

# Not part of `make test`: it needs a helm binary for its full run (the static chart checks are in the tests).
chart-check: $(STAMP)
	$(BIN)/python scripts/chart_check.py

lock: $(STAMP)
	{ echo "# Exact versions of every dependency, used as pip constraints by 'make setup'."; \
	  echo "# Regenerate with 'make lock' after changing pyproject.toml."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^model-gateway'; } > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
