# The two commands a user needs: `make run` and `make test`. Everything else
# is for developers. Both create .venv and install zwal into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup run stop test bench bench-engine bench-quick clean help

help:
	@echo "make run    - set up .venv and start a local cluster under supervisord"
	@echo "make stop   - stop the local cluster"
	@echo "make test   - set up .venv and run the whole test suite"
	@echo "make bench-engine - engine benchmark against the disk's fsync floor"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	@mkdir -p var
	$(BIN)/zwal demo --path var/demo.wal
	$(BIN)/zwal log verify var/demo.wal

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-engine: setup
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
