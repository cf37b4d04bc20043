# lbmkv: `make demo` runs the main job, `make test` runs every test (it installs
# what it needs first), `make bench` measures, `make install PREFIX=...` installs
# the C library, header and pkg-config file.

CARGO ?= cargo
PREFIX ?= /usr/local
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo test bench install lint test-rust soak fuzz
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
	$(CARGO) test --release -q -p lbmkv --test simulation
	timeout 600 $(CARGO) run -q -p lbmkv --example sequencer
	timeout 600 $(CARGO) run -q --release -p lbmkv-cli -- demo > /dev/null
	./target/release/lbmkv bench --json --entries 2000 --ops 200 --gets 10000 2>/dev/null \
	  | python3 -c "import json, sys; ids = {r['id'] for r in json.load(sys.stdin)['results']}; \
	    missing = {'local_get', 'write', 'hot_key', 'memory', 'join', 'join_process', \
	      'heal', 'scale_write', 'scale_join'} - ids; \
	    sys.exit('lbmkv bench --json lacks ' + str(missing) if missing else 0)"

# `make soak SEEDS=N`: N fresh seeds of the cluster simulation, one summary line
# (a failing seed prints its replay command and the history that shows it).
SEEDS ?= 500
soak:
	LBMKV_SIM_SOAK=$(SEEDS) $(CARGO) test --release -q -p lbmkv --test simulation soak -- --ignored --nocapture

# `make fuzz SECONDS=N`: each wire fuzz test (frame decoding, handshake,
# messages from an authenticated peer) runs N seconds.
SECONDS ?= 60
fuzz:
	LBMKV_FUZZ_SECONDS=$(SECONDS) $(CARGO) test --release -q -p lbmkv --test wire_fuzz -- --nocapture

# Each surface adds its own targets (test-c, test-python, test-node, test-cli, ...).
include mk/*.mk

test: lint test-rust $(SURFACE_TESTS)

# The scenarios of the specification (lbmkv bench, its figures also kept in
# build/bench/rust.json), then local reads and replicated puts from every
# language (compared with Rust's puts of that file), then the engine's
# micro-benchmarks. `make bench BENCH_ARGS=--quick LBMKV_BENCH_OPS=2000` is
# the short run.
BENCH_ARGS ?=
bench: build
	mkdir -p build/bench
	./target/release/lbmkv bench --json-out build/bench/rust.json $(BENCH_ARGS)
	$(MAKE) --no-print-directory $(SURFACE_BENCHES)
	$(CARGO) bench -p lbmkv --bench local
