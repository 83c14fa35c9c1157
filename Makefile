# Developer entry points. `make run` and `make test` each do their own set-up on a fresh
# machine with only Python 3.11+; the virtualenv is rebuilt only when pyproject.toml changes.

VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install, so a repeat run is instant and an edited
# pyproject.toml reinstalls.
STAMP := $(VENV)/.installed
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-k allocation -x".
PYTEST_ARGS ?=
# Python interpreters tried in order when creating the virtualenv; the first that is
# 3.11 or newer wins. Override with make venv PYTHON=/path/to/python3.x.
PYTHON_CANDIDATES := python3.11 python3.12 python3.13 python3
PYTHON ?=
LOADTEST_USERS ?= 50
LOADTEST_SPAWN_RATE ?= 10
LOADTEST_DURATION ?= 1m
LOADTEST_HOST ?= http://127.0.0.1:8080
# Extra arguments for the benchmark, e.g. make bench BENCH_ARGS="--keep-logs".
BENCH_ARGS ?=

.PHONY: venv test lint typecheck run run-tls bench bench-quick soak loadtest loadtest-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x $(BIN)/python ]; then \
		python="$(PYTHON)"; \
		if [ -z "$$python" ]; then \
			for candidate in $(PYTHON_CANDIDATES); do \
				if command -v $$candidate >/dev/null 2>&1 && \
				   $$candidate -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
					python=$$candidate; break; \
				fi; \
			done; \
		fi; \
		if [ -z "$$python" ]; then \
			echo "payportal needs Python 3.11 or newer; none of $(PYTHON_CANDIDATES) is" >&2; \
			exit 1; \
		fi; \
		echo "creating $(VENV) with $$python"; \
		"$$python" -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy payportal/engine

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy payportal/engine
	$(BIN)/pytest $(PYTEST_ARGS)

run: venv
	$(BIN)/payportal migrate
	$(BIN)/payportal serve --seed-demo

# make run over HTTPS with a local development CA (var/tls/ca.pem is what clients trust);
# plain HTTP on 8079 redirects to it.
run-tls: venv
	$(BIN)/payportal migrate
	$(BIN)/payportal dev-cert --directory var/tls
	PAYPORTAL_TLS_CERT_FILE=var/tls/cert.pem PAYPORTAL_TLS_KEY_FILE=var/tls/key.pem \
		PAYPORTAL_TLS_CA_FILE=var/tls/ca.pem PAYPORTAL_HTTP_REDIRECT_PORT=8079 \
		$(BIN)/payportal serve --seed-demo

# The end-to-end benchmark: ceiling, naive baseline and payportal serve side by side on
# the local PostgreSQL (PAYPORTAL_BENCH_POSTGRES_URL), then the shard benchmark; 20-40 min.
bench: venv
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The same, reduced to fit in under 3 minutes on a 2-core machine (it says what it left out).
bench-quick: venv
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

# The long runs make test keeps short: 200 random stops of a busy serve, the fault tests
# with SOAK_FAULT_ROUNDS times their shard kills and connection drops (and the SMTP one,
# which waits out the mail sender's retry delay), and the system
# simulation for SOAK_SECONDS (default an hour) of seeds. Prints each one's figures.
SOAK_STOP_ROUNDS ?= 200
SOAK_FAULT_ROUNDS ?= 10
SOAK_SECONDS ?= 3600
soak: venv
	PAYPORTAL_STOP_ROUNDS=$(SOAK_STOP_ROUNDS) $(BIN)/pytest -s \
		tests/e2e/test_serve_stop.py -k sigterm
	PAYPORTAL_SOAK=1 PAYPORTAL_TEST_FAULT_ROUNDS=$(SOAK_FAULT_ROUNDS) $(BIN)/pytest -s tests/faults
	PAYPORTAL_SOAK=1 PAYPORTAL_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/pytest -s \
		tests/simulation/test_system_simulation.py

# Runs against a portal already started with `make run` on 127.0.0.1.
loadtest: venv
	@if [ -f loadtests/locustfile.py ]; then \
		$(BIN)/locust -f loadtests/locustfile.py --headless \
			--host $(LOADTEST_HOST) \
			--users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE) \
			--run-time $(LOADTEST_DURATION); \
	else \
		echo "no load test exists yet (loadtests/locustfile.py is missing)"; \
	fi

# Starts its own payportal serve on a scratch PostgreSQL database (free ports), runs the
# Locust mix for LOADTEST_DURATION, then checks the database's invariants; exit 1 if broken.
loadtest-check: venv
	$(BIN)/python loadtests/run_and_check.py --duration $(LOADTEST_DURATION) \
		--users $(LOADTEST_USERS) --spawn-rate $(LOADTEST_SPAWN_RATE)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
