# Flotilla: the two commands a newcomer needs are `make demo` and `make test`.
# Both work on a fresh machine with Python 3.11, pip and make: uv is installed into .tools/ when missing.

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := flotilla_contracts flotilla_runtime flotilla_client flotilla_kube flotilla_registration flotilla_heartbeat \
            flotilla_scheduler flotilla_upgrade_orchestrator flotilla_node_agent flotilla_testkit
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.PHONY: demo demo-kube test sync lint types imports schemas schemas-check pytest test-slow soak bench k8s-bins peer-bins prom-bins test-kube down clean help dashboard chromium nginx

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

.tools/bin/uv:
	@echo "uv not found: installing uv $(UV_VERSION) into .tools/"
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/flotilla: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv) pyproject.toml uv.lock */pyproject.toml */*/pyproject.toml
	$(UV) sync --locked --all-packages
	@touch $@

sync: $(BIN)/flotilla ## install the workspace into .venv (one lock file: uv.lock)

demo: sync dashboard ## the main job: a local fleet (nats-server + five services) you can watch
	$(BIN)/flotilla demo

demo-kube: sync k8s-bins ## the main job on real API servers: 2 control planes with kwok nodes, a workload with a PDB, a rollout
	$(BIN)/flotilla demo --kubernetes

down: ## stop the local fleet that `make demo` started
	@$(BIN)/flotilla down

test: sync lint types imports schemas-check pytest ## the whole default suite (what CI runs)

lint: sync ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: sync ## mypy --strict over every package
	$(BIN)/mypy $(addprefix -p ,$(PACKAGES))

imports: sync ## import layers: services never import each other, libs never import services, contracts import nothing of ours
	$(BIN)/lint-imports

schemas: sync ## regenerate JSON Schemas, the AsyncAPI document and docs/contracts.md (refuses breaking changes)
	$(BIN)/python -m flotilla_contracts.schemagen

schemas-check: sync ## fail when the committed schemas are stale or a v1 change is breaking
	$(BIN)/python -m flotilla_contracts.schemagen --check

pytest: sync k8s-bins peer-bins prom-bins dashboard chromium nginx ## unit, handler, contract, integration and Kubernetes tests (real nats-server, real API servers, real Jaeger), not the slow, bench or soak ones
	$(BIN)/pytest

test-slow: sync ## the long suites (chaos long form, big fleets)
	$(BIN)/pytest -m slow

soak: sync ## the long soak: an hour (FLOTILLA_SOAK_MINUTES) of rollouts and kills on a local fleet, then its figures
	$(BIN)/pytest -m soak -s --timeout 0 tests/soak

bench: sync ## benchmarks under tests/bench (print figures as ratios to raw nats-py)
	$(BIN)/pytest -m bench -s tests/bench

test-kube: sync k8s-bins ## only the tests against real control planes with kwok nodes (tests/kube, marker kube; also in `make test`)
	$(BIN)/pytest -m kube

k8s-bins: ## build etcd, kube-apiserver, -controller-manager, -scheduler, kubectl, kwok from tools/k8s/go.mod into .tools/k8s/bin (cached)
	tools/k8s/build.sh

prom-bins: ## build promtool from tools/prom/go.mod into .tools/prom/bin (cached): checks deploy/components/monitoring
	tools/prom/build.sh

peer-bins: ## build Jaeger all-in-one and the nats CLI from tools/peers/go.mod into .tools/peers/bin (cached)
	tools/peers/build.sh

# The browser page (dashboard/, an npm project): `npm ci` when the lock changes, the bundle when a source does.
DASHBOARD_SOURCES := $(wildcard dashboard/src/*) dashboard/build.mjs dashboard/node_modules/.package-lock.json

dashboard/node_modules/.package-lock.json: dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund
	@touch $@

dashboard/dist/index.html: $(DASHBOARD_SOURCES)
	cd dashboard && npm run build

dashboard: dashboard/dist/index.html ## build the live fleet page into dashboard/dist (npm ci + esbuild; cached on its sources)

chromium: ## install Debian's chromium when missing (the dashboard's browser test drives it with playwright-core)
	@command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium; }

nginx: ## install Debian's nginx-light when missing (tests/deploy runs the dashboard's production server block in it)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends nginx-light; }

clean: ## remove the environment and local state
	-$(BIN)/flotilla down 2>/dev/null
	rm -rf $(VENV) .tools .flotilla .mypy_cache .ruff_cache .pytest_cache dashboard/node_modules dashboard/dist .flotilla-test-artifacts
