# Every target sets up what it needs on its own: a fresh clone needs only `make run`
# or `make test`. The venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

install: $(STAMP)

run: install
	$(BIN)/pdp validate policies
	$(BIN)/pdp test policies
	@echo
	@echo "Example decisions (pdp check, see examples/):"
	@for f in examples/requests/*.json; do \
		echo "--- $$f"; \
		$(BIN)/pdp check --policies policies --bindings examples/bindings.yaml --request $$f; \
		test $$? -le 3 || exit 1; \
	done

lint: install
	$(BIN)/ruff check pdp tests benchmarks
	$(BIN)/ruff format --check pdp tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format pdp tests benchmarks
	$(BIN)/ruff check --fix pdp tests benchmarks

test: lint
	$(BIN)/pytest -q
	$(BIN)/pdp test policies

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
