#!/usr/bin/env bash
# Install the Debian 12 packages that the workspace build, the examples
# (scripts/build-examples.sh) and the private containerd
# (scripts/containerd.sh) need. Run as root. The Rust toolchain for the
# workspace itself (cargo, rustc >= 1.85) is not a Debian package here.
# Does nothing when they are all installed already.
#
#   scripts/install-deps.sh
set -euo pipefail

packages=(
    # cargo build of the workspace: C toolchain, libcontainer's libseccomp
    # (pkg-config), containerd-client's build.rs runs protoc
    build-essential pkg-config libseccomp-dev protobuf-compiler
    # scripts/containerd.sh: containerd 1.6, ctr, runc
    containerd runc
    # busybox example: a statically linked busybox
    busybox-static
    # WAT examples: wat2wasm, wasm-objdump
    wabt
    # hello-rust: Debian's rustc 1.63 (/usr/bin/rustc) + wasm32-wasi std
    rustc libstd-rust-dev-wasm32
    # c-hello: clang + wasm-ld + wasi-libc + compiler-rt builtins for wasm32
    # (without the last one, linking fails: libclang_rt.builtins-wasm32.a)
    clang lld wasi-libc libclang-rt-14-dev-wasm32
    # make-rootfs.sh checks the busybox binary with file(1)
    file
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages are installed"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "install-deps: error: run as root to install: ${missing[*]}" >&2; exit 1; }
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o DPkg::Lock::Timeout=600
apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}"
echo "install-deps: done"
