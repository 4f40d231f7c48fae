#!/usr/bin/env bash
# The benchmark: tracepipe (release build) and Rotel on the same OTLP/gRPC load, side by side.
# Not part of the test suite (performance is measured here, never asserted in tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracepipe/target}"
bash tests/install-peers.sh
cargo build --release --locked
tests/.venv/bin/python tests/bench/bench.py "$@"
