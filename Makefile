# mlsd: the two commands a new user needs are `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint format bench compose-test clean help

help:
	@echo "make demo   - set up .venv, fetch data, run every built system's demo"
	@echo "make test   - set up .venv and run unit, integration and model tests"
	@echo "make lint   - ruff check, ruff format --check, mypy systems"
	@echo "make bench  - bench selftest, broker and every system's benchmark into systems/*/bench/, then the README numbers"
	@echo "make compose-test - (root) build the images offline, start every compose profile, check it through its ports"

# Re-installs only when pyproject.toml changes: a quick no-op otherwise.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mlsd demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check systems tests
	$(BIN)/ruff format --check systems tests
	$(BIN)/mypy systems

format: $(STAMP)
	$(BIN)/ruff check --fix systems tests
	$(BIN)/ruff format systems tests

# Writes the committed results (systems/<name>/bench/<name>.json + .png) and regenerates every README's numbers.
bench: $(STAMP)
	$(BIN)/mlsd bench selftest
	$(BIN)/mlsd bench broker
	@for sys in $$($(BIN)/python -c "from systems.cli import built_systems; print(' '.join(c for _, c, _ in built_systems()))"); do \
		echo "== mlsd $$sys bench"; $(BIN)/mlsd $$sys bench || exit 1; \
	done
	$(BIN)/mlsd bench report

# Every compose profile started by a real Docker engine (dockerd is started, and stopped, when none runs) and
# checked through its published ports; images from docker/offline/build.sh. Prints the seconds of each step.
compose-test: $(STAMP)
	$(BIN)/python tests/compose/smoke.py

clean:
	rm -rf $(VENV) .mlsd .pytest_cache .mypy_cache .ruff_cache
