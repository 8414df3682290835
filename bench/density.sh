#!/usr/bin/env bash
# Memory per idle container, side by side in one run: N idle wasm
# containers (sleep-wat) through hybrid, all in one pod-like group served by
# one shim, against N idle busybox `sleep` containers through runc (one
# containerd-shim-runc-v2 per container, as ctr runs them). Memory is PSS
# (proportional set size, /proc/PID/smaps_rollup): shared pages are split
# among the processes sharing them, so the sums add up to real memory.
# Counted: every process in the containers' cgroups plus their shims.
#
# Usage: bench/density.sh [N]   (default 50; root; builds if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
n=${1:-50}

bash scripts/install-deps.sh >/dev/null
cargo build --workspace --bins --quiet
state=$(mktemp -d /tmp/hybrid-density.XXXXXX)
export HYBRID_BIN_DIR="$root/target/debug"
bash scripts/containerd.sh start "$state" >/dev/null
trap 'bash scripts/containerd.sh stop "$state" >/dev/null; rm -rf "$state"' EXIT
eval "$(bash scripts/containerd.sh env "$state")"
HYBRID="$root/target/debug/hybrid" bash scripts/build-examples.sh >/dev/null 2>&1
ctr_() { ctr --address "$CONTAINERD_ADDRESS" "$@"; }

pss_kb() { awk '/^Pss:/ {s += $2} END {print s + 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

# Pids of a task's processes, from `ctr task ps`.
task_pids() { ctr_ task ps "$1" | awk 'NR > 1 {print $1}'; }

# Pids of shims started by this containerd (their argv names its socket).
shim_pids() {
  local pattern=$1
  for d in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q -- "$pattern.*-address $CONTAINERD_ADDRESS"; then
      # Only processes in our pid namespace: a wasm container's init is a
      # clone of the shim and carries its command line too.
      [ "$(readlink "$d/ns/pid")" = "$(readlink /proc/self/ns/pid)" ] && echo "${d#/proc/}"
    fi
  done
}

measure() { # runtime image prefix shim-pattern args...
  local runtime=$1 image=$2 prefix=$3 pattern=$4; shift 4
  local total=0 pid i
  for i in $(seq 1 "$n"); do
    ctr_ run -d --runtime "$runtime" --annotation io.containerd.hybrid.v2.group="$prefix" "$image" "$prefix-$i" "$@" >/dev/null
  done
  sleep 2
  for i in $(seq 1 "$n"); do
    for pid in $(task_pids "$prefix-$i"); do total=$((total + $(pss_kb "$pid"))); done
  done
  local shims=0 count=0
  for pid in $(shim_pids "$pattern"); do shims=$((shims + $(pss_kb "$pid"))); count=$((count + 1)); done
  for i in $(seq 1 "$n"); do
    ctr_ task kill -a -s SIGKILL "$prefix-$i" >/dev/null 2>&1 || true
  done
  sleep 1
  for i in $(seq 1 "$n"); do
    ctr_ task rm "$prefix-$i" >/dev/null 2>&1 || true
    ctr_ container rm "$prefix-$i" >/dev/null 2>&1 || true
  done
  echo "$total $shims $count"
}

read -r hw hs hc < <(measure io.containerd.hybrid.v2 docker.io/hybrid-examples/sleep-wat:latest hy containerd-shim-hybrid-v2)
read -r rw rs rc < <(measure io.containerd.runc.v2 docker.io/hybrid-examples/busybox:latest rc containerd-shim-runc-v2 sleep 3600)

echo "idle containers: $n each"
awk -v n="$n" -v w="$hw" -v s="$hs" -v c="$hc" 'BEGIN {printf "hybrid wasm (sleep-wat):  containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
awk -v n="$n" -v w="$rw" -v s="$rs" -v c="$rc" 'BEGIN {printf "runc busybox sleep:       containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
awk -v a="$hw" -v b="$hs" -v c="$rw" -v d="$rs" 'BEGIN {printf "ratio hybrid/runc per container: %.2f\n", (a + b) / (c + d)}'
