#!/usr/bin/env bash
# Build the vflaunch guest kernel (bzImage) from Debian's linux-source package.
#
#   guest/build-kernel.sh [--config-only] [-j N] [--series 6.1|6.12|auto]
#                         [--backports] [--out DIR]
#
# Steps:
#   1. apt-get install linux-source-<series> + kernel build dependencies
#      (only what is missing; needs root for that part).
#   2. Unpack /usr/src/linux-source-<series>.tar.xz into $OUT.
#   3. make defconfig (x86_64), merge guest/vflaunch.config with
#      scripts/kconfig/merge_config.sh, make olddefconfig.
#   4. Verify that every CONFIG_*=<value> line of the fragment survived in
#      .config; fail with the list of dropped options otherwise.
#   5. make bzImage and copy it to $OUT/bzImage (skipped with --config-only).
#
# Environment:
#   OUT=DIR        output directory (default: guest/build, git-ignored)
#   FRAGMENT=FILE  config fragment (default: guest/vflaunch.config)
#
# On a 2-core machine, run the full build niced so it does not starve other
# work:  nice -n 19 guest/build-kernel.sh -j1
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$SCRIPT_DIR/build}
FRAGMENT=${FRAGMENT:-$SCRIPT_DIR/vflaunch.config}
CONFIG_ONLY=0
JOBS=$(nproc)
SERIES=auto          # linux-source-<series>; auto = newest one apt offers
USE_BACKPORTS=0
ARCH=x86_64
export ARCH

# Kernel build dependencies (Debian package names).
BUILD_DEPS=(build-essential bc bison flex libelf-dev libssl-dev cpio kmod
            xz-utils zstd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-kernel.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

# --- Command line ----------------------------------------------------------
while (($#)); do
    case $1 in
        --config-only) CONFIG_ONLY=1 ;;
        -j|--jobs) [[ $# -ge 2 ]] || die "$1 needs a number"; JOBS=$2; shift ;;
        -j*) JOBS=${1#-j} ;;
        --series) [[ $# -ge 2 ]] || die "--series needs a value"; SERIES=$2; shift ;;
        --backports) USE_BACKPORTS=1 ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT=$2; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'unknown argument: %s\n\n' "$1" >&2; usage 2 ;;
    esac
    shift
done
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "-j wants a positive number, got '$JOBS'"
[[ -r $FRAGMENT ]] || die "config fragment not found: $FRAGMENT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
FRAGMENT=$(cd "$(dirname "$FRAGMENT")" && pwd)/$(basename "$FRAGMENT")

# Elapsed-time helper for the phase timings printed at the end.
T0=$SECONDS
TIMINGS=()
phase_done() { TIMINGS+=("$(printf '%-22s %5ds' "$1" $((SECONDS - T0)))"); T0=$SECONDS; }

# --- apt helpers -----------------------------------------------------------
APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    log "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
}

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]
}

# Install the given packages that are not installed yet.
apt_install_missing() {
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    [[ $EUID -eq 0 ]] || die "need root to install: ${missing[*]}"
    apt_update_once
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >"$OUT/apt-install.log" 2>&1 ||
        { tail -n 30 "$OUT/apt-install.log" >&2; die "apt-get install failed (see $OUT/apt-install.log)"; }
}

# Print the first mirror URI that serves the release's main suite, read
# from the system's own apt sources (deb822 *.sources first, then the
# one-line sources.list format). No mirror host is hard-coded here.
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

