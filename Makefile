# The two set-up commands of the README are `make demo` and `make test`; each creates the
# virtualenv it needs on first use. Other targets are for contributors.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= embedded,data,text,train,bench,dev

.PHONY: demo test venv lint fmt unit infra-up infra-status infra-down clean

demo: venv  ## the main job: embedded broker + Triton, round trips, everything stopped
	$(BIN)/explore demo

test: venv  ## the whole suite: lint, unit tests, integration tests on real Kafka and Triton
	$(BIN)/ruff check .
	$(BIN)/pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else "error: Python 3.11 or 3.12 is needed (set PYTHON=...), found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e ".[$(EXTRAS)]"
	$(BIN)/pip check
	@touch $@

lint: venv
	$(BIN)/ruff check .

fmt: venv
	$(BIN)/ruff check --fix .

unit: venv  ## fast inner loop: no broker, no Triton
	$(BIN)/pytest -m "not integration"

infra-up: venv
	$(BIN)/explore infra up

infra-status: venv
	$(BIN)/explore infra status

infra-down: venv
	$(BIN)/explore infra down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
