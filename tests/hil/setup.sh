#!/bin/bash
# HIL rig host setup (idempotent; no stdin needed, e.g. in CI; root only to install).
#
#  1. Adds a bookworm-backports apt source, derived at run time from the
#     machine's own bookworm source (same mirror URIs and Signed-By keyring).
#  2. Installs the host tools: qemu-system-x86 >= 10.0 from backports (the igb
#     NIC model with SR-IOV appeared in QEMU 8.0; 10.x is what the rig was
#     proven with), busybox-static, cpio, xz-utils, iproute2, nvme-cli,
#     socat, e2fsprogs.
#  3. Downloads the newest linux-image-6.12.*-amd64-unsigned .deb from
#     backports into $HIL_WORK/deb and extracts it into $HIL_WORK/kernel.
#     The same kernel is used for L1 (host side of the VF) and L2 (guest).
#
# Re-runs touch the network only when something is missing.
# Env: HIL_WORK (cache dir, default <repo>/target/hil)
# Options (for guest/run.sh; the default, no option, does all three steps):
#   --no-qemu    skip qemu-system-x86 (a host that boots guests on its own
#                KVM needs no QEMU)
#   --no-kernel  skip the kernel download
# With both, only busybox-static, cpio, xz-utils, iproute2, nvme-cli, socat and e2fsprogs are installed.
set -euo pipefail

WANT_QEMU=1 WANT_KERNEL=1
for arg in "$@"; do
    case "$arg" in
    --no-qemu) WANT_QEMU=0 ;;
    --no-kernel) WANT_KERNEL=0 ;;
    *) echo "[hil-setup] ERROR: unknown option '$arg' (--no-qemu, --no-kernel)" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HIL_WORK=${HIL_WORK:-$(cd "$HERE/../.." && pwd)/target/hil}
export DEBIAN_FRONTEND=noninteractive

log() { echo "[hil-setup] $*"; }
die() { echo "[hil-setup] ERROR: $*" >&2; exit 1; }

# Root is needed only when something has to be installed.
need_root() { [ "$(id -u)" = 0 ] || die "must run as root to $*"; }

# ---------------------------------------------------------------------------
# 1. bookworm-backports apt source
# ---------------------------------------------------------------------------
BPO_SRC=/etc/apt/sources.list.d/hil-bookworm-backports.sources

# Print "URIs|Components|Signed-By" of the first deb822 stanza whose Suites
# list contains the plain word "bookworm". Stanzas are separated by blank lines.
bookworm_stanza() {
    awk '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && suites ~ /(^| )bookworm( |$)/ && !done) {
                print uris "|" comps "|" signed; done = 1
            }
            types = suites = uris = comps = signed = ""
        }
        /^[[:space:]]*#/ { next }
        /^[[:space:]]*$/ { flush(); next }
        { key = $1; sub(/:$/, "", key); val = $0; sub(/^[^:]*:[[:space:]]*/, "", val) }
        key == "Types"      { types = val }
        key == "Suites"     { suites = val }
        key == "URIs"       { uris = val }
        key == "Components" { comps = val }
        key == "Signed-By"  { signed = val }
        END { flush() }
    ' "$1"
}

have_backports_source() {
    grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/
}

# (backports is where qemu and the kernel come from)
if [ "$WANT_QEMU$WANT_KERNEL" != 00 ] && ! have_backports_source; then
    SRC=/etc/apt/sources.list.d/debian.sources
    if [ -f "$SRC" ] && line=$(bookworm_stanza "$SRC") && [ -n "$line" ]; then
        IFS='|' read -r uris comps signed <<<"$line"
        [ -n "$uris" ] || die "no URIs in the bookworm stanza of $SRC"
        need_root "add an apt source"
        log "adding $BPO_SRC (derived from $SRC)"
        {
            echo "# Written by tests/hil/setup.sh, derived from $SRC"
            echo "Types: deb"
            echo "URIs: $uris"
            echo "Suites: bookworm-backports"
            echo "Components: ${comps:-main}"
            [ -z "$signed" ] || echo "Signed-By: $signed"
        } >"$BPO_SRC"
    elif [ -f /etc/apt/sources.list ] &&
        line=$(grep -m1 -E '^deb[[:space:]].*[[:space:]]bookworm[[:space:]]' /etc/apt/sources.list); then
        # Old one-line format: "deb [opts] URI bookworm main ..." -> same with backports.
        need_root "add an apt source"
        log "adding ${BPO_SRC%.sources}.list (derived from /etc/apt/sources.list)"
        # shellcheck disable=SC2001  # sed is clearer than ${//} for this word swap
        echo "$line" | sed -E 's/[[:space:]]bookworm[[:space:]]/ bookworm-backports /' >"${BPO_SRC%.sources}.list"
    else
        die "cannot find a bookworm apt source to derive bookworm-backports from"
    fi