# Add <codename>-backports as an apt source (deb822), derived at run time.
enable_backports() {
    local codename mirror list=/etc/apt/sources.list.d/vflaunch-backports.sources
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot tell the Debian codename from /etc/os-release"
    # Any existing source for <codename>-backports (ours or someone else's)
    # is enough; a second one only makes apt warn about duplicates.
    if [[ -n $(derive_debian_mirror "${codename}-backports") ]]; then
        log "${codename}-backports is already an apt source"
        apt_update_once
        return 0
    fi
    mirror=$(derive_debian_mirror "$codename" | head -n1)
    [[ -n $mirror ]] || die "no apt source for '$codename' found to derive a backports source from"
    [[ $EUID -eq 0 ]] || die "need root to add $list"
    log "adding ${codename}-backports from $mirror -> $list"
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

# Newest linux-source-X.Y that apt has a candidate for.
newest_source_series() {
    local pkg candidates
    candidates=$(apt-cache pkgnames linux-source- 2>/dev/null |
        grep -E '^linux-source-[0-9]+\.[0-9]+$' | sort -V -r) || true
    for pkg in $candidates; do
        if [[ $(apt-cache policy "$pkg") == *"Candidate: "[0-9]* ]]; then
            echo "${pkg#linux-source-}"
            return 0
        fi
    done
}

# --- 1. Packages -------------------------------------------------------------
((USE_BACKPORTS)) && enable_backports

if [[ $SERIES == auto ]]; then
    SERIES=$(newest_source_series)
    if [[ -z $SERIES && $EUID -eq 0 ]]; then
        apt_update_once
        SERIES=$(newest_source_series)
    fi
    if [[ -z $SERIES ]]; then
        # Fall back to whatever is already unpacked under /usr/src.
        tb=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' 2>/dev/null | sort -V | tail -n1)
        [[ -n $tb ]] || die "apt offers no linux-source-X.Y package (try --backports)"
        SERIES=$(basename "$tb" .tar.xz); SERIES=${SERIES#linux-source-}
    fi
fi
SRC_PKG=linux-source-$SERIES
log "kernel source: $SRC_PKG ($(apt-cache policy "$SRC_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}'))"

apt_install_missing "$SRC_PKG" "${BUILD_DEPS[@]}"
SRC_VERSION=$(dpkg-query -W -f='${Version}' "$SRC_PKG")
TARBALL=/usr/src/linux-source-$SERIES.tar.xz
[[ -r $TARBALL ]] || die "$TARBALL missing although $SRC_PKG is installed"
phase_done "packages"

# --- 2. Unpack ---------------------------------------------------------------
# Re-unpack only when the package version changed; the stamp file records it.
SRC=$OUT/linux-source-$SERIES
STAMP=$SRC/.vflaunch-source-version
if [[ -f $STAMP && $(<"$STAMP") == "$SRC_VERSION" ]]; then
    log "reusing $SRC ($SRC_PKG $SRC_VERSION)"
else
    log "unpacking $TARBALL -> $OUT"
    rm -rf "$SRC"
    tar -xf "$TARBALL" -C "$OUT"
    [[ -f $SRC/Makefile ]] || die "unexpected tarball layout: no $SRC/Makefile"
    echo "$SRC_VERSION" >"$STAMP"
fi
phase_done "unpack"

# --- 3. Configure ------------------------------------------------------------
cd "$SRC"
log "make defconfig (ARCH=$ARCH)"
make -s defconfig
log "merging $FRAGMENT"
# -m: only merge into .config; olddefconfig below resolves dependencies.
scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" >"$OUT/merge_config.log" 2>&1 ||
    { cat "$OUT/merge_config.log" >&2; die "merge_config.sh failed"; }
log "make olddefconfig"
make -s olddefconfig
# syncconfig writes include/config/auto.conf, so that `make kernelrelease`
# below already includes CONFIG_LOCALVERSION before anything is built.
make -s syncconfig
cp .config "$OUT/kernel.config"
phase_done "configure"

# --- 4. Verify -----------------------------------------------------------------
# Every "CONFIG_X=value" line of the fragment must appear verbatim in
# .config. "# CONFIG_X is not set" lines only trim the build: a mismatch
# there is reported as a warning.
actual_value() {   # how .config ended up defining $1
    grep -m1 -E "^(# )?$1[= ]" .config || echo "(absent: unknown symbol or unmet dependency)"
}
verified=() dropped=() warnings=()
while IFS= read -r line; do
    case $line in
        CONFIG_*=*)
            sym=${line%%=*}
            if grep -qxF -- "$line" .config; then
                verified+=("$line")
            else
                dropped+=("$(printf '%-32s -> %s' "$line" "$(actual_value "$sym")")")
            fi ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            if grep -q "^$sym=" .config; then
                warnings+=("$(printf '%-32s -> %s' "$sym off" "$(actual_value "$sym")")")
            fi ;;
    esac
done <"$FRAGMENT"

echo "Fragment options verified in .config (${#verified[@]}):"
printf '  ok  %s\n' "${verified[@]}"
if ((${#warnings[@]})); then
    echo "Warning: trim options re-enabled by other options (${#warnings[@]}):"
    printf '  !!  %s\n' "${warnings[@]}"
fi
if ((${#dropped[@]})); then
    echo "ERROR: fragment options that did not survive olddefconfig (${#dropped[@]}):" >&2
    printf '  XX  %s\n' "${dropped[@]}" >&2
    echo "(a dependency is probably missing from $FRAGMENT; see $OUT/merge_config.log)" >&2
    exit 1
fi
KRELEASE=$(make -s kernelrelease)
echo "All ${#verified[@]} fragment options verified ($SRC_PKG $SRC_VERSION, kernel $KRELEASE)."
echo "Final config: $OUT/kernel.config"
phase_done "verify"

print_timings() { printf 'Timings:\n'; printf '  %s\n' "${TIMINGS[@]}"; }

if ((CONFIG_ONLY)); then
    print_timings
    exit 0
fi

# --- 5. Build ------------------------------------------------------------------
log "make -j$JOBS bzImage (kernel $KRELEASE)"
make -j"$JOBS" bzImage
cp arch/x86/boot/bzImage "$OUT/bzImage"
echo "$KRELEASE" >"$OUT/bzImage.release"
phase_done "bzImage"
echo "Built $OUT/bzImage ($(stat -c %s "$OUT/bzImage") bytes, $KRELEASE)"
print_timings
