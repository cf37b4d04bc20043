# Node.js package `lbmkv` (bindings/node): a napi-rs addon, lbmkv.node, under a
# thin JavaScript layer (index.js, index.mjs), typed by the generated index.d.ts.
#   make node-build   npm ci (when the lock changed) and a release build of the addon
#   make node-types   regenerate bindings/node/index.d.ts (commit it)
#   make test-node    clippy; stale index.d.ts check; the node --test suite (with an
#                     `lbmkv node` process; test/readme.test.js installs the package
#                     as the README says, `npm install bindings/node` into a scratch
#                     project, and runs the README's snippets there); tsc --noEmit of
#                     examples/node/typed.ts; the sequencer example; the README's
#                     install in build/node/app used by require and import; npm pack
#                     and an install of the tarball
#   make bench-node   1,000,000 local gets from Node.js (16-byte key, 100-byte value),
#                     then replicated puts on 3 nodes from 1 and 16 Promise chains,
#                     next to Rust's ($LBMKV_BENCH_OPS puts per row; RUST_BENCH_JSON, when
#                     it exists, is the output of `lbmkv bench --json`)

NODE_DIR := $(CURDIR)/bindings/node
NODE_EXAMPLES := $(CURDIR)/examples/node
NODE_BUILD := $(CURDIR)/build/node
NODE_CLI_BIN := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/debug/lbmkv
NODE_VERSION := $(shell sed -n 's/^  "version": "\(.*\)",/\1/p' $(NODE_DIR)/package.json | head -n 1)

SURFACE_TESTS += test-node
SURFACE_BENCHES += bench-node
.PHONY: node-tools node-deps node-build node-types test-node bench-node

# Node.js >= 20.17 and npm (the @napi-rs/cli 3 requirement).
node-tools:
	@if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  apt-get update && apt-get install -y nodejs npm; fi
	@node -e "const [a, b] = process.versions.node.split('.').map(Number); \
	  if (a < 20 || (a === 20 && b < 17)) { \
	    console.error('Node.js >= 20.17 is needed, this is ' + process.versions.node); process.exit(1) }"

# npm ci only when node_modules is missing or older than the lock; the addon is
# built by node-build, not by the install hook.
node-deps: node-tools
	@cd $(NODE_DIR) && if [ ! -f node_modules/.package-lock.json ] || \
	  [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	  npm ci --ignore-scripts --no-audit --no-fund; fi

node-build: node-deps
	cd $(NODE_DIR) && node scripts/build.js

node-types: node-deps
	cd $(NODE_DIR) && node scripts/build.js --dts index.d.ts

test-node: node-deps
	$(CARGO) clippy -q -p lbmkv-node --all-targets -- -D warnings
	@mkdir -p $(NODE_BUILD)
	cd $(NODE_DIR) && node scripts/build.js --dts $(NODE_BUILD)/index.d.ts
	@diff -u $(NODE_DIR)/index.d.ts $(NODE_BUILD)/index.d.ts || { \
	  echo 'bindings/node/index.d.ts is stale: run `make node-types` and commit it' >&2; exit 1; }
	$(CARGO) build -q -p lbmkv-cli
	cd $(NODE_DIR) && LBMKV_BIN=$(NODE_CLI_BIN) timeout 300 node --test --test-timeout=60000 test/*.test.js
	@mkdir -p $(NODE_EXAMPLES)/node_modules
	ln -sfn ../../../bindings/node $(NODE_EXAMPLES)/node_modules/lbmkv
	$(NODE_DIR)/node_modules/.bin/tsc -p $(NODE_EXAMPLES)/tsconfig.json
	cd $(NODE_EXAMPLES) && timeout 120 node sequencer.mjs
	rm -rf $(NODE_BUILD)/app && mkdir -p $(NODE_BUILD)/app
	cd $(NODE_BUILD)/app && echo '{"name": "app", "private": true}' > package.json && \
	  npm install --no-audit --no-fund --silent $(NODE_DIR) && \
	  node -e "const { Node } = require('lbmkv'); \
	    Node.start({ cookie: 'readme' }).then(async (n) => { const t = await n.createTable('t'); \
	      await t.put('k', 'v'); if (t.get('k', { encoding: 'utf8' }) !== 'v') throw new Error('bad read'); \
	      await n.close(); console.log('require after npm install bindings/node: ok') })" && \
	  node --input-type=module -e "import { Node } from 'lbmkv'; \
	    const n = await Node.start({ cookie: 'readme' }); const t = await n.createTable('t'); \
	    for await (const [k] of t) throw new Error('empty table yields ' + k); await n.close(); \
	    console.log('import after npm install bindings/node: ok')"
	rm -rf $(NODE_BUILD)/pack && mkdir -p $(NODE_BUILD)/pack/app
	cd $(NODE_DIR) && npm pack --ignore-scripts --silent --pack-destination $(NODE_BUILD)/pack >/dev/null
	cd $(NODE_BUILD)/pack/app && echo '{"name": "app", "private": true}' > package.json && \
	  npm install --no-audit --no-fund --silent ../lbmkv-$(NODE_VERSION).tgz && \
	  node -e "const path = require.resolve('lbmkv'); \
	    if (!path.startsWith(process.cwd())) throw new Error('lbmkv resolved to ' + path); \
	    const { Node } = require('lbmkv'); \
	    Node.start({ cookie: 'pack' }).then(async (n) => { const t = await n.createTable('t'); \
	      await t.put('k', 'v'); if (t.get('k').toString() !== 'v') throw new Error('bad read'); \
	      await n.close(); console.log('require of the installed tarball: ok') })" && \
	  node --input-type=module -e "import { Node } from 'lbmkv'; \
	    const n = await Node.start({ cookie: 'pack' }); await n.close(); \
	    console.log('import of the installed tarball: ok')"

RUST_BENCH_JSON ?= build/bench/rust.json

bench-node: node-build
	cd $(NODE_DIR) && node bench/get.js
	$(CARGO) build --release -q -p lbmkv-cli
	cd $(NODE_DIR) && timeout -k 10 600 node bench/put.js \
	  --lbmkv $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)/release/lbmkv \
	  $$(test -f $(abspath $(RUST_BENCH_JSON)) && echo --rust-json $(abspath $(RUST_BENCH_JSON)))
