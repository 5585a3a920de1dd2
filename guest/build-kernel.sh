#!/usr/bin/env bash
# Build one of vflaunch's kernels from Debian's linux-source package, or
# reuse the cached build of the same inputs.
#
#   guest/build-kernel.sh [--kernel guest|host] [--config-only] [-j N]
#                         [--series 6.12|6.1|auto] [--backports] [--out DIR]
#
#   --kernel guest  (default) the L2 guest: base.config + vflaunch.config,
#                   every VF driver built in, no modules
#   --kernel host   the rig's L1 host: base.config + host.config (intel-iommu
#                   with interrupt remapping, iommufd, vfio cdev + type1, KVM
#                   with kvm_amd, igb with SR-IOV, nvme), no modules
#
# Steps:
#   1. apt-get install linux-source-<series> and the build tools (only what
#      is missing; root is needed for that part only).
#   2. The cache key: sha256 of the fragments, the source package's version
#      and this script. If $CACHE/<kernel>-<key>/bzImage exists, that is the
#      result and nothing is built.
#   3. Unpack the source into $CACHE/src (again only when its version
#      changes) and configure out of tree in $CACHE/obj-<kernel>:
#      merge_config.sh -n (= make allnoconfig with the fragments as
#      KCONFIG_ALLCONFIG), then make olddefconfig.
#   4. Check that every CONFIG_*=<value> line of the fragments survived in
#      .config; fail with the list of dropped options otherwise.
#   5. make bzImage (skipped with --config-only) and store bzImage, vmlinux
#      (ELF with the PVH note), kernel.config and the build time in
#      $CACHE/<kernel>-<key>/.
#
# Output: the last line on stdout is the result directory (so that
#   dir=$(guest/build-kernel.sh) works); everything else goes to stderr.
#   --out DIR also copies bzImage, vmlinux and kernel.config into DIR.
#
# Environment:
#   VFLAUNCH_KERNEL_CACHE  cache directory (default /var/cache/vflaunch/kernels
#                          for root, else ~/.cache/vflaunch/kernels); it lives
#                          outside the clone, so a new clone reuses it
#   FRAGMENT=FILE          a custom fragment instead of the kernel's own one
#                          (still on top of base.config)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")
KERNEL=guest
CONFIG_ONLY=0
JOBS=$(nproc)
SERIES=auto # linux-source-<series>; auto = newest one apt offers
USE_BACKPORTS=0
OUT=
export ARCH=x86_64
if [[ $EUID -eq 0 ]]; then
    CACHE=${VFLAUNCH_KERNEL_CACHE:-/var/cache/vflaunch/kernels}
else
    CACHE=${VFLAUNCH_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vflaunch/kernels}
fi

# Build tools (Debian package names). xz-utils unpacks the source tarball;
# libelf-dev is for objtool, libssl-dev for the certificate tools.
BUILD_DEPS=(build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils)

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { printf '[build-kernel] ERROR: %s\n' "$*" >&2; exit 1; }
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-0}"
}

# --- Command line ----------------------------------------------------------
while (($#)); do
    case $1 in
    --kernel) [[ $# -ge 2 ]] || die "--kernel needs guest or host"; KERNEL=$2; shift ;;
    --kernel=*) KERNEL=${1#*=} ;;
    --config-only) CONFIG_ONLY=1 ;;
    -j | --jobs) [[ $# -ge 2 ]] || die "$1 needs a number"; JOBS=$2; shift ;;
    -j*) JOBS=${1#-j} ;;
    --series) [[ $# -ge 2 ]] || die "--series needs a value"; SERIES=$2; shift ;;
    --backports) USE_BACKPORTS=1 ;;
    --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT=$2; shift ;;
    -h | --help) usage 0 ;;
    *) printf 'unknown argument: %s\n\n' "$1" >&2; usage 2 ;;
    esac
    shift
done
case $KERNEL in
guest) FRAGMENTS=("$SCRIPT_DIR/base.config" "${FRAGMENT:-$SCRIPT_DIR/vflaunch.config}") ;;
host) FRAGMENTS=("$SCRIPT_DIR/base.config" "${FRAGMENT:-$SCRIPT_DIR/host.config}") ;;
*) die "--kernel takes guest or host, not '$KERNEL'" ;;
esac
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "-j wants a positive number, got '$JOBS'"
for f in "${FRAGMENTS[@]}"; do [[ -r $f ]] || die "config fragment not found: $f"; done
mkdir -p "$CACHE" || die "cannot create the cache $CACHE (set VFLAUNCH_KERNEL_CACHE)"
CACHE=$(cd "$CACHE" && pwd)

T0=$SECONDS
TIMINGS=()
phase_done() { TIMINGS+=("$(printf '%-10s %4ds' "$1" $((SECONDS - T0)))"); T0=$SECONDS; }
print_timings() { log "timings ($KERNEL):$(printf ' %s,' "${TIMINGS[@]}" | sed 's/,$//')"; }

# One build at a time per cache (the source tree and the object dirs are shared).
exec 8>"$CACHE/.lock"
if ! flock -n 8; then
    log "waiting for another build-kernel.sh on $CACHE"
    flock 8
