# execbox — the README's commands. Everything works from a fresh clone on Debian as root:
# the Docker engine is installed/started and the sandbox image built when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test test-unit images engine install lint bench clean compose-up compose-down

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

engine:
	@scripts/ensure-docker.sh
	@scripts/ensure-criu.sh || echo "[make] no CRIU >= 4.2 here: kernels boot instead of being restored (README: Fresh sessions)" >&2

images: engine
	@sandbox_images/python/build.sh

## run: the service on http://$${EXECBOX_HOST:-127.0.0.1}:$${EXECBOX_PORT:-8000}
run: install images
	$(PY) -m execbox_server

## test: the whole suite against a real engine, real images and real kernels
test: install images
	$(PY) -m pytest $(PYTEST_ARGS)

## test-unit: the unit tests only (fakes at the seams; no engine, no image), in seconds
test-unit: install
	$(PY) -m pytest -m "not integration" tests/unit $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check service clients tests bench
	$(PY) -m mypy

bench: install images
	$(PY) bench/run_all.py

## compose-up / compose-down: the service in a container (docker-compose.yml)
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

compose-up: engine
	@command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	scripts/build-context.sh
	mkdir -p /run/execbox
	COMPOSE_DOCKER_CLI_BUILD=0 DOCKER_BUILDKIT=0 $(COMPOSE) --env-file .build/.env up -d --build

compose-down:
	$(COMPOSE) --env-file .build/.env down --remove-orphans

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
