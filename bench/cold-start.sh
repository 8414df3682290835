#!/usr/bin/env bash
# Cold start, side by side in one run: `ctr run --rm` of the wasm hello
# through hybrid (A) against busybox `echo` through runc (B), alternating
# A B A B so that drift on the machine hits both alike. Prints the medians
# and the ratio A/B. With RUNWASI_SHIM=/path/to/containerd-shim-wasmtime-v1,
# the same hello also runs through runwasi's shim (C).
#
# Usage: bench/cold-start.sh [ROUNDS]   (default 20; root; builds if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rounds=${1:-20}

bash scripts/install-deps.sh
# A release build, as operators deploy it (runc and runwasi are measured as
# release builds too); HYBRID_BENCH_PROFILE=debug measures the debug build.
profile=${HYBRID_BENCH_PROFILE:-release}
case $profile in
  release) cargo build --release --quiet -p containerd-shim-hybrid-v2 -p hybrid-cli ;;
  debug) cargo build --workspace --bins --quiet ;;
  *) echo "HYBRID_BENCH_PROFILE must be release or debug" >&2; exit 1 ;;
esac
state=$(mktemp -d /tmp/hybrid-bench.XXXXXX)
export HYBRID_BIN_DIR="$root/target/$profile"
if [ -n "${RUNWASI_SHIM:-}" ]; then
  # containerd finds io.containerd.wasmtime.v1 as containerd-shim-wasmtime-v1 on PATH.
  export HYBRID_BIN_DIR="$HYBRID_BIN_DIR:$(dirname "$RUNWASI_SHIM")"
fi
bash scripts/containerd.sh start "$state" >/dev/null
trap 'bash scripts/containerd.sh stop "$state" >/dev/null; rm -rf "$state"' EXIT
eval "$(bash scripts/containerd.sh env "$state")"
HYBRID="$root/target/$profile/hybrid" bash scripts/build-examples.sh >/dev/null

ctr_() { ctr --address "$CONTAINERD_ADDRESS" "$@"; }
hello=docker.io/hybrid-examples/hello-rust:latest
busybox=docker.io/hybrid-examples/busybox:latest

# One timed `ctr run --rm`, in milliseconds.
timed() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

a=(); b=(); c=()
# One warm-up each, so that first-use costs (snapshot unpack, page cache) are not counted.
ctr_ run --rm --runtime io.containerd.hybrid.v2 "$hello" warm-a /hello.wasm >/dev/null
ctr_ run --rm --runtime io.containerd.runc.v2 "$busybox" warm-b echo hi >/dev/null
for i in $(seq 1 "$rounds"); do
  a+=("$(timed ctr_ run --rm --runtime io.containerd.hybrid.v2 "$hello" "a-$i" /hello.wasm)")
  b+=("$(timed ctr_ run --rm --runtime io.containerd.runc.v2 "$busybox" "b-$i" echo hi)")
  if [ -n "${RUNWASI_SHIM:-}" ]; then
    c+=("$(timed ctr_ run --rm --runtime io.containerd.wasmtime.v1 "$hello" "c-$i" /hello.wasm)")
  fi
done

ma=$(printf '%s\n' "${a[@]}" | median)
mb=$(printf '%s\n' "${b[@]}" | median)
echo "rounds: $rounds (alternating)"
echo "hybrid wasm hello   median ${ma} ms"
echo "runc busybox echo   median ${mb} ms"
awk -v a="$ma" -v b="$mb" 'BEGIN {printf "ratio hybrid/runc   %.2f\n", a/b}'
if [ ${#c[@]} -gt 0 ]; then
  mc=$(printf '%s\n' "${c[@]}" | median)
  echo "runwasi wasm hello  median ${mc} ms"
  awk -v a="$ma" -v c="$mc" 'BEGIN {printf "ratio hybrid/runwasi %.2f\n", a/c}'
fi

# In a pod: the same runs, each joining a group whose shim is already up (a
# sleeper keeps it), as a container of a running Kubernetes pod starts. Each
# runtime groups by its own annotation; runwasi by CRI's sandbox id.
ctr_ run -d --annotation io.containerd.hybrid.v2.group=pod-a --runtime io.containerd.hybrid.v2 "$busybox" pod-a sleep 3600 >/dev/null
ctr_ run -d --annotation io.containerd.runc.v2.group=pod-b --runtime io.containerd.runc.v2 "$busybox" pod-b sleep 3600 >/dev/null
if [ -n "${RUNWASI_SHIM:-}" ]; then
  ctr_ run -d --annotation io.kubernetes.cri.sandbox-id=pod-c --runtime io.containerd.wasmtime.v1 "$hello" pod-c /hello.wasm >/dev/null || true
fi
pa=(); pb=(); pc=()
for i in $(seq 1 "$rounds"); do
  pa+=("$(timed ctr_ run --rm --annotation io.containerd.hybrid.v2.group=pod-a --runtime io.containerd.hybrid.v2 "$hello" "pa-$i" /hello.wasm)")
  pb+=("$(timed ctr_ run --rm --annotation io.containerd.runc.v2.group=pod-b --runtime io.containerd.runc.v2 "$busybox" "pb-$i" echo hi)")
  if [ -n "${RUNWASI_SHIM:-}" ]; then
    pc+=("$(timed ctr_ run --rm --annotation io.kubernetes.cri.sandbox-id=pod-c --runtime io.containerd.wasmtime.v1 "$hello" "pc-$i" /hello.wasm)")
  fi
done
for id in pod-a pod-b pod-c; do
  ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
done
sleep 1
for id in pod-a pod-b pod-c; do
  ctr_ task rm "$id" >/dev/null 2>&1 || true
  ctr_ container rm "$id" >/dev/null 2>&1 || true
done
mpa=$(printf '%s\n' "${pa[@]}" | median)
mpb=$(printf '%s\n' "${pb[@]}" | median)
echo "in a pod (shim already running):"
echo "hybrid wasm hello   median ${mpa} ms"
echo "runc busybox echo   median ${mpb} ms"
awk -v a="$mpa" -v b="$mpb" 'BEGIN {printf "ratio hybrid/runc   %.2f\n", a/b}'
if [ ${#pc[@]} -gt 0 ]; then
  mpc=$(printf '%s\n' "${pc[@]}" | median)
  echo "runwasi wasm hello  median ${mpc} ms"
  awk -v a="$mpa" -v c="$mpc" 'BEGIN {printf "ratio hybrid/runwasi %.2f\n", a/c}'
fi
