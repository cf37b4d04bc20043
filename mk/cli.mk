# The `lbmkv` command: unit tests of the node shell, multi-process cluster
# scenarios (tests/cluster/scenarios.rs), sequencer handoffs under membership
# changes (tests/cluster/handoffs.rs), ten joins of a node holding 1,000,000
# entries (tests/cluster/join.rs, release profile: the debug binary needs
# 12-17 s per join) and real netsplits cut with nftables
# (tests/cluster/partitions.rs, root and `nft` needed, run one at a time), and
# clusters across hosts in network namespaces (tests/cluster/hosts.rs, root).
#
# `make test-cli LBMKV_NO_NFT=1` leaves the netsplit scenarios out, and says so;
# without it they always run, and fail loudly when they cannot cut the network.

LBMKV_NO_NFT ?=
CLI_TEST_FEATURES := $(if $(LBMKV_NO_NFT),cluster-tests,partition-tests)

.PHONY: test-cli cli-deps
SURFACE_TESTS += test-cli

cli-deps:
ifeq ($(LBMKV_NO_NFT),)
	@command -v nft >/dev/null 2>&1 || { \
		echo "installing nftables (nft) for the netsplit scenarios"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables; }
endif

test-cli: cli-deps
	$(CARGO) clippy -q -p lbmkv-cli --features $(CLI_TEST_FEATURES) --all-targets -- -D warnings
	$(CARGO) test -p lbmkv-cli --features $(CLI_TEST_FEATURES) --bins --test cli --test cluster -- --nocapture
	$(CARGO) test -p lbmkv-cli --features $(CLI_TEST_FEATURES) --test handoffs -- --nocapture --test-threads=1
	$(CARGO) test --release -p lbmkv-cli --features $(CLI_TEST_FEATURES) --test join -- --nocapture
ifeq ($(LBMKV_NO_NFT),)
	$(CARGO) test -p lbmkv-cli --features $(CLI_TEST_FEATURES) --test partitions -- --nocapture --test-threads=1
	$(CARGO) test -p lbmkv-cli --features $(CLI_TEST_FEATURES) --test hosts -- --nocapture --test-threads=1
else
	@echo "*** test-cli: the netsplit scenarios (tests/cluster/partitions.rs) were LEFT OUT: LBMKV_NO_NFT is set ***"
endif
