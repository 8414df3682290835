#!/usr/bin/env bash
# Build the artifacts of every example under wasm-examples/ and, when a
# containerd is given, build and load their images with `hybrid build`.
#
#   scripts/build-examples.sh [NAME...]      (default: all examples)
#
# Artifacts are written into each example directory (so the directory is a
# complete `hybrid build` context) and are git-ignored:
#   hello-rust/hello.wasm   Debian rustc 1.63, --target wasm32-wasi
#   exit-wat/exit.wasm      wat2wasm exit.wat
#   sleep-wat/sleep.wasm    wat2wasm sleep.wat
#   c-hello/hello.wasm      clang --target=wasm32-wasi (Debian wasi-libc)
#   busybox/rootfs.tar      busybox/make-rootfs.sh (Debian busybox-static)
#   bad-entrypoint/         nothing to build (notes.txt made executable)
#   pause/pause             cc -static pause.c (the CRI pod sandbox image)
#   http-hello/http-hello.wasm  Debian rustc 1.63 (a cdylib written against
#                           the wasi:http canonical ABI), wrapped into a
#                           wasi:http/proxy component by `hybrid wasm
#                           componentize` with the WIT of the wasmtime-wasi-http
#                           crate in cargo's registry (found by cargo metadata)
#
# Environment:
#   HYBRID               path to the `hybrid` binary; with CONTAINERD_ADDRESS,
#                        each example is built as hybrid-examples/NAME:latest
#                        and loaded into that containerd (http-hello needs it
#                        for componentize; default the debug build's, see
#                        scripts/target-dir.sh)
#   CONTAINERD_ADDRESS   containerd socket (see scripts/containerd.sh env)
#   CONTAINERD_NAMESPACE containerd namespace (default: default)
#   RUSTC                rustc with a wasm32-wasi std (default: /usr/bin/rustc,
#                        Debian's; not the rustup one first on PATH)
#   CLANG                clang (default: clang)
#   WASI_SYSROOT         optional --sysroot for clang (Debian's clang needs
#                        none: it finds /usr/include/wasm32-wasi and
#                        /usr/lib/wasm32-wasi by itself)
#   WAT2WASM             wat2wasm (default: wat2wasm)
#   BUSYBOX              static busybox (default: /bin/busybox)
#   CC                   C compiler for the static pause binary (default: cc)
#
# Debian 12 packages (scripts/install-deps.sh installs them): rustc
# libstd-rust-dev-wasm32 clang lld wasi-libc libclang-rt-14-dev-wasm32 wabt
# busybox-static.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
examples_dir=$repo/wasm-examples
all_examples=(hello-rust exit-wat sleep-wat c-hello busybox bad-entrypoint pause http-hello)

RUSTC=${RUSTC:-/usr/bin/rustc}
CLANG=${CLANG:-clang}
WAT2WASM=${WAT2WASM:-wat2wasm}

log() { echo "build-examples: $*" >&2; }
die() { echo "build-examples: error: $*" >&2; exit 1; }

need() { # need TOOL PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found (Debian: apt-get install $2)"
}

# Write to a temporary file next to the target and rename, so an interrupted
# build never leaves a truncated artifact behind.
finish() { # finish TMP OUT
    mv -f "$1" "$2"
    log "  -> ${2#"$repo"/} ($(wc -c <"$2") bytes)"
}

build_hello_rust() {
    local dir=$examples_dir/hello-rust out tmp
    out=$dir/hello.wasm
    tmp=$out.tmp.$$
    need_wasm_rustc
    log "hello-rust: $("$RUSTC" --version) --target wasm32-wasi"
    # strip=debuginfo: Debian's wasm32 std carries DWARF (5.8 MB -> ~130 KB);
    # the name section stays for readable traps.
    # rustc writes its object files beside the output: build in a dir of
    # this run's own, so that concurrent runs cannot trip over each other.
    local work
    work=$(mktemp -d)
    "$RUSTC" --edition 2021 -O -C strip=debuginfo --target wasm32-wasi \
        "$dir/src/main.rs" -o "$work/hello.wasm" || { rm -rf "$work"; die "hello-rust: rustc failed"; }
    mv "$work/hello.wasm" "$tmp"
    rm -rf "$work"
    finish "$tmp" "$out"
}

# rustc's wasm32-wasi std, or a clear error.
need_wasm_rustc() {
    need "$RUSTC" "rustc libstd-rust-dev-wasm32"
    local sysroot
    sysroot=$("$RUSTC" --print sysroot)
    [ -d "$sysroot/lib/rustlib/wasm32-wasi" ] \
        || die "$RUSTC ($("$RUSTC" --version)) has no wasm32-wasi std in $sysroot/lib/rustlib (Debian: apt-get install libstd-rust-dev-wasm32; set RUSTC=/usr/bin/rustc)"
}

