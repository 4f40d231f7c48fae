#!/usr/bin/env bash
# Runs every test on a fresh machine: installs the peers (tests/install-peers.sh), builds,
# runs the Rust unit and property tests, then the end-to-end suite against real peers.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tracepipe/target}"
export TRACEPIPE_BIN="$CARGO_TARGET_DIR/debug/tracepipe"
bash tests/install-peers.sh
# README's first command builds without the default `archive` feature: build that binary too,
# kept as tracepipe-lean (tests/e2e/test_lean_build.py runs it), before the full one.
cargo build --locked --no-default-features --bin tracepipe
cp "$CARGO_TARGET_DIR/debug/tracepipe" "$CARGO_TARGET_DIR/debug/tracepipe-lean"
export TRACEPIPE_LEAN_BIN="$CARGO_TARGET_DIR/debug/tracepipe-lean"
# One build for everything: binary, tests and examples in one invocation share one feature set
# (dev-dependencies unify features), the same `cargo test --workspace` uses, so the dependency
# graph (DataFusion included) is compiled once, not once per feature set.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked
tests/.venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e "$@"
