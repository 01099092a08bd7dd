# Two entry points for a fresh clone: `make demo` (the main job) and `make test`. Both install into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch is installed first and pinned, so that pip takes the CPU build on local disk instead of
# resolving a multi-GB CUDA build (GPU users: see README).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[sim,eval,test]"
	touch $(STAMP)

demo: install
	$(PY) -m modeling_mosaic.catalog.cli build --config demo --out data/demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results data/tiny data/demo data/paper
