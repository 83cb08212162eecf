# The two commands of the README. Both create ./.venv from this project's own files.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/digits
PY := $(VENV)/bin/python

.PHONY: demo test install install-test

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e .

install-test: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[test]'

# Train the embedded default (UCI digits, 8x8) and write sample grids for w = 0, 1, 3.
demo: install
	$(PY) -m cfg_jax.main --config=configs/digits.py --workdir=$(WORKDIR)

test: install-test
	$(PY) -m pytest -q
