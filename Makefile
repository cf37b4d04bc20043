# lbmkv: `make demo` runs the main job, `make test` runs every test (it installs
# what it needs first), `make bench` measures, `make install PREFIX=...` installs
# the C library, header and pkg-config file.

CARGO ?= cargo
PREFIX ?= /usr/local
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo test bench install lint test-rust
all: build

build:
	$(CARGO) build --release -p lbmkv-cli -p lbmkv-ffi

demo:
	$(CARGO) run --release -q -p lbmkv-cli -- demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --exclude lbmkv-python --exclude lbmkv-node --all-targets -- -D warnings

test-rust:
	$(CARGO) test -p lbmkv -p lbmkv-cli
	$(CARGO) run -q -p lbmkv --example sequencer
	$(CARGO) run -q --release -p lbmkv-cli -- demo > /dev/null

# Each surface adds its own targets (test-c, test-python, test-node, test-cli, ...).
include mk/*.mk

test: lint test-rust $(SURFACE_TESTS)

bench: $(SURFACE_BENCHES)
	$(CARGO) bench -p lbmkv --bench local