build_http_hello() {
    local dir=$examples_dir/http-hello out tmp hybrid
    out=$dir/http-hello.wasm
    tmp=$out.tmp.$$
    need_wasm_rustc
    hybrid=${HYBRID:-$(bash "$repo/scripts/target-dir.sh" debug)/hybrid}
    [ -x "$hybrid" ] || die "http-hello: $hybrid not found (cargo build -p hybrid-cli, or set HYBRID)"
    # The WIT of the wasi:http version the runtime serves: read from the
    # wasmtime-wasi-http crate the workspace builds with, never copied here.
    local manifest wit
    manifest=$(cd "$repo" && cargo metadata --format-version 1 2>/dev/null \
        | grep -o '"manifest_path":"[^"]*/wasmtime-wasi-http-[0-9][^"/]*/Cargo.toml"' | head -n1 | cut -d'"' -f4) || true
    [ -n "$manifest" ] || die "http-hello: cargo metadata does not list wasmtime-wasi-http (run cargo fetch in $repo)"
    wit=$(dirname "$manifest")/wit
    [ -d "$wit/deps" ] || die "http-hello: no WIT in $wit"
    log "http-hello: $("$RUSTC" --version) --crate-type cdylib, componentize with $wit"
    local work
    work=$(mktemp -d)
    "$RUSTC" --edition 2021 -O -C strip=debuginfo --target wasm32-wasi --crate-type cdylib \
        "$dir/src/lib.rs" -o "$work/core.wasm" || { rm -rf "$work"; die "http-hello: rustc failed"; }
    "$hybrid" wasm componentize --wit "$wit" --world wasi:http/proxy "$work/core.wasm" -o "$tmp" \
        || { rm -rf "$work" "$tmp"; die "http-hello: componentize failed"; }
    rm -rf "$work"
    finish "$tmp" "$out"
}

build_wat() { # build_wat NAME STEM
    local dir=$examples_dir/$1 out tmp
    out=$dir/$2.wasm
    tmp=$out.tmp.$$
    need "$WAT2WASM" wabt
    log "$1: wat2wasm $2.wat"
    "$WAT2WASM" "$dir/$2.wat" -o "$tmp"
    finish "$tmp" "$out"
}

build_c_hello() {
    local dir=$examples_dir/c-hello out tmp
    out=$dir/hello.wasm
    tmp=$out.tmp.$$
    need "$CLANG" "clang lld wasi-libc libclang-rt-14-dev-wasm32"
    command -v wasm-ld >/dev/null 2>&1 || ls /usr/bin/wasm-ld-* >/dev/null 2>&1 \
        || die "wasm-ld not found (Debian: apt-get install lld)"
    local builtins
    builtins=$("$CLANG" --target=wasm32-wasi -print-libgcc-file-name)
    [ -f "$builtins" ] || [ -n "${WASI_SYSROOT:-}" ] \
        || die "$builtins missing (Debian: apt-get install libclang-rt-$("$CLANG" -dumpversion | cut -d. -f1)-dev-wasm32)"
    local sysroot_args=()
    if [ -n "${WASI_SYSROOT:-}" ]; then
        sysroot_args=(--sysroot="$WASI_SYSROOT")
    elif [ ! -f /usr/lib/wasm32-wasi/libc.a ]; then
        die "/usr/lib/wasm32-wasi/libc.a missing (Debian: apt-get install wasi-libc, or set WASI_SYSROOT)"
    fi
    log "c-hello: $("$CLANG" --version | head -n1) --target=wasm32-wasi"
    "$CLANG" --target=wasm32-wasi "${sysroot_args[@]}" -O2 -Wall -Wextra -Wl,--strip-debug \
        "$dir/hello.c" -o "$tmp"
    finish "$tmp" "$out"
}

build_busybox() {
    local dir=$examples_dir/busybox
    log "busybox: make-rootfs.sh rootfs.tar"
    "$dir/make-rootfs.sh" "$dir/rootfs.tar"
}

build_bad_entrypoint() {
    # Git keeps the executable bit, but make sure of it (e.g. after a
    # checkout with core.fileMode=false).
    chmod 0755 "$examples_dir/bad-entrypoint/notes.txt"
    log "bad-entrypoint: nothing to build"
}

build_pause() {
    local dir=$examples_dir/pause out tmp
    out=$dir/pause
    tmp=$out.tmp.$$
    need "${CC:-cc}" "build-essential"
    log "pause: ${CC:-cc} -static pause.c"
    "${CC:-cc}" -static -Os -Wall -Wextra -s "$dir/pause.c" -o "$tmp" \
        || die "cannot build a static pause binary (Debian: apt-get install build-essential, for libc6-dev's libc.a)"
    finish "$tmp" "$out"
}

build_artifacts() { # build_artifacts NAME
    case $1 in
        hello-rust) build_hello_rust ;;
        exit-wat) build_wat exit-wat exit ;;
        sleep-wat) build_wat sleep-wat sleep ;;
        c-hello) build_c_hello ;;
        busybox) build_busybox ;;
        bad-entrypoint) build_bad_entrypoint ;;
        pause) build_pause ;;
        http-hello) build_http_hello ;;
        *) die "unknown example '$1' (known: ${all_examples[*]})" ;;
    esac
}

if [ $# -gt 0 ]; then
    examples=("$@")
else
    examples=("${all_examples[@]}")
fi

for name in "${examples[@]}"; do
    [ -d "$examples_dir/$name" ] && [[ " ${all_examples[*]} " == *" $name "* ]] \
        || die "unknown example '$name' (known: ${all_examples[*]})"
done

for name in "${examples[@]}"; do
    build_artifacts "$name"
done
log "artifacts built: ${examples[*]}"

if [ -z "${HYBRID:-}" ] || [ -z "${CONTAINERD_ADDRESS:-}" ]; then
    log "HYBRID and/or CONTAINERD_ADDRESS not set: not building images"
    exit 0
fi

[ -x "$HYBRID" ] || die "HYBRID=$HYBRID is not an executable file"
namespace=${CONTAINERD_NAMESPACE:-default}
for name in "${examples[@]}"; do
    ref=hybrid-examples/$name:latest
    log "image $ref: $HYBRID build --load (containerd $CONTAINERD_ADDRESS, namespace $namespace)"
    "$HYBRID" build -t "$ref" --load \
        --address "$CONTAINERD_ADDRESS" --namespace "$namespace" \
        "$examples_dir/$name" \
        || die "hybrid build failed for $name"
done
images=("${examples[@]/#/hybrid-examples/}")
log "images loaded: ${images[*]/%/:latest}"