fi

# ---------------------------------------------------------------------------
# 2. host packages
# ---------------------------------------------------------------------------
APT_UPDATED=0 # run apt-get update at most once, and only when something is missing
apt_update() {
    if [ "$APT_UPDATED" != 1 ]; then
        need_root "run apt-get"
        log "apt-get update"
        apt-get update -q >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

installed_version() {
    { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$3 == "installed" { print $4 }'
}

QEMU_MIN=1:10.0
qv=$(installed_version qemu-system-x86)
if [ "$WANT_QEMU" = 0 ]; then
    : # --no-qemu
elif [ -z "$qv" ] || ! dpkg --compare-versions "$qv" ge "$QEMU_MIN"; then
    apt_update
    log "installing qemu-system-x86 from bookworm-backports (have: ${qv:-none})"
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
    qv=$(installed_version qemu-system-x86)
    dpkg --compare-versions "$qv" ge "$QEMU_MIN" || die "qemu-system-x86 $qv < $QEMU_MIN"
fi
[ "$WANT_QEMU" = 0 ] || log "qemu-system-x86 $qv"

missing=()
# iproute2 and nvme-cli go into the rig's L1 (a VF's MAC; NVMe virt-mgmt);
# socat (hybrid vsock, VSOCK-*) and e2fsprogs (mke2fs -d, debugfs) into the virtio run's.
for p in busybox-static cpio xz-utils iproute2 nvme-cli socat e2fsprogs; do
    [ -n "$(installed_version "$p")" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------
# 3. Debian 6.12 kernel from backports (cached)
# ---------------------------------------------------------------------------
KDIR=$HIL_WORK/kernel
kernel_ok() { compgen -G "$KDIR/boot/vmlinuz-*" >/dev/null && compgen -G "$KDIR/lib/modules/*/kernel" >/dev/null; }

if [ "$WANT_KERNEL" = 1 ] && ! kernel_ok; then
    apt_update
    # Newest linux-image-6.12.<x>+deb12-amd64-unsigned (not -rt/-cloud) that
    # bookworm-backports carries (the flavour the rig was proven with). Newer
    # 6.12 builds may also be in bookworm-security; they are used only if
    # backports has none.
    names=$(apt-cache pkgnames linux-image-6.12 |
        grep -E '^linux-image-6\.12\.[0-9]+[^-]*-amd64-unsigned$' | sort -rV || true)
    [ -n "$names" ] || die "no linux-image-6.12.*-amd64-unsigned package found in the apt lists"
    pkg=
    for n in $names; do
        if apt-cache madison "$n" | grep ' bookworm-backports/' >/dev/null; then pkg=$n/bookworm-backports; break; fi
    done
    pkg=${pkg:-$(head -n1 <<<"$names")}
    log "downloading $pkg"
    mkdir -p "$HIL_WORK/deb"
    rm -f "$HIL_WORK"/deb/linux-image-*.deb
    # -o APT::Sandbox::User=root: the _apt user may not be able to write into $HIL_WORK.
    (cd "$HIL_WORK/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg")
    deb=$(ls "$HIL_WORK"/deb/linux-image-*.deb)
    log "extracting $(basename "$deb")"
    rm -rf "$KDIR.tmp"
    mkdir -p "$KDIR.tmp"
    dpkg-deb -x "$deb" "$KDIR.tmp"
    rm -rf "$KDIR"
    mv "$KDIR.tmp" "$KDIR"
    rm -f "$deb" # ~100 MB; the extracted tree is all the rig needs
    kernel_ok || die "$deb does not contain boot/vmlinuz-* and lib/modules/*"
fi
[ "$WANT_KERNEL" = 0 ] || log "kernel $(basename "$(ls -d "$KDIR"/lib/modules/*)") in $KDIR"
