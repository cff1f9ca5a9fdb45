# spangate: `make demo` runs the gateway on the example policy; `make test` runs every test (in two
# pytest processes); `make image` builds the container image (docs/image.md).
# Everything is installed from the repository's lock files (pip, with hashes):
#   requirements.lock        what the gateway needs at run time (the container image installs only this)
#   requirements-dev.lock    the same pins plus the development tools (pytest, mypy, ruff, ...)
#   requirements-build.lock  the build backend (setuptools) that turns the package into a wheel
# and dev/idp/package-lock.json and dev/mcp-inspector/package-lock.json (npm ci); the Helm
# chart's tools from dev/chart-tools/requirements.txt (pip, hashes) into their own .venv-chart.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
IDP    := dev/idp/node_modules/.package-lock.json
INSPECTOR := dev/mcp-inspector/node_modules/.package-lock.json
# The chart's checks (helm-python-sdk, kubernetes-validate, checkov) in a venv of their own:
# checkov pins dozens of packages that must not bend requirements.lock.
CHART_VENV  := .venv-chart
CHART_STAMP := $(CHART_VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck docs unit bench schema lock image clean chart chart-tools chart-lock

setup: $(STAMP) $(IDP) $(INSPECTOR)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "spangate needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes \
	  -r requirements.lock -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

$(IDP): dev/idp/package-lock.json dev/idp/package.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "spangate: Node.js and npm are needed for the local OpenID provider: apt-get install nodejs npm" >&2; exit 1; }
	npm ci --prefix dev/idp --no-audit --no-fund --loglevel=error
	@touch $@

# The MCP Inspector's CLI: an MCP client nobody here wrote, for the /mcp tests.
$(INSPECTOR): dev/mcp-inspector/package-lock.json dev/mcp-inspector/package.json
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  echo "spangate: Node.js and npm are needed for the MCP Inspector CLI: apt-get install nodejs npm" >&2; exit 1; }
	npm ci --prefix dev/mcp-inspector --no-audit --no-fund --loglevel=error
	@touch $@

# DIALECT=postgresql: the same shop in a PostgreSQL-dialect database (docs/postgresql.md).
DIALECT ?= googlesql
demo: setup
	$(BIN)/spangate dev --dialect $(DIALECT)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests dev/chart-tools $(wildcard bench)
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

# The documentation site (mkdocs.yml, docs/) into build/docs/; --strict: any broken link,
# anchor or nav entry fails (tests/test_docs.py builds it too, so `make test` checks it).
# `.venv/bin/mkdocs serve` previews it on http://127.0.0.1:8000 while you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# pytest in WORKERS processes (pytest-xdist, docs/development.md#running-the-tests): each test
# file runs whole in one of them (--dist loadfile: its module fixtures start once), and each has
# its own emulator, OpenID provider, redis-server and gateway on free ports. WORKERS=0: one process.
WORKERS ?= 2
test: setup chart-tools lint typecheck
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

# The Helm chart: helm lint and render (default and ci/*-values.yaml), the manifests validated
# against Kubernetes 1.29-1.33, checkov. tests/chart/ runs the same in `make test`.
chart: $(CHART_STAMP)
	rm -rf build/chart
	$(CHART_VENV)/bin/python dev/chart-tools/chart_check.py charts/spangate --out build/chart

chart-tools: $(CHART_STAMP)

$(CHART_STAMP): dev/chart-tools/requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "the chart tools need Python 3.11 or newer"'
	test -x $(CHART_VENV)/bin/python || $(PYTHON) -m venv $(CHART_VENV)
	$(CHART_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r dev/chart-tools/requirements.txt
	@touch $@

# The benchmarks (docs/performance.md): every component module, then the end-to-end suite, which
# needs wrk (apt-get install wrk) and writes bench/results/. ARGS picks, e.g.
#   make bench ARGS="e2e --seconds 5 --conc 8"     make bench ARGS="tokens decide --quick"
bench: setup
	$(BIN)/python -m bench $(ARGS)

schema: $(STAMP)
	$(BIN)/python -m gateway.policy.schema > policies/policy.schema.json
	$(BIN)/python -m gateway.policy.schema --cases > policies/policy-test.schema.json

# Re-pin the Python dependencies with the venv's `uv` (pinned in the dev lock). The run-time lock
# first; the dev lock is constrained by it and the build lock by the dev lock: a package is pinned
# the same in all.
COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 --no-header
lock: $(STAMP)
	$(COMPILE) pyproject.toml -o requirements.lock
	$(COMPILE) pyproject.toml --extra dev -c requirements.lock -o requirements-dev.lock
	$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(COMPILE) - -c requirements-dev.lock -o requirements-build.lock

# The container image, built with buildah as root (docs/image.md). Without BASE_IMAGE its base is
# made from Debian packages (debootstrap); where a registry can be reached:
#   make image BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
# The host's Python, not the .venv: `sudo make image` leaves no root-owned .venv behind.
image:
	BASE_IMAGE="$(BASE_IMAGE)" PYTHON="$(PYTHON)" dev/image/build.sh

# Re-pin the chart tools (dev/chart-tools/requirements.in -> requirements.txt).
chart-lock: $(STAMP)
	$(BIN)/uv pip compile dev/chart-tools/requirements.in --generate-hashes --python-version 3.11 \
	  --no-header -o dev/chart-tools/requirements.txt

clean:
	rm -rf $(VENV) $(CHART_VENV) dev/idp/node_modules .pytest_cache .mypy_cache .ruff_cache .run build/docs build/chart \
	  dev/image/wheelhouse/*.whl dev/image/wheelhouse/.key
