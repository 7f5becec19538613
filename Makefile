# Every target sets up what it needs on its own: a fresh clone needs only `make run`
# or `make test`. The venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
# The gRPC code in pdp/v1/ is generated from proto/, never committed: regenerated
# whenever a .proto file (or the toolchain, via the install stamp) changes.
PROTOS := $(wildcard proto/pdp/v1/*.proto)
GEN    := pdp/v1/.generated
# `make run` listens here; override with `make run PORT=50052`.
PORT   ?= 50051

.PHONY: install codegen run demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

$(GEN): $(PROTOS) $(STAMP)
	rm -rf pdp/v1 && mkdir -p pdp/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto \
		--python_out=. --grpc_python_out=. \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_out=quiet:. --mypy_grpc_out=quiet:. \
		$(PROTOS)
	touch pdp/v1/__init__.py $@

install: $(STAMP) $(GEN)

codegen: $(STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

# The decision service on the example policies, with the example bindings imported
# into the embedded SQLite store ($(RUN_DB), re-synced from the file on every run).
RUN_DB ?= pdp.db
# The server on the example policies and bindings. It records the attributes too
# (audit.include), so that `pdp audit show` can re-derive why a decision was made.
run: install
	$(BIN)/pdp validate policies --schema policies/schema.yaml
	$(BIN)/pdp store import examples/bindings.yaml --replace --db sqlite:///$(RUN_DB) --policies policies
	@echo
	@echo "Starting the PDP on 127.0.0.1:$(PORT) (Ctrl-C stops it). From another terminal:"
	@echo
	@echo "  $(BIN)/python -c 'from pdp.client import PdpClient; print(PdpClient(\"127.0.0.1:$(PORT)\").check({\"type\": \"user\", \"id\": \"bob\"}, \"read\", {\"type\": \"document\", \"id\": \"42\", \"properties\": {\"tenant\": \"acme\"}, \"ancestors\": [\"folder/7\", \"folder/1\"]}))'"
	@echo
	@echo "  grpcurl -plaintext -d '{\"subject\": {\"type\": \"user\", \"id\": \"bob\"}, \"actions\": [{\"name\": \"read\"}], \"resource\": {\"type\": \"document\", \"id\": \"42\", \"properties\": {\"tenant\": \"acme\"}, \"ancestors\": [\"folder/7\"]}}' 127.0.0.1:$(PORT) pdp.v1.DecisionService/Check"
	@echo "  grpcurl -plaintext 127.0.0.1:$(PORT) pdp.v1.DecisionService/ServerInfo"
	@echo "  $(BIN)/pdp audit search --since 1h      # then: $(BIN)/pdp audit show DECISION_ID"
	@echo
	$(BIN)/pdp serve --policies policies --schema policies/schema.yaml \
		--store-url sqlite:///$(RUN_DB) --listen 127.0.0.1:$(PORT) \
		--set audit.include=subject,action,resource,context

# The offline tour: validate, run the policy tests, decide the example requests.
demo: install
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
