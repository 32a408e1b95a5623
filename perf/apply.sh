#!/usr/bin/env bash
# Benchmark of applying changes to a loaded dataplane (tests/src/bin/apply_bench.rs): builds in
# release mode, runs as root, writes perf/results/apply-<UTC date>.md and prints it.
#   perf/apply.sh            10,000 VIPs x 10 backends (a few minutes, ~5 GB of memory)
#   perf/apply.sh --quick    1,000 VIPs (under a minute; for CI)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."

cargo build --release --quiet -p xlb-tests --bin apply_bench
bench="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/apply_bench"
if [ "$(id -u)" -eq 0 ]; then
    exec "$bench" --out "$here/results" "$@"
else
    exec sudo "$bench" --out "$here/results" "$@"
fi
