# The README's two commands: `make run` (whole pipeline, tiny preset, this machine) and
# `make test` (the test suite). Both create the virtualenv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
PYTEST_ARGS ?=
ARGS    ?=

.PHONY: install run run-stack stack-up stack-down test test-all compile bench gpu-check clean chromium image-check

install: $(VENV)/.installed chromium

# Debian's chromium for the HTML report card's browser test; best effort, never fails.
chromium:
	@.ci/install-chromium || true

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# CPU torch first (the wheel on disk), then DeepSpeed built against it, then the rest.
	$(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt --no-build-isolation deepspeed ninja
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

run: install
	$(VENV)/bin/fromscratch run $(ARGS)

# The same pipeline against real S3 (SeaweedFS), an MLflow tracking server and a two-node Ray,
# all started on this machine and taken down afterwards (pipelines/local_stack.py).
run-stack: install
	$(VENV)/bin/fromscratch stack run $(ARGS)

stack-up: install
	$(VENV)/bin/fromscratch stack up

stack-down:
	$(VENV)/bin/fromscratch stack down

test: install
	$(PY) -m pytest -q -m "not slow" --durations=12 $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

compile: install
	$(VENV)/bin/fromscratch compile --preset gpu -o build/gpu-pipeline.yaml
	$(VENV)/bin/fromscratch compile --preset cluster -o build/cluster-pipeline.yaml

# Build docker/Dockerfile.cpu for real (podman, local base image, offline wheelhouse, no network),
# run data_prep + pretrain inside it as KFP would, then build docker/Dockerfile.cuda as far as a
# machine without CUDA allows (docker/image_check.py; installs podman when root).
image-check: install
	$(PY) docker/image_check.py --cuda $(ARGS)

bench: install
	$(PY) benchmarks/pretrain_throughput.py

# The gpu preset end to end on one GPU, cut to about 8 minutes, then per stage: seconds,
# throughput, MFU (pre-training), peak GPU memory; vLLM rollouts beside plain generate; the
# evaluation table. Needs CUDA, flash-attn and vLLM (the CUDA image): it uses that machine's
# Python (GPU_PY), not this Makefile's CPU virtualenv.
GPU_PY ?= python3
gpu-check:
	mkdir -p gpu-check
	$(GPU_PY) benchmarks/gpu_check.py --out gpu-check --json gpu-check/figures.json

clean:
	rm -rf build fromscratch-runs .pytest_cache .fromscratch-kfp
