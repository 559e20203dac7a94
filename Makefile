# The two commands of the README: `make bench` (the microbenchmark tour) and `make test`.
#
# Which python runs them:
#   1. .venv/bin/python when the local virtual environment is set up;
#   2. otherwise a python3 that already has torch, triton, scipy and pytest (the GPU box, which has
#      no network);
#   3. otherwise a fresh .venv is made and filled from requirements/ci.txt (torch==2.13.0 pinned: a
#      plain `pip install torch` would pull a multi-GB CUDA build).
VENV      := .venv
STAMP     := $(VENV)/.installed
SYS_PY    ?= python3
HAVE_SYS  := $(shell $(SYS_PY) -c "import torch, triton, scipy, pytest" >/dev/null 2>&1 && echo yes)

ifeq ($(wildcard $(STAMP)),)
  ifeq ($(HAVE_SYS),yes)
    PYTHON := $(SYS_PY)
    SETUP  :=
  else
    PYTHON := $(VENV)/bin/python
    SETUP  := $(STAMP)
  endif
else
  PYTHON := $(VENV)/bin/python
  SETUP  := $(STAMP)
endif

PYTEST_ARGS ?=
BENCH_ARGS  ?=
NOTEBOOK_ARGS ?=

.PHONY: test bench notebooks setup clean-venv

setup: $(SETUP)

$(STAMP): requirements/ci.txt
	$(SYS_PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -r requirements/ci.txt
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: $(SETUP)
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m pytest -q tests $(PYTEST_ARGS)

bench: $(SETUP)
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m benchmarks $(BENCH_ARGS)

# JupyterLab on notebooks/ (installed into .venv from requirements/notebooks.txt on first use), with
# Triton's interpreter switched on where torch sees no CUDA GPU (and --allow-root when run as root, as in
# containers). E.g. NOTEBOOK_ARGS="--no-browser --port 8890".
notebooks: $(SETUP)
	@$(PYTHON) -c "import jupyterlab" 2>/dev/null || { \
	  if [ "$(PYTHON)" = "$(VENV)/bin/python" ]; then \
	    $(PYTHON) -m pip install --disable-pip-version-check -q -r requirements/notebooks.txt; \
	  else echo "JupyterLab is missing from $(PYTHON): $(PYTHON) -m pip install jupyterlab"; exit 1; fi; }
	@if $(PYTHON) -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then \
	  echo "No CUDA GPU: the notebooks run under Triton's CPU interpreter (TRITON_INTERPRET=1), small sizes"; \
	  export TRITON_INTERPRET=1; fi; \
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) -m jupyter lab --notebook-dir=notebooks \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(NOTEBOOK_ARGS)

clean-venv:
	rm -rf $(VENV)
