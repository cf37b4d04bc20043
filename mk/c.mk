# C ABI (ffi/): liblbmkv.so and liblbmkv.a, include/lbmkv.h, lbmkv.pc.
#   make header              regenerate include/lbmkv.h with cbindgen
#   make install PREFIX=...  install the library, header and lbmkv.pc:
#                            lib/liblbmkv.so.X.Y.Z (soname liblbmkv.so.X),
#                            links liblbmkv.so.X and liblbmkv.so to it,
#                            lib/liblbmkv.a, include/lbmkv.h, lib/pkgconfig/lbmkv.pc
#   make test-c              header check, then the C tests against an install in
#                            a temporary prefix: install layout and soname
#                            (readelf), pkg-config --static, shared, static,
#                            valgrind, ASan; and the C sequencer example
#   make bench-c             cost of a local lbmkv_table_get from C, then replicated
#                            puts on 3 nodes from 1 and 16 pthreads, next to Rust's
#                            ($LBMKV_BENCH_OPS puts per row; RUST_BENCH_JSON, when it
#                            exists, is the output of `lbmkv bench --json`)

C_CBINDGEN_VERSION := 0.29.4
C_CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
C_CBINDGEN := PATH="$(C_CARGO_BIN):$$PATH" cbindgen
C_TARGET := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
C_RELEASE := $(C_TARGET)/release
C_BUILD := $(CURDIR)/build/c
C_PREFIX := $(C_BUILD)/prefix
C_BIN := $(C_BUILD)/bin
C_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' $(CURDIR)/Cargo.toml | head -n 1)
C_MAJOR := $(firstword $(subst ., ,$(C_VERSION)))
C_SONAME := liblbmkv.so.$(C_MAJOR)
C_PKG := PKG_CONFIG_PATH=$(C_PREFIX)/lib/pkgconfig pkg-config
C_WARN := -std=c99 -Wall -Wextra -Werror -pedantic
C_VALGRIND := valgrind -q --leak-check=full \
  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \
  --suppressions=$(CURDIR)/tests/c/valgrind.supp

SURFACE_TESTS += test-c
SURFACE_BENCHES += bench-c
.PHONY: c-tools c-lib c-programs header check-header check-install test-c bench-c

# cbindgen (pinned), compilers, valgrind and pkg-config, when missing.
c-tools:
	@if ! $(C_CBINDGEN) --version 2>/dev/null | grep -qx 'cbindgen $(C_CBINDGEN_VERSION)'; then \
	  $(CARGO) install cbindgen --locked --version $(C_CBINDGEN_VERSION); fi
	@missing=; for p in gcc g++ valgrind pkg-config; do \
	  command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update && apt-get install -y $$missing; fi

c-lib:
	$(CARGO) build --release -p lbmkv-ffi

header: c-tools
	$(C_CBINDGEN) -q --config ffi/cbindgen.toml --crate lbmkv-ffi --output include/lbmkv.h ffi

check-header: c-tools
	@mkdir -p $(C_BUILD)
	$(C_CBINDGEN) -q --config ffi/cbindgen.toml --crate lbmkv-ffi --output $(C_BUILD)/lbmkv.h ffi
	@diff -u include/lbmkv.h $(C_BUILD)/lbmkv.h || { \
	  echo 'include/lbmkv.h is stale: run `make header` and commit it' >&2; exit 1; }

install: c-lib
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 0755 $(C_RELEASE)/liblbmkv.so $(DESTDIR)$(PREFIX)/lib/liblbmkv.so.$(C_VERSION)
	ln -sfn liblbmkv.so.$(C_VERSION) $(DESTDIR)$(PREFIX)/lib/$(C_SONAME)
	ln -sfn $(C_SONAME) $(DESTDIR)$(PREFIX)/lib/liblbmkv.so
	install -m 0644 $(C_RELEASE)/liblbmkv.a $(DESTDIR)$(PREFIX)/lib/liblbmkv.a
	install -m 0644 include/lbmkv.h $(DESTDIR)$(PREFIX)/include/lbmkv.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(C_VERSION)|g' lbmkv.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/lbmkv.pc

