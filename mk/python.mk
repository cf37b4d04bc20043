# Python package `lbmkv` (bindings/python/): an abi3 wheel (CPython >= 3.9)
# built with maturin.
#   make python-wheel   build the wheel into build/wheels-python and install it
#                       into the virtual environment build/venv-python
#   make test-python    the wheel (tagged manylinux and confirmed so by
#                       `auditwheel show`), then mypy.stubtest, the pytest suite
#                       and the Python sequencer example
#   make bench-python   local get calls per second from Python, then replicated
#                       puts on 3 nodes from 1 and 16 threads and 1 and 16 asyncio
#                       tasks, next to Rust's ($LBMKV_BENCH_OPS puts per row;
#                       RUST_BENCH_JSON, when it exists, is the output of
#                       `lbmkv bench --json`)

PY_PYTHON ?= python3
PY_VENV := $(CURDIR)/build/venv-python
PY_BIN := $(PY_VENV)/bin
PY_WHEELS := $(CURDIR)/build/wheels-python
PY_TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PY_TOOLS := "maturin>=1.16,<2" "pytest>=8" "mypy>=1.10"
# Upper bounds so that a hang fails the run instead of stalling it.
PY_TIMEOUT := timeout -k 10

SURFACE_TESTS += test-python
SURFACE_BENCHES += bench-python
.PHONY: python-venv python-wheel test-python bench-python

# The virtual environment with maturin, pytest and mypy from PyPI; python3-venv
# from Debian when the interpreter lacks it.
$(PY_BIN)/.tools:
	@$(PY_PYTHON) -c 'import venv, ensurepip' 2>/dev/null || \
	  { apt-get update && apt-get install -y python3-venv; }
	$(PY_PYTHON) -m venv $(PY_VENV)
	$(PY_BIN)/python -m pip install -q --upgrade pip
	$(PY_BIN)/python -m pip install -q $(PY_TOOLS)
	@touch $@

python-venv: $(PY_BIN)/.tools

python-wheel: python-venv
	rm -rf $(PY_WHEELS)
	cd bindings/python && CARGO_TARGET_DIR=$(PY_TARGET) $(PY_BIN)/maturin build --release \
	  --quiet -o $(PY_WHEELS)
	$(PY_BIN)/python -m pip install -q --force-reinstall --no-deps $(PY_WHEELS)/lbmkv-*.whl

# Checks run from build/ so that `import lbmkv` finds the installed wheel only.
test-python: python-wheel
	@$(PY_BIN)/python -c 'import auditwheel' 2>/dev/null || $(PY_BIN)/python -m pip install -q "auditwheel>=6"
	@wheel=$$(ls $(PY_WHEELS)/lbmkv-*.whl); case "$$wheel" in *manylinux_*) ;; \
	  *) echo "$$wheel is not tagged manylinux" >&2; exit 1;; esac; \
	$(PY_BIN)/auditwheel show "$$wheel" | tr '\n' ' ' | grep -q 'platform tag: "manylinux_' || \
	  { $(PY_BIN)/auditwheel show "$$wheel" >&2; echo "auditwheel does not accept $$wheel as manylinux" >&2; exit 1; }; \
	echo "auditwheel: $$(basename $$wheel) is manylinux"
	$(CARGO) build -q -p lbmkv-cli
	cd build && $(PY_TIMEOUT) 120 $(PY_BIN)/python -m mypy.stubtest lbmkv
	cd build && $(PY_TIMEOUT) 120 $(PY_BIN)/python -m mypy --strict \
	  $(CURDIR)/examples/python/sequencer.py $(CURDIR)/bindings/python/bench/get.py
	LBMKV_CLI=$(PY_TARGET)/debug/lbmkv $(PY_TIMEOUT) 300 $(PY_BIN)/python -m pytest -q \
	  -p no:cacheprovider bindings/python/tests
	$(PY_TIMEOUT) 60 $(PY_BIN)/python examples/python/sequencer.py

RUST_BENCH_JSON ?= build/bench/rust.json

bench-python: python-wheel
	$(PY_TIMEOUT) 300 $(PY_BIN)/python bindings/python/bench/get.py
	$(CARGO) build --release -q -p lbmkv-cli
	$(PY_TIMEOUT) 600 $(PY_BIN)/python bindings/python/bench/put.py --lbmkv $(PY_TARGET)/release/lbmkv \
	  $$(test -f $(abspath $(RUST_BENCH_JSON)) && echo --rust-json $(abspath $(RUST_BENCH_JSON)))
