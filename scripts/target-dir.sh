#!/usr/bin/env bash
# Prints where cargo puts the workspace's binaries for a profile (debug or
# release): target/TRIPLE/PROFILE, the triple being .cargo/config.toml's
# build.target.
#
# Usage: scripts/target-dir.sh [debug|release]   (default debug)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-debug}
triple=$(sed -n 's/^target *= *"\(.*\)"/\1/p' "$repo/.cargo/config.toml")
[ -n "$triple" ] || { echo "target-dir.sh: no build.target in $repo/.cargo/config.toml" >&2; exit 1; }
echo "$repo/target/$triple/$profile"
