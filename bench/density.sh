#!/usr/bin/env bash
# Memory per idle container, side by side in one run: N idle wasm
# containers (sleep-wat) through hybrid, all in one pod-like group served by
# one shim, against N idle busybox `sleep` containers through runc (one
# containerd-shim-runc-v2 per container, as ctr runs them). Memory is PSS
# (proportional set size, /proc/PID/smaps_rollup): shared pages are split
# among the processes sharing them, so the sums add up to real memory.
# Counted: every process in the containers' cgroups plus their shims.
# With RUNWASI_SHIM=/path/to/containerd-shim-wasmtime-v1, the same N
# sleep-wat containers also run through runwasi's wasmtime shim
# (io.containerd.wasmtime.v1), twice: a shim each, as ctr runs them, and
# all in one shim, grouped as CRI groups a pod (runwasi groups by the
# io.kubernetes.cri.sandbox-id annotation). runwasi's shim answers no Pids
# (`ctr task ps`), so its containers' processes are read from their cgroup;
# its "shims" are the shim processes and their zygotes (forks of the shim:
# one per shim, one per container), all of which carry the shim's argv.
#
# Also the shims' cpu per Stats call of one idle task (`ctr task metrics`).
#
# Usage: bench/density.sh [N]   (default 50; root; builds if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}

bash scripts/install-deps.sh >/dev/null
# A release build, as operators deploy it (runc and runwasi are measured as
# release builds too); HYBRID_BENCH_PROFILE=debug measures the debug build.
profile=${HYBRID_BENCH_PROFILE:-release}
case $profile in
  release) cargo build --release --quiet -p containerd-shim-hybrid-v2 -p hybrid-cli ;;
  debug) cargo build --workspace --bins --quiet ;;
  *) echo "HYBRID_BENCH_PROFILE must be release or debug" >&2; exit 1 ;;
esac
state=$(mktemp -d /tmp/hybrid-density.XXXXXX)
bin_dir=$(bash scripts/target-dir.sh "$profile")
export HYBRID_BIN_DIR="$bin_dir"
if [ -n "${RUNWASI_SHIM:-}" ]; then
  # containerd finds io.containerd.wasmtime.v1 as containerd-shim-wasmtime-v1 on PATH.
  [ "$(basename "$RUNWASI_SHIM")" = containerd-shim-wasmtime-v1 ] && [ -x "$RUNWASI_SHIM" ] \
    || { echo "RUNWASI_SHIM must be an executable containerd-shim-wasmtime-v1" >&2; exit 1; }
  export HYBRID_BIN_DIR="$HYBRID_BIN_DIR:$(dirname "$RUNWASI_SHIM")"
fi
bash scripts/containerd.sh start "$state" >/dev/null
trap 'bash scripts/containerd.sh stop "$state" >/dev/null; rm -rf "$state"' EXIT
eval "$(bash scripts/containerd.sh env "$state")"
HYBRID="$bin_dir/hybrid" bash scripts/build-examples.sh >/dev/null 2>&1
ctr_() { ctr --address "$CONTAINERD_ADDRESS" "$@"; }

pss_kb() { awk '/^Pss:/ {s += $2} END {print s + 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }

# Pids of a task's processes, from `ctr task ps`.
task_pids() { ctr_ task ps "$1" | awk 'NR > 1 {print $1}'; }

# Pids in the cgroup of a task's init process (for shims without Pids).
cgroup_pids() {
  local pid rel procs
  pid=$(ctr_ task ls | awk -v id="$1" '$1 == id {print $2}')
  [ -n "$pid" ] && [ "$pid" != 0 ] || return 0
  if [ -d /sys/fs/cgroup/memory ]; then # v1: the memory hierarchy
    rel=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3; exit}' "/proc/$pid/cgroup")
    procs=/sys/fs/cgroup/memory$rel/cgroup.procs
  else # v2
    rel=$(awk -F: '$1 == 0 {print $3; exit}' "/proc/$pid/cgroup")
    procs=/sys/fs/cgroup$rel/cgroup.procs
  fi
  # A task left in the root cgroup would count every process on the host.
  [ -n "$rel" ] && [ "$rel" != / ] && cat "$procs" 2>/dev/null || echo "$pid"
}

container_pids() { # id how(ps|cgroup)
  if [ "$2" = cgroup ]; then cgroup_pids "$1"; else task_pids "$1"; fi
}

# Pids of shims started by this containerd (their argv names its socket),
# with `id` those serving task `id` (their argv names it too).
shim_pids() { # pattern [id]
  local pattern=$1 id=${2:-} args
  for d in /proc/[0-9]*; do
    args=$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null) || continue
    if grep -q -- "$pattern.*-address $CONTAINERD_ADDRESS " <<<"$args" && { [ -z "$id" ] || grep -q -- "-id $id " <<<"$args"; }; then
      # Only processes in our pid namespace: a wasm container's init is a
      # clone of the shim and carries its command line too. (An `if`, not
      # `[ ] && echo`: a false test as the loop's last command would fail
      # the function, and `serving=$(shim_pids ...)` with it under set -e,
      # ending the bench silently whenever the last /proc entry read was
      # such an init.)
      if [ "$(readlink "$d/ns/pid")" = "$(readlink /proc/self/ns/pid)" ]; then
        echo "${d#/proc/}"
      fi
    fi
  done
}

# utime + stime of processes, in clock ticks.
cpu_ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0))); done; echo "$t"; }

stats_calls=100

