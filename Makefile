# ring1: make generate | test | check | bench | guests | demo
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: all generate test check lint bench clean

all: generate

generate:
	$(PYTHON) -m ring1.codegen generate

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Lint, the spec's own checks and capstone cross-checks, and generated/ being fresh.
check: lint
	ring1 spec check

lint:
	$(PYTHON) -m ruff check codegen runtime tests

bench:
	ring1 bench interp

clean:
	rm -rf build .pytest_cache .hypothesis
