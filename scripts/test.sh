#!/usr/bin/env bash
# The whole test suite: unit tests (Maglev, config, state, allocators), datapath fixtures
# through BPF_PROG_TEST_RUN, and end-to-end tests in network namespaces. Installs what is
# missing first. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

bash scripts/setup.sh
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
(cd xdp/ebpf && cargo +nightly clippy --quiet --release --target bpfel-unknown-none \
    -Z build-std=core --bins -- -D warnings)
echo "== build (daemon, CLI, XDP programs)"
cargo build --quiet
echo "== tests"
log=$(mktemp /tmp/xlb-test.XXXXXX)
trap 'rm -f "$log"' EXIT
cargo test --quiet 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the last often a doc
# test binary with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "xlb: %d passed, %d failed\n", p, f }' "$log"
