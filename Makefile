# execbox — the README's commands. Everything works from a fresh clone on Debian as root:
# the Docker engine is installed/started and the sandbox image built when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test images engine install lint bench bench-quick clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

engine:
	@scripts/ensure-docker.sh

images: engine
	@sandbox_images/python/build.sh

## run: the service on http://$${EXECBOX_HOST:-127.0.0.1}:$${EXECBOX_PORT:-8000}
run: install images
	$(PY) -m execbox_server

## test: the whole suite against a real engine, real images and real kernels
test: install images
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check service clients tests bench
	$(PY) -m mypy

bench: install images
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