measure() { # runtime image prefix shim-pattern group-annotation pids(ps|cgroup) args...
  local runtime=$1 image=$2 prefix=$3 pattern=$4 group=$5 how=$6; shift 6
  local total=0 pid i
  for i in $(seq 1 "$n"); do
    ctr_ run -d --runtime "$runtime" --annotation "$group=$prefix" "$image" "$prefix-$i" "$@" >/dev/null
  done
  sleep 2
  # sleep-wat sleeps 60 s: a task that has already exited would count as 0.
  local running
  running=$(ctr_ task ls | awk -v p="$prefix-" 'index($1, p) == 1 && $3 == "RUNNING"' | wc -l)
  [ "$running" -eq "$n" ] || echo "density: warning: $runtime: only $running of $n tasks running when measured" >&2
  for i in $(seq 1 "$n"); do
    for pid in $(container_pids "$prefix-$i" "$how"); do total=$((total + $(pss_kb "$pid"))); done
  done
  local shims=0 count=0
  for pid in $(shim_pids "$pattern"); do shims=$((shims + $(pss_kb "$pid"))); count=$((count + 1)); done
  # What an idle container keeps costing: the cpu of the shim serving the
  # first task per Stats call (`ctr task metrics`, as kubelet's stats
  # polling asks), in ms, from its utime + stime over $stats_calls calls.
  local serving before per_call=""
  serving=$(shim_pids "$pattern" "$prefix-1")
  before=$(cpu_ticks $serving)
  for i in $(seq 1 "$stats_calls"); do
    ctr_ task metrics "$prefix-1" >/dev/null 2>&1 || { per_call=n/a; break; }
  done
  [ -n "$per_call" ] || per_call=$(awk -v a="$before" -v b="$(cpu_ticks $serving)" -v n="$stats_calls" -v hz="$(getconf CLK_TCK)" \
    'BEGIN {printf "%.2f", (b - a) * 1000 / hz / n}')
  for i in $(seq 1 "$n"); do
    ctr_ task kill -a -s SIGKILL "$prefix-$i" >/dev/null 2>&1 || true
  done
  sleep 1
  for i in $(seq 1 "$n"); do
    ctr_ task rm "$prefix-$i" >/dev/null 2>&1 || true
    ctr_ container rm "$prefix-$i" >/dev/null 2>&1 || true
  done
  # Let the shims exit, so that the next run of the same shim counts only its own.
  for i in $(seq 1 20); do [ -z "$(shim_pids "$pattern")" ] && break; sleep 0.5; done
  echo "$total $shims $count $per_call"
}

hgroup=io.containerd.hybrid.v2.group
read -r hw hs hc hcpu < <(measure io.containerd.hybrid.v2 docker.io/hybrid-examples/sleep-wat:latest hy containerd-shim-hybrid-v2 $hgroup ps)
read -r rw rs rc rcpu < <(measure io.containerd.runc.v2 docker.io/hybrid-examples/busybox:latest rc containerd-shim-runc-v2 $hgroup ps sleep 3600)
if [ -n "${RUNWASI_SHIM:-}" ]; then
  # A shim each: the group annotation is one runwasi ignores.
  read -r ww ws wc wcpu < <(measure io.containerd.wasmtime.v1 docker.io/hybrid-examples/sleep-wat:latest rw containerd-shim-wasmtime-v1 $hgroup cgroup)
  # One shim for all: CRI's sandbox id, the only grouping runwasi knows.
  read -r gw gs gc gcpu < <(measure io.containerd.wasmtime.v1 docker.io/hybrid-examples/sleep-wat:latest rg containerd-shim-wasmtime-v1 io.kubernetes.cri.sandbox-id cgroup)
fi

echo "idle containers: $n each"
awk -v n="$n" -v w="$hw" -v s="$hs" -v c="$hc" 'BEGIN {printf "hybrid wasm (sleep-wat):  containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
awk -v n="$n" -v w="$rw" -v s="$rs" -v c="$rc" 'BEGIN {printf "runc busybox sleep:       containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
if [ -n "${RUNWASI_SHIM:-}" ]; then
  awk -v n="$n" -v w="$ww" -v s="$ws" -v c="$wc" 'BEGIN {printf "runwasi wasm (sleep-wat): containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
  awk -v n="$n" -v w="$gw" -v s="$gs" -v c="$gc" 'BEGIN {printf "runwasi grouped (1 shim): containers %6.0f KiB + %d shim(s) %6.0f KiB = %6.0f KiB per container\n", w, c, s, (w + s) / n}'
fi
awk -v a="$hw" -v b="$hs" -v c="$rw" -v d="$rs" 'BEGIN {printf "ratio hybrid/runc per container: %.2f\n", (a + b) / (c + d)}'
if [ -n "${RUNWASI_SHIM:-}" ]; then
  awk -v a="$hw" -v b="$hs" -v c="$ww" -v d="$ws" 'BEGIN {printf "ratio hybrid/runwasi per container: %.2f\n", (a + b) / (c + d)}'
  awk -v a="$hw" -v b="$hs" -v c="$gw" -v d="$gs" 'BEGIN {printf "ratio hybrid/runwasi-grouped per container: %.2f\n", (a + b) / (c + d)}'
fi
echo "shim cpu per Stats call (ctr task metrics of one task, $stats_calls calls):"
echo "  hybrid ${hcpu} ms, runc ${rcpu} ms${RUNWASI_SHIM:+, runwasi ${wcpu} ms, runwasi grouped ${gcpu} ms}"
stats_ratio() { awk -v a="$1" -v b="$2" -v what="$3" 'BEGIN {if (b + 0 > 0 && a != "n/a") printf "ratio hybrid/%s stats cpu: %.2f\n", what, a / b}'; }
stats_ratio "$hcpu" "$rcpu" runc
if [ -n "${RUNWASI_SHIM:-}" ]; then
  stats_ratio "$hcpu" "$wcpu" runwasi
  stats_ratio "$hcpu" "$gcpu" runwasi-grouped
fi
