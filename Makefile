# happy-observatory — every target works from a clean clone (uv is installed when missing).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
PY_SRC := agent/observatory_agent operator/observatory_operator
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
HELM_DOCS_ARGS := --chart-search-root helm --sort-values-order file --skip-version-footer --log-level warning

.PHONY: help bootstrap uv test lint typecheck imports unit integration crds bench dev env image run-agent run-processor run-operator docker clean dashboards chart-docs workflows

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

env: uv ## Build what the test bed needs and is missing: binaries (cached outside the repo), Debian packages, images
	python3 tests/env/build.py
	python3 -m tests.env.tools
	@if [ "$$(id -u)" = 0 ]; then python3 tests/env/images.py; else echo "not root: no images (nodes are simulated)"; fi

image: uv ## Build the project image from docker/Dockerfile with podman (local base and uv images)
	python3 tests/env/images.py project

unit: bootstrap ## Unit tests only (pure code, fast)
	$(UV) run pytest tests/unit

test: lint typecheck imports workflows env ## Every check: lint, types, import contracts, unit + integration + e2e tests
	$(UV) run python -m tests.env.suites

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

dev: bootstrap env ## Local control plane, 3 real nodes (simulated when not root), InfluxDB, operator, examples; until Ctrl-C
	$(UV) run python -m tests.env.dev

run-agent: bootstrap ## Run one agent on this host (no cluster needed)
	$(UV) run observatory-agent run

run-processor: bootstrap ## Run a processor locally: CONFIG=processor.json (a ProcessorConfig) [SHARED=dir]
	$(UV) run observatory-processor run --config "$${CONFIG:?set CONFIG=path/to/processor.json}" $${SHARED:+--shared-config "$$SHARED"}

run-operator: bootstrap ## Run the operator against $$KUBECONFIG
	$(UV) run observatory-operator

docker: ## Build the image with docker or podman, whichever is there (the Dockerfile's default base images)
	@engine=$$(command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || command -v podman || true); \
	if [ -z "$$engine" ]; then echo "neither a running docker nor podman found" >&2; exit 1; fi; \
	echo "building with $$engine"; \
	$$engine build -f docker/Dockerfile -t ghcr.io/happy-patterns-org/happy-observatory:$(VERSION) .

clean: ## Remove local build and test state (not the binary cache)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache dist .dev
