# The two set-up commands of the Quickstart: `make demo` and `make test`.
# Each creates .venv with Python 3.11+ when it is missing and installs logq into it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE   := $(VENV)/node/.installed

.PHONY: venv demo test lint bench lock clean

# uv (from PyPI) installs the same releases as pip from the same index, several times faster
# (a fresh .venv: 21 s against pip's 92 s on a 2-core machine, a fifth of `make test` there);
# pip installs them where uv cannot be had or fails.
# constraints.txt pins every release to the ones the suite last passed with (`make lock`).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if $(BIN)/python -m pip install --quiet uv && \
	  UV_LINK_MODE=copy $(BIN)/uv pip install --python $(BIN)/python --quiet \
	    -c constraints.txt -e '.[test]'; then :; \
	else \
	  $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'; \
	fi
	@touch $(STAMP)

# The Fluent project's Node.js Forward client and server (@fluent-org/logger), which the interop
# tests (tests/interop) run against logq: a second implementation of the protocol. Node.js and
# npm come with the machine (apt-get install nodejs npm elsewhere); the versions are pinned.
$(NODE): tests/interop/package.json
	@command -v npm >/dev/null || { echo "make test needs Node.js and npm for tests/interop:" \
	  "apt-get install nodejs npm" >&2; exit 1; }
	mkdir -p $(VENV)/node && cp tests/interop/package.json $(VENV)/node/
	npm install --prefix $(VENV)/node --no-package-lock --no-audit --no-fund --loglevel=error
	@touch $(NODE)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/logq demo

test: $(STAMP) $(NODE)
	$(BIN)/ruff check shipper aggregator athena cli tests bench
	@# PYTHONDONTWRITEBYTECODE emptied: with it set (some machines do), every one of the
	@# suite's many program runs compiled logq's modules again, and pytest re-rewrote every
	@# test module on each worker.
	@# Four workers on two cores: much of the suite waits (outages, acks, rotate waits), so the
	@# extra workers fill the CPU meanwhile (2-core machine, idle: 2 workers 462 s, 3 354 s;
	@# on a faster one 3 workers 262 s, 4 workers 217 s with the CPU 148% busy).
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n 4 --dist loadscope --no-loadscope-reorder tests

lint: $(STAMP)
	$(BIN)/ruff check shipper aggregator athena cli tests bench
	$(BIN)/ruff format --check shipper aggregator athena cli tests bench

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/ship.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/offsets.py
	$(BIN)/python bench/compact.py
	$(BIN)/python bench/churn.py
	$(BIN)/python bench/herd.py
	$(BIN)/python bench/stale_note.py
	$(BIN)/python bench/logq_services.py
	$(BIN)/python bench/failover_writes.py

# The newest releases pyproject.toml allows, written to constraints.txt: run make test after.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 \
	  --no-header --quiet -o constraints.txt.new
	sed -n '/^#/p;/^#/!q' constraints.txt | cat - constraints.txt.new > constraints.txt.top
	mv constraints.txt.top constraints.txt && rm constraints.txt.new

clean:
	rm -rf $(VENV) logq-warehouse .pytest_cache
