#!/usr/bin/env bash
# Cold start, side by side in one run: `ctr run --rm` of the wasm hello
# through hybrid (A) against busybox `echo` through runc (B), alternating
# (A B, B A, ...) so that drift on the machine, and what each run leaves
# behind for the next, hit both alike. Prints the medians
# and the ratio A/B. With RUNWASI_SHIM=/path/to/containerd-shim-wasmtime-v1,
# the same hello also runs through runwasi's shim (C).
#
# Usage: bench/cold-start.sh [ROUNDS]   (default 20; root; builds if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
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
bin_dir=$(bash scripts/target-dir.sh "$profile")
export HYBRID_BIN_DIR="$bin_dir"
if [ -n "${RUNWASI_SHIM:-}" ]; then
  # containerd finds io.containerd.wasmtime.v1 as containerd-shim-wasmtime-v1 on PATH.
  export HYBRID_BIN_DIR="$HYBRID_BIN_DIR:$(dirname "$RUNWASI_SHIM")"
fi
bash scripts/containerd.sh start "$state" >/dev/null
trap 'bash scripts/containerd.sh stop "$state" >/dev/null; rm -rf "$state"' EXIT
eval "$(bash scripts/containerd.sh env "$state")"
HYBRID="$bin_dir/hybrid" bash scripts/build-examples.sh >/dev/null

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

