# The first command on a fresh machine: `make train` or `make test` (each creates .venv when missing).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install train test lint bench clean-cache

install: $(STAMP)

# torch first, pinned: an unpinned torch pulled in by another package would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m ambig.train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ambig tests scripts

bench: $(STAMP)
	$(BIN)/python -m ambig.bench $(ARGS)

clean-cache:
	rm -rf .cache
