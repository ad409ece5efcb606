# digitq — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: run test test-fast test-perf model bench bench-model bench-ab bench-bounds bench-latency bench-fairness lint format clean install browser promtool

run: $(STAMP) models/LATEST  ## the whole local stack: Redis, worker(s), API :8000, Flower :5555
	$(PY) -m devstack

# Test files run in TEST_PROCESSES processes (pytest-xdist), each file's tests in one of them, so a
# module's stack starts once; ports (free_port) and temporary directories are per process.
TEST_PROCESSES ?= 2
XDIST := -n $(TEST_PROCESSES) --dist loadfile

test: $(STAMP) models/LATEST browser promtool lint  ## every test bar the perf ones, after the linters and mypy
	$(PY) -m pytest $(XDIST) -m "not perf"

test-fast: $(STAMP) models/LATEST  ## the tests that need no worker processes (API over a real Redis, ml), bar the slow ones
	$(PY) -m pytest $(XDIST) -m "not stack and not slow and not perf"

test-perf: $(STAMP) models/LATEST  ## wall-clock and memory bounds (machine-dependent): run on a quiet machine, with the benchmarks
	$(PY) -m pytest -m perf

model: $(STAMP)  ## train the default model (models/<version>, models/LATEST)
	$(PY) -m ml train

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

# Reinstall when pyproject.toml or the constraints change.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "digitq needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) data .pytest_cache