# Round after round, one timed `ctr run --rm` per runtime, the order
# turning each round (A B C, B C A, C A B; A B, B A without runwasi): what
# a run leaves to the machine as it ends (its shim's exit, containerd's
# collection of the deleted container's snapshot) falls on the run after
# it, and with a fixed order that was always the same runtime's. $1 names
# the series ("" or "pod"); $2, $3 and $4 are the extra flags of hybrid,
# runc and runwasi (their group annotation).
declare -A ms
series() { # name hybrid-flags runc-flags runwasi-flags
  local name=$1 i k; local -a fa fb fc runtimes
  read -r -a fa <<<"$2"; read -r -a fb <<<"$3"; read -r -a fc <<<"$4"
  local -a ta=() tb=() tc=()
  runtimes=(a b)
  [ -z "${RUNWASI_SHIM:-}" ] || runtimes+=(c)
  for i in $(seq 1 "$rounds"); do
    for k in $(seq 0 $((${#runtimes[@]} - 1))); do
      case ${runtimes[$(((i + k) % ${#runtimes[@]}))]} in
        a) ta+=("$(timed ctr_ run --rm "${fa[@]}" --runtime io.containerd.hybrid.v2 "$hello" "${name}a-$i" /hello.wasm)") ;;
        b) tb+=("$(timed ctr_ run --rm "${fb[@]}" --runtime io.containerd.runc.v2 "$busybox" "${name}b-$i" echo hi)") ;;
        c) tc+=("$(timed ctr_ run --rm "${fc[@]}" --runtime io.containerd.wasmtime.v1 "$hello" "${name}c-$i" /hello.wasm)") ;;
      esac
    done
  done
  ms[$name.a]=$(printf '%s\n' "${ta[@]}" | median)
  ms[$name.b]=$(printf '%s\n' "${tb[@]}" | median)
  [ ${#tc[@]} -eq 0 ] || ms[$name.c]=$(printf '%s\n' "${tc[@]}" | median)
}

report() { # name
  local a=${ms[$1.a]} b=${ms[$1.b]} c=${ms[$1.c]:-}
  echo "hybrid wasm hello   median ${a} ms"
  echo "runc busybox echo   median ${b} ms"
  awk -v a="$a" -v b="$b" 'BEGIN {printf "ratio hybrid/runc   %.2f\n", a/b}'
  if [ -n "$c" ]; then
    echo "runwasi wasm hello  median ${c} ms"
    awk -v a="$a" -v c="$c" 'BEGIN {printf "ratio hybrid/runwasi %.2f\n", a/c}'
  fi
}

# One warm-up each, so that first-use costs (snapshot unpack, page cache) are not counted.
ctr_ run --rm --runtime io.containerd.hybrid.v2 "$hello" warm-a /hello.wasm >/dev/null
ctr_ run --rm --runtime io.containerd.runc.v2 "$busybox" warm-b echo hi >/dev/null
series "" "" "" ""
echo "rounds: $rounds (alternating, the order turning each round)"
report ""

# Where the time goes: more rounds of each, alternating, traced with perf's
# sched tracepoints (cheap: process exec and exit only) and split by
# bench/phases.awk into containerd's and ctr's part before the shim's first
# exec, the runtime's part (its shim's start to the exit of the `delete`
# cleanup containerd runs and waits for), and containerd's and ctr's part
# after. Needs perf (Debian's linux-perf); HYBRID_BENCH_PHASE_ROUNDS=0 skips.
phase_rounds=${HYBRID_BENCH_PHASE_ROUNDS:-10}
if [ "$phase_rounds" -gt 0 ] && command -v perf >/dev/null; then
  traced() { # out-file ctr-run-args...
    local out=$1; shift
    perf record -q -a -e sched:sched_process_exec -e sched:sched_process_exit -o "$state/perf.data" \
      -- ctr --address "$CONTAINERD_ADDRESS" run --rm "$@" >/dev/null 2>&1
    perf script -i "$state/perf.data" -F comm,pid,tid,time,event,trace 2>/dev/null | awk -f bench/phases.awk >>"$out"
  }
  : >"$state/phases.a"; : >"$state/phases.b"
  for i in $(seq 1 "$phase_rounds"); do
    # A B, then B A (see series).
    for run in $([ $((i % 2)) = 1 ] && echo "a b" || echo "b a"); do
      case $run in
        a) traced "$state/phases.a" --runtime io.containerd.hybrid.v2 "$hello" "pa-$i" /hello.wasm ;;
        b) traced "$state/phases.b" --runtime io.containerd.runc.v2 "$busybox" "pb-$i" echo hi ;;
      esac
    done
  done
  column_median() { awk -v c="$1" '{print $c}' "$2" | median; }
  echo "where the time goes (medians of $phase_rounds traced rounds, ms): before the shim, the runtime's part, after, total"
  for run in a b; do
    name=$([ $run = a ] && echo "hybrid" || echo "runc  ")
    echo "$name  $(column_median 1 "$state/phases.$run")  $(column_median 2 "$state/phases.$run")  $(column_median 3 "$state/phases.$run")  $(column_median 4 "$state/phases.$run")"
  done
  awk -v a="$(column_median 2 "$state/phases.a")" -v b="$(column_median 2 "$state/phases.b")" \
    'BEGIN {printf "ratio of the runtime parts hybrid/runc  %.2f\n", a/b}'
fi

# In a pod: the same runs, each joining a group whose shim is already up (a
# sleeper keeps it), as a container of a running Kubernetes pod starts. Each
# runtime groups by its own annotation; runwasi by CRI's sandbox id.
ctr_ run -d --annotation io.containerd.hybrid.v2.group=pod-a --runtime io.containerd.hybrid.v2 "$busybox" pod-a sleep 3600 >/dev/null
ctr_ run -d --annotation io.containerd.runc.v2.group=pod-b --runtime io.containerd.runc.v2 "$busybox" pod-b sleep 3600 >/dev/null
if [ -n "${RUNWASI_SHIM:-}" ]; then
  ctr_ run -d --annotation io.kubernetes.cri.sandbox-id=pod-c --runtime io.containerd.wasmtime.v1 "$hello" pod-c /hello.wasm >/dev/null || true
fi
series pod "--annotation io.containerd.hybrid.v2.group=pod-a" "--annotation io.containerd.runc.v2.group=pod-b" \
  "--annotation io.kubernetes.cri.sandbox-id=pod-c"
for id in pod-a pod-b pod-c; do
  ctr_ task kill -s SIGKILL "$id" >/dev/null 2>&1 || true
done
sleep 1
for id in pod-a pod-b pod-c; do
  ctr_ task rm "$id" >/dev/null 2>&1 || true
  ctr_ container rm "$id" >/dev/null 2>&1 || true
done
echo "in a pod (shim already running):"
report pod
