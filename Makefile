# The entry points people type. `make run` and `make test` set everything up
# themselves: the virtualenv in .venv, the dependencies, the generated code.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := shared/gen
THIRD_PARTY := build/third_party
PROTOS := $(shell find protos -name '*.proto' | sort)
STAMP_VENV := $(VENV)/.installed
STAMP_GEN := $(GEN)/.generated

.PHONY: all venv proto lint format migrate certs api-key run run-tasks run-verification run-queue run-gateway worker test test-unit test-integration test-faults bench check-config clean

all: proto

## venv: the virtualenv with runtime and development dependencies
venv: $(STAMP_VENV)

$(STAMP_VENV): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@# Generated stubs import each other as `verifier.<service>.v1`: put their root on the path.
	@echo "$(CURDIR)/$(GEN)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/verifier_generated.pth"
	@touch $@

## proto: generate Python code and typed stubs from protos/ (the only code generation step)
proto: $(STAMP_GEN)

$(STAMP_GEN): $(STAMP_VENV) $(PROTOS)
	@rm -rf $(GEN) $(THIRD_PARTY)
	@mkdir -p $(GEN) $(THIRD_PARTY)/google/api
	@# google/api protos come from the installed googleapis-common-protos package, for buf.
	@SITE=$$($(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))'); \
	  cp $$SITE/google/api/{annotations,http,field_behavior}.proto $(THIRD_PARTY)/google/api/; \
	  mkdir -p $(THIRD_PARTY)/google/rpc; cp $$SITE/google/rpc/status.proto $(THIRD_PARTY)/google/rpc/; \
	  $(PY) -m grpc_tools.protoc -Iprotos -I$$SITE \
	    --python_out=$(GEN) --grpc_python_out=$(GEN) \
	    --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=$(GEN) \
	    --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=$(GEN) \
	    --include_source_info --descriptor_set_out=$(GEN)/descriptors.binpb \
	    $(PROTOS)
	@find $(GEN)/verifier -type d -exec touch {}/__init__.py \;
	@touch $@

## lint: buf lint, ruff and mypy
lint: proto
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/buf format -w
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## migrate: apply the database migrations (DATABASE_URL, or the embedded SQLite file)
migrate: proto
	$(PY) -m services.tasks migrate

## certs: a dev CA and a certificate per service under TLS_DIR (default data/certs)
certs: proto
	$(PY) -m shared.tls $(ARGS)

## api-key: manage API keys, e.g. make api-key ARGS="create --name ci --scopes tasks.submit"
api-key: proto
	$(PY) -m services.tasks api-key $(or $(ARGS),--help)

## run: the whole stack in the foreground on embedded defaults (or what the environment configures)
run: proto
	$(PY) -m services.stack

run-tasks: proto
	$(PY) -m services.tasks
run-verification: proto
	$(PY) -m services.verification serve
run-queue: proto
	$(PY) -m services.queue
run-gateway: proto
	$(PY) -m services.gateway

## worker: one queue worker process
worker: proto
	$(PY) -m services.queue.worker

## check-config: print the effective configuration, secrets masked
check-config: proto
	$(PY) -m services.stack --check-config

## test: the whole test suite (unit, integration, end-to-end, operator)
test: proto
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: proto
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

## test-faults: the fault suite (real servers restarted, killed, stopped), one line per fault
test-faults: proto
	$(PY) -m pytest tests/fault -p no:cacheprovider $(PYTEST_ARGS)

## bench: every benchmark, figures printed
bench: proto
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(GEN) build .pytest_cache .mypy_cache .ruff_cache
