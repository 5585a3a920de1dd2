#!/usr/bin/env bash
# Assembles vflaunch's container image without a daemon or a registry:
#
#   bash resources/container/build-image.sh [BINARY] [OUTDIR]
#       BINARY  default target/release/vflaunch (cargo build --release)
#       OUTDIR  default target/image
#
# OUTDIR/rootfs/           the image's files: /usr/bin/vflaunch (stripped), the
#                          shared libraries and dynamic loader `ldd` names for
#                          it, /etc/passwd and /etc/group with the vflaunch user
#                          (uid/gid 107, KubeVirt's qemu user), empty mount points
# OUTDIR/oci/              an OCI image layout (index.json, blobs/sha256/...):
#                          one gzip layer of rootfs/, config User 107:107,
#                          Entrypoint /usr/bin/vflaunch
# OUTDIR/vflaunch-oci.tar  the same layout as one tar: `skopeo copy
#                          oci-archive:vflaunch-oci.tar ...`, `podman load -i`
#
# A real builder makes the same image from the rootfs with the Containerfile
# beside this script: `buildah bud -f resources/container/Containerfile OUTDIR`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-target/release/vflaunch}
out=${2:-target/image}
version=$("$binary" --version | awk '{print $2}')
rm -rf "$out"
root=$out/rootfs
mkdir -p "$root/usr/bin" "$root/etc" "$root/dev" "$root/proc" "$root/sys" \
    "$root/tmp" "$root/etc/vflaunch" "$root/etc/podinfo" "$root/vm" "$root/var/run/vflaunch"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/bin/vflaunch"
if command -v strip >/dev/null; then strip "$root/usr/bin/vflaunch"; fi
# Every library the dynamic loader resolves, at the path it resolves, and the
# loader itself; the vDSO is the kernel's.
ldd "$binary" | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}' |
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
printf 'root:x:0:0:root:/root:/sbin/nologin\nvflaunch:x:107:107:vflaunch:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nvflaunch:x:107:\n' >"$root/etc/group"
python3 "$here/oci_layout.py" "$root" "$out/oci" "$version"
tar -C "$out/oci" -cf "$out/vflaunch-oci.tar" .
echo "image: $out/vflaunch-oci.tar ($(du -h "$out/vflaunch-oci.tar" | cut -f1)), rootfs: $out/rootfs"