fi
T0=$SECONDS # (the wait is not a phase)

# --- apt helpers -----------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    [[ $EUID -eq 0 ]] || die "need root for apt-get update (or install linux-source-X.Y and ${BUILD_DEPS[*]} by hand)"
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
}
is_installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }
apt_install_missing() {
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$CACHE/apt-install.log" 2>&1 ||
        { tail -n 30 "$CACHE/apt-install.log" >&2; die "apt-get install failed (see $CACHE/apt-install.log)"; }
}

# First mirror URI that serves suite $1, from the system's own apt sources
# (deb822 *.sources, then one-line *.list). No mirror host is written here.
derive_debian_mirror() {
    local codename=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v cn="$codename" '
            function flush() { if (uri != "" && hit) { print uri; done_ = 1; exit } uri = ""; hit = 0 }
            /^[[:space:]]*$/ { flush(); next }
            /^URIs:/   { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == cn) hit = 1 }
            END { if (!done_) flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        sed -E 's/\[[^]]*\]//' "$f" | awk -v cn="$codename" '$1 == "deb" && $3 == cn { print $2 }'
    done
}

# --backports: add <codename>-backports as an apt source, derived at run time.
enable_backports() {
    local codename mirror list=/etc/apt/sources.list.d/vflaunch-backports.sources
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell the Debian codename from /etc/os-release"
    if [[ -n $(derive_debian_mirror "${codename}-backports") ]]; then
        log "${codename}-backports is already an apt source"
        apt_update_once
        return 0
    fi
    mirror=$(derive_debian_mirror "$codename" | head -n1)
    [[ -n $mirror ]] || die "no apt source for '$codename' found to derive a backports source from"
    [[ $EUID -eq 0 ]] || die "need root to add $list"
    log "adding ${codename}-backports from the system's $codename source -> $list"
    {
        echo "# Added by vflaunch guest/build-kernel.sh --backports"
        echo "Types: deb"
        echo "URIs: $mirror"
        echo "Suites: ${codename}-backports"
        echo "Components: main"
        if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
            echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        fi
    } >"$list"
    APT_UPDATED=0
    apt_update_once
}

# Newest linux-source-X.Y that is installed or that apt has a candidate for.
newest_source_series() {
    local pkg
    for pkg in $( { apt-cache pkgnames linux-source- 2>/dev/null || true; } |
        grep -E '^linux-source-[0-9]+\.[0-9]+$' | sort -V -r); do
        if is_installed "$pkg" || [[ $(apt-cache policy "$pkg") == *"Candidate: "[0-9]* ]]; then
            echo "${pkg#linux-source-}"
            return 0
        fi
    done
}

# --- 1. Packages -------------------------------------------------------------
((USE_BACKPORTS)) && enable_backports
if [[ $SERIES == auto ]]; then
    SERIES=$(newest_source_series)
    if [[ -z $SERIES ]]; then
        apt_update_once
        SERIES=$(newest_source_series)
    fi
    [[ -n $SERIES ]] || die "apt offers no linux-source-X.Y package (try --backports)"
fi
SRC_PKG=linux-source-$SERIES
apt_install_missing "$SRC_PKG" "${BUILD_DEPS[@]}"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
TARBALL=/usr/src/linux-source-$SERIES.tar.xz
[[ -r $TARBALL ]] || die "$TARBALL missing although $SRC_PKG is installed (apt-get install --reinstall $SRC_PKG)"
phase_done packages

# --- 2. Cache key --------------------------------------------------------------
KEY=$({
    for f in "${FRAGMENTS[@]}"; do echo "== $(basename "$f")"; cat "$f"; done
    echo "== $SRC_PKG $SRC_VERSION"
    echo "== build-kernel.sh"
    cat "$SCRIPT"
} | sha256sum | cut -c1-16)
RESULT=$CACHE/$KERNEL-$KEY

copy_out() {
    [[ -n $OUT ]] || return 0
    mkdir -p "$OUT"
    cp "$RESULT/bzImage" "$RESULT/vmlinux" "$RESULT/kernel.config" "$OUT/"
    log "copied bzImage, vmlinux and kernel.config to $OUT"
}
if ((CONFIG_ONLY == 0)) && [[ -f $RESULT/bzImage ]]; then
    log "$KERNEL kernel $(cat "$RESULT/release") from the cache: $RESULT (built in $(cat "$RESULT/build-seconds")s; key = fragments + $SRC_PKG $SRC_VERSION + build-kernel.sh)"
    copy_out
    echo "$RESULT"
    exit 0
fi

# --- 3. Unpack, configure ------------------------------------------------------
SRC=$CACHE/src/linux-source-$SERIES
STAMP=$SRC/.vflaunch-source-version
if [[ -f $STAMP && $(<"$STAMP") == "$SRC_VERSION" ]]; then
    log "reusing $SRC ($SRC_PKG $SRC_VERSION)"
