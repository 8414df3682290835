#!/usr/bin/env bash
# Runs every test of hybrid: unit tests, and integration tests against a
# private containerd 1.6 (started by the tests themselves), runc and wasmtime.
# On a fresh Debian 12 machine as root: installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# The integration tests drive the built binaries (shim, hybrid) through containerd.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads=2
