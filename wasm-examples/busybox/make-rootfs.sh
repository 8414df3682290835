#!/usr/bin/env bash
# Build a minimal Linux root filesystem tarball from Debian's statically
# linked busybox (package busybox-static), reproducibly.
#
#   usage: make-rootfs.sh OUT.tar
#
# Contents: /bin/busybox plus one relative symlink per applet (the
# `busybox --list-full` paths, or /bin for `--list`), /etc/passwd, /etc/group
# (root, nobody), /tmp (1777), empty /proc /sys /dev, /root (0700).
# Environment: BUSYBOX (default /bin/busybox).
set -euo pipefail
umask 022
export LC_ALL=C

die() { echo "make-rootfs.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUT.tar"
out=$1
busybox=${BUSYBOX:-/bin/busybox}

[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static)"
if command -v file >/dev/null 2>&1; then
    file -L "$busybox" | grep -q 'statically linked' \
        || die "$busybox is not statically linked (install busybox-static, not busybox)"
elif command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
    die "$busybox is dynamically linked (install busybox-static, not busybox)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/hybrid-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var}
install -m 0755 "$busybox" "$root/bin/busybox"

# One symlink per applet. --list-full gives the install path
# (bin/ls, usr/sbin/chroot, ...); fall back to /bin for older busyboxes.
if applets=$("$busybox" --list-full 2>/dev/null) && [ -n "$applets" ]; then
    :
else
    applets=$("$busybox" --list | sed 's|^|bin/|')
fi
count=0
while IFS= read -r path; do
    [ -n "$path" ] || continue
    [ "${path##*/}" != busybox ] || continue
    # Relative link targets (bin/ls -> busybox, usr/bin/env ->
    # ../../bin/busybox) resolve the same inside the container and when the
    # unpacked rootfs is inspected from the host.
    case $path in
        */*) dir=${path%/*} ;;
        *) dir= ;;
    esac
    if [ "$dir" = bin ]; then
        target=busybox
    else
        up=
        rest=$dir
        while [ -n "$rest" ]; do
            up=../$up
            case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
        done
        target=${up}bin/busybox
    fi
    [ -z "$dir" ] || mkdir -p "$root/$dir"
    if [ ! -e "$root/$path" ] && [ ! -L "$root/$path" ]; then
        ln -s "$target" "$root/$path"
        count=$((count + 1))
    fi
done <<<"$applets"

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
GROUP
chmod 0644 "$root/etc/passwd" "$root/etc/group"

chmod 0755 "$root" "$root"/{bin,sbin,usr,usr/bin,usr/sbin,etc,proc,sys,dev,var}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

mkdir -p "$(dirname "$out")"
tmp_out=$out.tmp.$$
# Entries are named without a leading "./" (bin, bin/busybox, ...), in
# byte order, all owned by 0:0 with mtime 0: the same input gives the
# same bytes.
(cd "$root" && find . -mindepth 1 | sed 's|^\./||' | sort) >"$work/list"
tar --create --file="$tmp_out" --directory="$root" \
    --no-recursion --files-from="$work/list" \
    --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --format=gnu
mv -f "$tmp_out" "$out"
echo "make-rootfs.sh: wrote $out ($count applet links, $(du -h "$out" | cut -f1))"
