#!/bin/sh
# Install hybrid on a Kubernetes node that runs containerd (1.6 or later):
#   1. copy containerd-shim-hybrid-v2 into a directory on containerd's PATH;
#   2. add the CRI runtime handler "hybrid" (runtime io.containerd.hybrid.v2)
#      to containerd's config.toml, once: a rerun replaces our own marked
#      block and never duplicates it;
#   3. restart containerd, only if 1 or 2 changed something.
# Then a RuntimeClass with `handler: hybrid` (deploy/runtimeclass.yaml)
# sends pods to the shim.
#
# Run it as root on the node, or from deploy/installer/daemonset.yaml (the
# node's paths mounted under /host, containerd restarted through nsenter).
# POSIX sh, so it runs from a busybox image too.
#
# Environment (every path can be overridden, e.g. for tests):
#   HYBRID_SHIM_SRC        shim to install (default: containerd-shim-hybrid-v2
#                          next to this script, else the one on PATH)
#   HYBRID_BIN_DIR         where to install it (default: /usr/local/bin)
#   CONTAINERD_CONFIG      containerd's config (default:
#                          /etc/containerd/config.toml; created if missing)
#   HYBRID_HANDLER         CRI runtime handler name (default: hybrid)
#   CONTAINERD_RESTART_CMD command run (by sh -c) to restart containerd after
#                          a change (default: systemctl restart containerd;
#                          "none" or "" to skip: restart it yourself)
#   HYBRID_FORCE_RESTART   1: restart containerd even when nothing changed
set -eu

prog=install.sh
log() { echo "$prog: $*" >&2; }
die() { echo "$prog: error: $*" >&2; exit 1; }

script_dir=$(cd "$(dirname "$0")" && pwd)
shim_name=containerd-shim-hybrid-v2

shim_src=${HYBRID_SHIM_SRC:-}
if [ -z "$shim_src" ]; then
    if [ -x "$script_dir/$shim_name" ]; then
        shim_src=$script_dir/$shim_name
    else
        shim_src=$(command -v "$shim_name" 2>/dev/null) || true
    fi
fi
[ -n "$shim_src" ] && [ -f "$shim_src" ] || die "$shim_name not found: set HYBRID_SHIM_SRC"
bin_dir=${HYBRID_BIN_DIR:-/usr/local/bin}
config=${CONTAINERD_CONFIG:-/etc/containerd/config.toml}
handler=${HYBRID_HANDLER:-hybrid}
restart_cmd=${CONTAINERD_RESTART_CMD-systemctl restart containerd}

case $handler in
    *[!A-Za-z0-9_-]*|'') die "HYBRID_HANDLER must be letters, digits, '-' or '_': '$handler'" ;;
esac

begin_marker="# BEGIN hybrid runtime handler ($prog)"
end_marker="# END hybrid runtime handler"
changed=

# --- 1. the shim -----------------------------------------------------------
mkdir -p "$bin_dir"
target=$bin_dir/$shim_name
if [ -f "$target" ] && cmp -s "$shim_src" "$target"; then
    log "shim $target is up to date"
else
    # Copy next to the target and rename: a shim that is running keeps its
    # old inode, and nobody ever sees a half-written binary.
    tmp=$target.tmp.$$
    cp "$shim_src" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$target"
    log "installed $target"
    changed=1
fi

# --- 2. the runtime handler ------------------------------------------------
# The CRI plugin's table depends on the config's version: 1 (containerd 1.x
# default when absent), 2 (containerd 1.x), 3 (containerd 2.x).
config_version() {
    [ -f "$config" ] || { echo 2; return; }
    v=$(sed -n 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$config" | head -n 1)
    if [ -n "$v" ]; then
        echo "$v"
    elif grep -q '[^[:space:]]' "$config"; then
        echo 1
    else
        echo 2
    fi
}

version=$(config_version)
case $version in
    1) table="plugins.cri.containerd.runtimes.$handler" ;;
    2) table="plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.$handler" ;;
    3) table="plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.$handler" ;;
    *) die "$config: unsupported config version $version" ;;
esac

block() {
    echo "$begin_marker"
    echo "# CRI runtime handler \"$handler\" (Kubernetes RuntimeClass handler):"
    echo "# wasm and Linux containers through $shim_name."
    echo "[$table]"
    echo "  runtime_type = \"io.containerd.hybrid.v2\""
    echo "$end_marker"
}

mkdir -p "$(dirname "$config")"
new=$config.hybrid.$$
trap 'rm -f "$new" "$new.block"' EXIT
block >"$new.block"
if [ ! -f "$config" ] || ! grep -q '[^[:space:]]' "$config"; then
    { echo "version = 2"; echo; cat "$new.block"; } >"$new"
elif grep -qxF "$begin_marker" "$config"; then
    # Ours already: replace the marked block where it is (it may be older).
    awk -v begin="$begin_marker" -v end="$end_marker" -v blockfile="$new.block" '
        $0 == begin { skipping = 1; while ((getline line < blockfile) > 0) print line; next }
        skipping { if ($0 == end) skipping = 0; next }
        { print }
    ' "$config" >"$new"
else
    # Someone else's table of that name: do not add a second one (TOML
    # forbids it), leave their config alone.
    if grep -qF "[$table]" "$config"; then
        die "$config already defines [$table] (not added by $prog); remove it, or keep it and skip this installer"
    fi
    { cat "$config"; echo; cat "$new.block"; } >"$new"
fi

if [ -f "$config" ] && cmp -s "$new" "$config"; then
    log "$config already has the runtime handler \"$handler\""
else
    # Keep the owner and mode of an existing config; replace atomically.
    if [ -f "$config" ]; then
        chmod "$(stat -c %a "$config")" "$new" 2>/dev/null || true
        cp -p "$config" "$config.bak-hybrid"
    fi
    mv -f "$new" "$config"
    log "added the runtime handler \"$handler\" ([$table]) to $config"
    changed=1
fi

# --- 3. restart containerd -------------------------------------------------
if [ -z "$changed" ] && [ "${HYBRID_FORCE_RESTART:-}" != 1 ]; then
    log "nothing changed: containerd not restarted"
elif [ -z "$restart_cmd" ] || [ "$restart_cmd" = none ]; then
    log "containerd not restarted (CONTAINERD_RESTART_CMD=${restart_cmd:-}): restart it to load the handler"
else
    log "restarting containerd: $restart_cmd"
    sh -c "$restart_cmd" || die "restart failed: $restart_cmd"
fi
log "done: shim $target, handler \"$handler\" in $config"
