#!/usr/bin/env bash
# Build time, side by side in one run: `hybrid build` against Debian's
# `buildah bud` on the same Dockerfile (FROM our busybox base as an OCI
# archive, RUN steps that write, delete and replace files, a COPY of a
# hundred small files). Both with no network for RUN. Alternating A B A B:
#   cold: --no-cache, every step runs;
#   warm: the same build again with each tool's cache (buildah --layers).
# Prints the medians and the ratios hybrid/buildah. buildah stores with the
# overlay driver (BUILDAH_STORAGE_DRIVER=vfs for its slower fallback).
#
# Usage: bench/build.sh [ROUNDS]   (default 5; root; installs buildah and
# builds hybrid in release mode if needed; HYBRID_BENCH_PROFILE=debug for
# the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

bash scripts/install-deps.sh
command -v buildah >/dev/null || apt-get install -y -o DPkg::Lock::Timeout=600 buildah >/dev/null
profile=${HYBRID_BENCH_PROFILE:-release}
case $profile in
  release) cargo build --release --quiet -p hybrid-cli ;;
  debug) cargo build --quiet -p hybrid-cli ;;
  *) echo "HYBRID_BENCH_PROFILE must be release or debug" >&2; exit 1 ;;
esac
hybrid=$(bash scripts/target-dir.sh "$profile")/hybrid

work=$(mktemp -d /tmp/hybrid-build-bench.XXXXXX)
trap 'buildah --root "$work/buildah" --runroot "$work/run" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
bash scripts/build-examples.sh busybox >/dev/null
"$hybrid" build --no-cache -t bench/busybox -o "$work/busybox.tar" wasm-examples/busybox 2>/dev/null >/dev/null

ctx=$work/ctx
mkdir -p "$ctx/data"
for i in $(seq 1 100); do echo "file $i" >"$ctx/data/f$i.txt"; done
cat >"$ctx/Dockerfile" <<EOF
FROM oci-archive:$work/busybox.tar
RUN mkdir -p /app/old /app/keep && echo one > /app/old/a && echo two > /app/keep/b
RUN rm -rf /app/old && echo replaced > /app/keep/b && chmod 600 /app/keep/b
COPY data/ /app/data/
RUN i=0; while [ \$i -lt 200 ]; do echo \$i > /app/n\$i; i=\$((i+1)); done
ENV GREETING=hi
CMD ["sh"]
EOF

# One timed build, in milliseconds.
timed() {
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

export HYBRID_CACHE_DIR=$work/hybrid-cache
hybrid_build() { "$hybrid" build "$@" -t bench/app -o "$work/app.tar" "$ctx"; }
buildah_bud() {
  buildah --root "$work/buildah" --runroot "$work/run" --storage-driver "${BUILDAH_STORAGE_DRIVER:-overlay}" \
    bud --network none --isolation oci "$@" -t bench/app "$ctx"
}
# Check both can build it at all (and warm the page cache).
hybrid_build --no-cache >/dev/null 2>&1 || { echo "hybrid build failed" >&2; exit 1; }
buildah_bud --no-cache --layers >/dev/null 2>&1 || { echo "buildah bud failed" >&2; exit 1; }

ca=(); cb=(); wa=(); wb=()
for i in $(seq 1 "$rounds"); do
  ca+=("$(timed hybrid_build --no-cache)")
  cb+=("$(timed buildah_bud --no-cache --layers)")
  wa+=("$(timed hybrid_build)")
  wb+=("$(timed buildah_bud --layers)")
done
mca=$(printf '%s\n' "${ca[@]}" | median); mcb=$(printf '%s\n' "${cb[@]}" | median)
mwa=$(printf '%s\n' "${wa[@]}" | median); mwb=$(printf '%s\n' "${wb[@]}" | median)
echo "rounds: $rounds (alternating), $(buildah --version)"
echo "cold (no cache):  hybrid ${mca} ms  buildah ${mcb} ms"
awk -v a="$mca" -v b="$mcb" 'BEGIN {printf "ratio hybrid/buildah cold %.2f\n", a/b}'
echo "warm (cached):    hybrid ${mwa} ms  buildah ${mwb} ms"
awk -v a="$mwa" -v b="$mwb" 'BEGIN {printf "ratio hybrid/buildah warm %.2f\n", a/b}'
awk -v a="$mwa" -v c="$mca" 'BEGIN {printf "hybrid warm/cold %.2f\n", a/c}'
