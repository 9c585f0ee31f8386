# The front door: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean test-deps soak soak-distributed

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	bash sample_data/demo.sh $(BIN)/sms-blaster

# Four test processes: most tests wait on real processes and real time, so four overlap well on
# two cores. Every test has its own temporary directory, free ports and servers.
test: install test-deps
	$(BIN)/python -m pytest -q -n 4

# The tests start their own redis-server (distributed mode), nginx and haproxy (the example configs
# in docs/) on free ports, trace a send with strace (the journal's fsync before each request) and
# load `report --html`'s page in headless chromium: install Debian's when missing, and stop any
# service the packages start.
TEST_PROGRAMS := redis-server nginx haproxy strace chromium
test-deps:
	@missing=""; for p in $(TEST_PROGRAMS); do \
	  command -v $$p >/dev/null 2>&1 || [ -x /usr/sbin/$$p ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing && \
	    { service nginx stop >/dev/null 2>&1; service haproxy stop >/dev/null 2>&1; true; }; \
	  else \
	    echo "the tests need$$missing: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

lint: install
	$(BIN)/ruff format --check sms_blaster tests benchmarks
	$(BIN)/ruff check sms_blaster tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks.run

# Randomized campaigns with faults and stops, checked against the invariants (tests/soak).
SOAK_SCHEDULES ?= 300
SOAK_SEED_START ?= 0
SOAK_ARGS ?=
soak: install
	$(BIN)/python -m tests.soak --schedules $(SOAK_SCHEDULES) --seed-start $(SOAK_SEED_START) --jobs 2 $(SOAK_ARGS)

# The same for `enqueue` into a restartable redis-server and rounds of workers (50 schedules unless
# SOAK_SCHEDULES is given; one at a time: each runs up to four processes and Redis).
DISTRIBUTED_SCHEDULES := $(if $(filter file,$(origin SOAK_SCHEDULES)),50,$(SOAK_SCHEDULES))
soak-distributed: install test-deps
	$(BIN)/python -m tests.soak --distributed --schedules $(DISTRIBUTED_SCHEDULES) \
	  --seed-start $(SOAK_SEED_START) --jobs 1 $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
