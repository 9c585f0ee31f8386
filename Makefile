# The front door: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean redis-server

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	bash sample_data/demo.sh $(BIN)/sms-blaster

test: install redis-server
	$(BIN)/python -m pytest -q

# The distributed-mode tests start their own redis-server on a free port: install Debian's.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
	  else \
	    echo "the tests need redis-server: sudo apt-get install redis-server" >&2; exit 1; \
	  fi; }

lint: install
	$(BIN)/ruff format --check sms_blaster tests benchmarks
	$(BIN)/ruff check sms_blaster tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
