# Two entry points for a fresh clone: `make demo` (the main job) and `make test`. Both install into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# olah (a read-only Hugging Face Hub mirror) runs from its own venv: the Hub pull tests serve checkpoints with it.
OLAH_VENV := .venv-olah
OLAH := $(OLAH_VENV)/bin/olah-cli

.PHONY: install demo test clean

install: $(STAMP)

# torch is installed first and pinned, so that pip takes the CPU build on local disk instead of
# resolving a multi-GB CUDA build (GPU users: see README).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[sim,diffstar,eval,qp,test]"
	touch $(STAMP)

$(OLAH):
	$(PYTHON) -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/pip install -q olah==0.5.4

# The main job: build the demo catalog (data/demo), train the demo model, evaluate it into results/demo.
demo: install
	$(PY) train_mosaic.py --config configs/demo.yaml --overwrite_output_dir true
	$(PY) -m modeling_mosaic.evaluation.cli --model results/demo/model --data data/demo --out results/demo

test: install $(OLAH)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(OLAH_VENV) results data/tiny data/demo data/paper
