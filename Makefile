# make demo: install, then run every stage on the embedded digits dataset.
# make test: install, check the import contracts (import-linter), then run the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision lie on this machine's disk for pip; override elsewhere if needed
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.clt-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	CLT=$(BIN)/clt bash scripts/demo.sh

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check clt tests bench

clean:
	rm -rf artifacts/objects artifacts/tmp artifacts/refs artifacts/locks
