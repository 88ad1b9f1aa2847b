# One command runs the demo, one runs the tests; both create the virtual environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A local CPU wheel on our machines; an unpinned torch would pull a multi-GB CUDA build.
# Users elsewhere may override: make test TORCH_SPEC='torch'
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test test-fast demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Full suite: tiny-model unit tests plus the slow end-to-end tests on the real default model.
test: install
	$(BIN)/python -m pytest -q

## Unit tests on tiny random models only (about a minute).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## Pull the default model, zero three heads, save a checkpoint, reload it with plain transformers,
## then evaluate it against its base (before/after table with intervals).
demo: install
	$(BIN)/lmedit models pull smollm2-135m
	$(BIN)/lmedit edit --model smollm2-135m --zero-heads 3.1,5.2,17.4 --scale-neurons 20.771=0.5 \
		--out checkpoints/demo --force
	@echo "--- checkpoints/demo/edit_manifest.json"
	@cat checkpoints/demo/edit_manifest.json
	$(BIN)/lmedit evaluate --model checkpoints/demo --quiet

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