# Installs into $(C_PREFIX) and builds the C programs from there with pkg-config.
c-programs: c-tools
	rm -rf $(C_PREFIX) $(C_BIN)
	$(MAKE) --no-print-directory install PREFIX=$(C_PREFIX)
	mkdir -p $(C_BIN)
	gcc $(C_WARN) $$($(C_PKG) --cflags lbmkv) tests/c/header_smoke.c \
	  $$($(C_PKG) --libs lbmkv) -o $(C_BIN)/smoke_c
	g++ -std=c++11 -Wall -Wextra -Werror -pedantic -x c++ $$($(C_PKG) --cflags lbmkv) \
	  tests/c/header_smoke.c -x none $$($(C_PKG) --libs lbmkv) -o $(C_BIN)/smoke_cxx
	gcc $(C_WARN) -g -O1 $$($(C_PKG) --cflags lbmkv) tests/c/test_lbmkv.c \
	  $$($(C_PKG) --libs lbmkv) -Wl,-rpath,$$($(C_PKG) --variable=libdir lbmkv) -lpthread \
	  -o $(C_BIN)/test_shared
	gcc $(C_WARN) -g -O1 $$($(C_PKG) --cflags lbmkv) tests/c/test_lbmkv.c \
	  $$($(C_PKG) --variable=libdir lbmkv)/liblbmkv.a $$($(C_PKG) --variable=static_libs lbmkv) \
	  -o $(C_BIN)/test_static
	gcc $(C_WARN) -g -O1 -fsanitize=address -fno-omit-frame-pointer $$($(C_PKG) --cflags lbmkv) \
	  tests/c/test_lbmkv.c \
	  $$($(C_PKG) --variable=libdir lbmkv)/liblbmkv.a $$($(C_PKG) --variable=static_libs lbmkv) \
	  -o $(C_BIN)/test_asan
	gcc $(C_WARN) -O2 $$($(C_PKG) --cflags lbmkv) examples/c/sequencer.c \
	  $$($(C_PKG) --libs lbmkv) -Wl,-rpath,$$($(C_PKG) --variable=libdir lbmkv) -lpthread \
	  -o $(C_BIN)/sequencer
	gcc $(C_WARN) -O2 $$($(C_PKG) --cflags lbmkv) tests/c/bench_get.c \
	  $$($(C_PKG) --libs lbmkv) -Wl,-rpath,$$($(C_PKG) --variable=libdir lbmkv) \
	  -o $(C_BIN)/bench_get
	gcc $(C_WARN) -O2 $$($(C_PKG) --cflags lbmkv) tests/c/bench_put.c \
	  $$($(C_PKG) --libs lbmkv) -Wl,-rpath,$$($(C_PKG) --variable=libdir lbmkv) -lpthread \
	  -o $(C_BIN)/bench_put

# The installed files, the soname of the library, what the programs linked
# to it load, and the static link line of pkg-config.
check-install: c-programs
	@set -e; lib=$(C_PREFIX)/lib; \
	test -f $$lib/liblbmkv.so.$(C_VERSION) -a ! -L $$lib/liblbmkv.so.$(C_VERSION); \
	test "$$(readlink $$lib/$(C_SONAME))" = liblbmkv.so.$(C_VERSION); \
	test "$$(readlink $$lib/liblbmkv.so)" = $(C_SONAME); \
	test -f $$lib/liblbmkv.a -a -f $(C_PREFIX)/include/lbmkv.h -a -f $$lib/pkgconfig/lbmkv.pc; \
	readelf -d $$lib/liblbmkv.so.$(C_VERSION) | grep -q 'Library soname: \[$(C_SONAME)\]' || \
	  { echo 'liblbmkv.so has no soname $(C_SONAME)' >&2; readelf -d $$lib/liblbmkv.so.$(C_VERSION) >&2; exit 1; }; \
	readelf -d $(C_BIN)/test_shared | grep -q 'Shared library: \[$(C_SONAME)\]' || \
	  { echo 'test_shared does not need $(C_SONAME)' >&2; exit 1; }; \
	static=$$($(C_PKG) --static --libs lbmkv); \
	for l in -lpthread -ldl -lm -lrt -lutil -lgcc_s; do \
	  case " $$static " in *" $$l "*) ;; *) echo "pkg-config --static lacks $$l: $$static" >&2; exit 1;; esac; done; \
	gcc $(C_WARN) $$($(C_PKG) --cflags lbmkv) tests/c/header_smoke.c \
	  $$($(C_PKG) --static --libs-only-L lbmkv) -Wl,-Bstatic -llbmkv -Wl,-Bdynamic \
	  $$($(C_PKG) --static --libs-only-l lbmkv | sed 's/-llbmkv//') -o $(C_BIN)/smoke_static; \
	if readelf -d $(C_BIN)/smoke_static | grep -q 'liblbmkv'; then \
	  echo 'smoke_static, linked with pkg-config --static, loads liblbmkv.so' >&2; exit 1; fi; \
	$(C_BIN)/smoke_static >/dev/null; \
	echo "install layout, soname $(C_SONAME) and pkg-config --static: ok"

test-c: check-header c-programs check-install
	$(CARGO) test -q -p lbmkv-ffi
	rm -rf $(C_BUILD)/certs
	$(CARGO) run -q -p lbmkv-cli -- certs --out $(C_BUILD)/certs --names c-tls-a,c-tls-b
	LD_LIBRARY_PATH=$(C_PREFIX)/lib $(C_BIN)/smoke_c
	LBMKV_TEST_CERTS=$(C_BUILD)/certs $(C_BIN)/test_shared
	LBMKV_TEST_CERTS=$(C_BUILD)/certs $(C_BIN)/test_static
	LBMKV_TEST_CERTS=$(C_BUILD)/certs ASAN_OPTIONS=detect_leaks=1 $(C_BIN)/test_asan
	LBMKV_TEST_CERTS=$(C_BUILD)/certs $(C_VALGRIND) $(C_BIN)/test_shared
	$(C_BIN)/sequencer

RUST_BENCH_JSON ?= build/bench/rust.json

bench-c: c-programs
	$(C_BIN)/bench_get
	$(CARGO) build --release -q -p lbmkv-cli
	timeout -k 10 600 $(C_BIN)/bench_put --lbmkv $(C_RELEASE)/lbmkv \
	  $$(test -f $(abspath $(RUST_BENCH_JSON)) && echo --rust-json $(abspath $(RUST_BENCH_JSON)))
