#!/usr/bin/env bash
# resources/container/: build-image.sh assembles the OCI image; it is unpacked
# and run with chroot (container_check.py). Then buildah (installed from
# Debian's packages when missing) builds the Containerfile from the same
# rootfs, in a private storage under the temp dir, and its image passes the
# same checks; where buildah cannot be installed or cannot run, that part is
# SKIPPED. Needs root (chroot, mounts).
set -euo pipefail
if ((EUID != 0)); then
    skip container "not root: chroot and the bind mounts need it"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash resources/container/build-image.sh "$VFLAUNCH_BIN" "$tmp/out"
python3 "$DEPLOY_DIR/container_check.py" "$tmp/out/vflaunch-oci.tar" "$VFLAUNCH_BIN" "$tmp/check"

echo "-- buildah bud -f resources/container/Containerfile"
if ! command -v buildah >/dev/null && ! apt_install buildah; then
    skip container-buildah "buildah is not installed and apt-get could not install it"
    exit 0
fi
b=(buildah --root "$tmp/storage" --runroot "$tmp/runroot" --storage-driver vfs)
if ! "${b[@]}" from --name probe scratch >"$tmp/probe.log" 2>&1; then
    skip container-buildah "buildah does not run here: $(tail -1 "$tmp/probe.log")"
    exit 0
fi
"${b[@]}" rm probe >/dev/null
"${b[@]}" bud -q --isolation chroot -f resources/container/Containerfile -t localhost/vflaunch:test "$tmp/out" >/dev/null
"${b[@]}" push -q localhost/vflaunch:test "oci-archive:$tmp/buildah-oci.tar"
python3 "$DEPLOY_DIR/container_check.py" "$tmp/buildah-oci.tar" "$VFLAUNCH_BIN" "$tmp/check-buildah"
"${b[@]}" rmi -a -f >/dev/null