else
    log "unpacking $TARBALL -> $CACHE/src"
    rm -rf "$SRC" "$CACHE"/obj-*
    mkdir -p "$CACHE/src"
    tar -xf "$TARBALL" -C "$CACHE/src"
    [[ -f $SRC/Makefile ]] || die "unexpected tarball layout: no $SRC/Makefile"
    echo "$SRC_VERSION" >"$STAMP"
fi
phase_done unpack

OBJ=$CACHE/obj-$KERNEL
mkdir -p "$OBJ"
log "configuring $KERNEL: allnoconfig + $(for f in "${FRAGMENTS[@]}"; do printf '%s ' "$(basename "$f")"; done)in $OBJ"
# -n: allnoconfig with the merged fragments as KCONFIG_ALLCONFIG, so that
# options the fragments do not ask for stay off.
(cd "$SRC" && scripts/kconfig/merge_config.sh -n -O "$OBJ" "${FRAGMENTS[@]}") >"$OBJ/merge_config.log" 2>&1 ||
    { tail -n 30 "$OBJ/merge_config.log" >&2; die "merge_config.sh failed (see $OBJ/merge_config.log)"; }
make -s -C "$SRC" O="$OBJ" olddefconfig >>"$OBJ/merge_config.log" 2>&1 ||
    { tail -n 30 "$OBJ/merge_config.log" >&2; die "make olddefconfig failed"; }
make -s -C "$SRC" O="$OBJ" syncconfig >/dev/null 2>&1 # so that kernelrelease has LOCALVERSION
phase_done configure

# --- 4. Verify -----------------------------------------------------------------
# Every "CONFIG_X=value" line must appear verbatim in .config; "# CONFIG_X
# is not set" lines only trim the build, a mismatch there is a warning.
actual_value() { grep -m1 -E "^(# )?$1[= ]" "$OBJ/.config" || echo "(absent: unknown symbol or unmet dependency)"; }
verified=0 dropped=() warnings=()
for f in "${FRAGMENTS[@]}"; do
    fname=$(basename "$f")
    while IFS= read -r line; do
        case $line in
        CONFIG_*=*)
            if grep -qxF -- "$line" "$OBJ/.config"; then
                verified=$((verified + 1))
            else
                dropped+=("$(printf '%-32s -> %s (%s)' "$line" "$(actual_value "${line%%=*}")" "$fname")")
            fi
            ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }
            sym=${sym%% *}
            if grep -q "^$sym=" "$OBJ/.config"; then
                warnings+=("$(printf '%-32s -> %s' "$sym off" "$(actual_value "$sym")")")
            fi
            ;;
        esac
    done <"$f"
done
if ((${#warnings[@]})); then
    log "warning: trim options turned on again by other options:"
    printf '  !!  %s\n' "${warnings[@]}" >&2
fi
if ((${#dropped[@]})); then
    log "fragment options that did not survive olddefconfig (${#dropped[@]}):"
    printf '  XX  %s\n' "${dropped[@]}" >&2
    die "a dependency is probably missing from the fragment (see $OBJ/merge_config.log)"
fi
KRELEASE=$(make -s -C "$SRC" O="$OBJ" kernelrelease)
log "all $verified fragment options survived olddefconfig ($SRC_PKG $SRC_VERSION, $KRELEASE, $(grep -c '=y$' "$OBJ/.config") options =y)"
phase_done verify
if ((CONFIG_ONLY)); then
    cp "$OBJ/.config" "$CACHE/$KERNEL.config"
    log "config only: $CACHE/$KERNEL.config"
    print_timings
    echo "$OBJ"
    exit 0
fi

# --- 5. Build ------------------------------------------------------------------
BLOG=$OBJ/build.log
log "make -j$JOBS bzImage ($KERNEL, $KRELEASE; log: $BLOG)"
TB=$SECONDS
if ! make -C "$SRC" O="$OBJ" -j"$JOBS" bzImage >"$BLOG" 2>&1; then
    tail -n 40 "$BLOG" >&2
    die "kernel build failed (see $BLOG)"
fi
BUILD_S=$((SECONDS - TB))
phase_done build
TMP=$CACHE/.tmp-$KERNEL-$KEY
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$OBJ/arch/x86/boot/bzImage" "$OBJ/vmlinux" "$TMP/"
cp "$OBJ/.config" "$TMP/kernel.config"
cp "$BLOG" "$TMP/build.log"
echo "$KRELEASE" >"$TMP/release"
echo "$BUILD_S" >"$TMP/build-seconds"
echo "$SRC_PKG $SRC_VERSION" >"$TMP/source"
rm -rf "$RESULT"
mv "$TMP" "$RESULT"
# Keep the three newest results of this kernel.
find "$CACHE" -maxdepth 1 -name "$KERNEL-*" -type d -printf '%T@ %p\n' | sort -rn | tail -n +4 |
    cut -d' ' -f2- | while IFS= read -r old; do rm -rf "$old"; done
log "built $KERNEL kernel $KRELEASE: bzImage $(($(stat -c %s "$RESULT/bzImage") / 1024)) KiB; kernel build time ${BUILD_S}s with -j$JOBS on $(nproc) cores -> $RESULT"
print_timings
copy_out
echo "$RESULT"
