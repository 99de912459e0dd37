# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# `make run` needs only the runtime dependencies; the test tools come with the first `make test`
# (whose stamp keeps its old name, so an existing full install is not redone).
RUN_STAMP := $(VENV)/.run-stamp
TEST_STAMP := $(VENV)/.installed-stamp

.PHONY: install install-test run test lint typecheck pytest bench clean

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test $(TEST_STAMP) -nt pyproject.toml || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(RUN_STAMP) $(TEST_STAMP)

install: $(RUN_STAMP)

install-test: $(TEST_STAMP)

run: install
	$(BIN)/branchkey-gateway serve

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo --no-cache

typecheck: install-test
	$(BIN)/mypy

pytest: install-test
	$(BIN)/python -m pytest

test: lint typecheck pytest

bench: install-test
	$(BIN)/python bench/weights.py

clean:
	rm -rf $(VENV) .venv-peers .pytest_cache .mypy_cache .ruff_cache .hypothesis
