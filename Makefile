# One command runs the demo, one runs the tests; both create the virtual environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# A local CPU wheel on our machines; an unpinned torch would pull a multi-GB CUDA build.
# Users elsewhere may override: make test TORCH_SPEC='torch'
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# llama.cpp's Python binding, the real client of the GGUF tests: a source package that builds llama.cpp
# with cmake (several minutes on 2 cores, once; pip caches the built wheel). CPU only, no examples.
LLAMA_CPP_SPEC ?= llama-cpp-python==0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp

.PHONY: install llama-cpp browser test test-fast demo demo-full clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev,service,ray]'
	touch $(STAMP)

install: $(STAMP)

$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
	  $(BIN)/python -m pip install --quiet "$(LLAMA_CPP_SPEC)"
	touch $(LLAMA_STAMP)

llama-cpp: $(LLAMA_STAMP)

## Headless Chromium for the report-rendering test: Debian packages, installed where we may (root + apt).
## Elsewhere that one test is skipped (and says so).
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (Debian packages) for the report test"; \
	    ($(APT) install chromium chromium-driver || ($(APT) update && $(APT) install chromium chromium-driver)) >/dev/null; \
	  else echo "chromium not found: the report rendering test will be skipped"; fi; }

## Full suite: tiny-model unit tests plus the slow end-to-end tests on the real default model.
test: install llama-cpp browser
	$(BIN)/python -m pytest -q

## Unit tests on tiny random models only (about 13 minutes on 2 cores, measured 2026-12-07; the full suite 34).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## The main job: `lmedit prune` of the default model for few-shot addition (attribution-ordered search for the
## largest removal of neurons, key/value groups and layers that keeps 95% of validation accuracy, shrink, LoRA
## recovery, held-out test numbers and the generalisation table), then rebuild the checkpoint from the base
## and check that it reloads with plain transformers, then its size and CPU speed against the base.
## A second run reuses the finished steps.
demo: install
	$(BIN)/lmedit models pull smollm2-135m
	$(BIN)/lmedit prune --out checkpoints/prune
	$(BIN)/lmedit verify checkpoints/prune/checkpoint
	$(BIN)/python bench/bench_prune.py checkpoints/prune

## The demo with the standard pruners' searches beside attribution (the prune recipe: random,
## magnitude, Wanda, ShortGPT block influence; each adds its own search, recovery and evaluation).
demo-full: install
	$(BIN)/lmedit models pull smollm2-135m
	$(BIN)/lmedit run recipes/prune.yaml
	$(BIN)/lmedit verify checkpoints/prune/checkpoint
	$(BIN)/python bench/bench_prune.py checkpoints/prune --plot checkpoints/prune/curves.png

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
