# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv with the system python3 if it is missing and install the pinned
# dependencies (constraints.txt pins torch to the local CPU wheel).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-kernels app venv clean

venv: $(STAMP)

# uv installs the same pins as pip in 47 s instead of 112 s (2-core AMD EPYC, empty caches,
# bytecode compiled by both). It does not read pip's configuration, so the find-links pip has
# (where a machine keeps local wheels, such as the CPU build of torch) are handed on. If uv
# cannot be had or fails, pip does the install.
FIND_LINKS = $(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
PIP_INSTALL = $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt
UV_INSTALL = $(BIN)/python -m uv pip install -q --python $(BIN)/python $(addprefix --find-links ,$(FIND_LINKS)) \
	-c constraints.txt --compile-bytecode

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(PIP_INSTALL) uv && $(UV_INSTALL) -e '.[dev]'; then echo "installed with uv"; \
	else echo "uv failed: installing with pip"; $(PIP_INSTALL) -e '.[dev]'; fi
	@touch $@

demo: $(STAMP)
	$(BIN)/yolov3 demo --config configs/demo.yaml

# The web page on http://127.0.0.1:7860 with the demo checkpoint (or WEIGHTS=path/to.ckpt).
app: $(STAMP)
	$(BIN)/yolov3 app $(if $(WEIGHTS),--weights $(WEIGHTS),)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Everything that needs no training, no server and no second process (tests/conftest.py
# marks the rest slow): under a minute, for the edit-test loop. `make test` is the full suite.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The trained-fixture tests under several CPU float-kernel settings (and SEEDS="1 2 ..." for
# other fixture seeds): proof that they hold on any processor. Not part of `make test`.
test-kernels: $(STAMP)
	PY=$(BIN)/python SEEDS="$(SEEDS)" bash scripts/test_kernels.sh

clean:
	rm -rf runs/demo data/synthetic
