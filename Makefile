# happy-observatory — every target works from a clean clone (uv is installed when missing).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
PY_SRC := agent/observatory_agent operator/observatory_operator
HELM_DOCS_ARGS := --chart-search-root helm --sort-values-order file --skip-version-footer --log-level warning

.PHONY: help bootstrap uv test lint typecheck imports unit integration crds bench dev env run-agent run-processor run-operator docker clean dashboards chart-docs workflows

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

uv:
	@command -v $(UV) >/dev/null 2>&1 || { echo "uv not found: installing it with pip"; python3 -m pip install --user --quiet uv; }

bootstrap: uv ## Install uv if missing and sync the locked environment
	$(UV) sync --frozen

lint: bootstrap ## ruff lint and format check
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: bootstrap ## mypy --strict over both packages
	$(UV) run mypy --strict $(PY_SRC)

imports: bootstrap ## import-linter layering contracts
	$(UV) run lint-imports

env: ## Build the test environment's binaries that are missing (cached outside the repo); Debian's promtool, node_exporter
	python3 tests/env/build.py
	python3 -m tests.env.tools

unit: bootstrap ## Unit tests only (pure code, fast)
	$(UV) run pytest tests/unit

test: lint typecheck imports workflows env ## Every check: lint, types, import contracts, unit + integration + e2e tests
	$(UV) run pytest

crds: bootstrap ## Regenerate CRD YAML from the pydantic models
	$(UV) run python -m observatory_operator.api.generate

dashboards: bootstrap ## Regenerate dashboards/*.json and the chart's copies (a test fails when stale)
	$(UV) run python -m dashboards.generate

chart-docs: ## Regenerate helm/happy-observatory/README.md from values.yaml with helm-docs (a test fails when stale)
	python3 tests/env/build.py helm-docs
	"$$(python3 tests/env/build.py --print-paths helm-docs | cut -f2)/helm-docs" $(HELM_DOCS_ARGS)

workflows: ## actionlint over .github/workflows (built from source like the test bed's tools)
	python3 tests/env/build.py actionlint
	"$$(python3 tests/env/build.py --print-paths actionlint | cut -f2)/actionlint" -no-color

bench: bootstrap env ## Benchmarks (tests/bench), never part of make test
	$(UV) sync --frozen --group bench
	$(UV) run pytest tests/bench -p no:cacheprovider -s

dev: bootstrap env ## Local control plane + InfluxDB + simulated nodes + operator, until Ctrl-C
	$(UV) run python -m tests.env.dev

run-agent: bootstrap ## Run one agent on this host (no cluster needed)
	$(UV) run observatory-agent run

run-processor: bootstrap ## Run a processor locally
	$(UV) run observatory-processor

run-operator: bootstrap ## Run the operator against $$KUBECONFIG
	$(UV) run observatory-operator

docker: ## Build the image (needs a Docker engine; none on these machines)
	docker build -f docker/Dockerfile -t happy-observatory:2.0.0 .

clean: ## Remove local build and test state (not the binary cache)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache dist .dev
