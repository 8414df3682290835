#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine as root: install, build, start a
# private containerd, build the example images with `hybrid build`, and run a
# wasm and a Linux container through our shim.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --workspace --bins

state=${HYBRID_DEMO_STATE:-/tmp/hybrid-demo}
# Assigned, then exported: `export X=$(...)` would hide a failure of the
# command from set -e.
HYBRID_BIN_DIR=$(bash scripts/target-dir.sh debug)
export HYBRID_BIN_DIR
bash scripts/containerd.sh start "$state"
trap 'bash scripts/containerd.sh stop "$state"' EXIT
eval "$(bash scripts/containerd.sh env "$state")"

HYBRID="$HYBRID_BIN_DIR/hybrid" bash scripts/build-examples.sh

ctr_() { ctr --address "$CONTAINERD_ADDRESS" "$@"; }
echo "== images"
ctr_ images ls -q
echo "== wasm: hello-rust through io.containerd.hybrid.v2"
ctr_ run --rm --runtime io.containerd.hybrid.v2 docker.io/hybrid-examples/hello-rust:latest demo-wasm-$$ /hello.wasm from the demo
echo "== linux: busybox through io.containerd.hybrid.v2"
ctr_ run --rm --runtime io.containerd.hybrid.v2 docker.io/hybrid-examples/busybox:latest demo-linux-$$ sh -c 'echo hello from busybox on $(uname -s)'
