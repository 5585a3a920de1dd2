#!/usr/bin/env bash
# Build the vflaunch guest initramfs: a static busybox plus an /init script,
# packed as a gzip-compressed cpio (newc) archive.
#
#   guest/build-initramfs.sh [OUTPUT] [MODULE.ko[.xz|.zst|.gz] ...]
#   guest/build-initramfs.sh [-o OUTPUT] [--modules-for KVER [--kmod-root DIR]]
#                            [MODULE.ko ...]
#
#   OUTPUT             archive to write (default: guest/build/initramfs.cpio.gz)
#   MODULE.ko ...      extra kernel modules to include; /init insmods them in
#                      the order given (dependencies first). Compressed
#                      modules are decompressed at build time.
#   --modules-for KVER add the NIC VF drivers (igbvf ixgbevf iavf mlx5_core
#                      virtio_pci virtio_net) and their dependencies, in load
#                      order, from a Debian kernel's /lib/modules/KVER: the
#                      fallback while the custom kernel (build-kernel.sh) is
#                      not built yet. Drivers built into that kernel are
#                      skipped.
#   --kmod-root DIR    look for lib/modules/KVER under DIR instead of /
#                      (e.g. a linux-image .deb unpacked with dpkg-deb -x).
#
# What /init does at boot (see write_init below):
#   mount proc/sys/dev, print "vflaunch guest up", insmod extra modules,
#   list PCI devices with their drivers, run udhcpc on every ethX, then
#   power off (`poweroff -f`) if the kernel command line has
#   vflaunch.poweroff, else start a shell on the console (power off when it
#   exits). Other command-line switches: vflaunch.netwait=SECONDS (how long
#   to wait for a NIC driver to register ethX, default 10), vflaunch.nodhcp.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTPUT=$SCRIPT_DIR/build/initramfs.cpio.gz
BUSYBOX=${BUSYBOX:-/bin/busybox}
MODULES=()            # extra .ko files, in load order
MODULES_FOR=""        # Debian kernel version to take the VF drivers from
KMOD_ROOT=/
# Drivers (module names) pulled in by --modules-for.
VF_DRIVERS=(igbvf ixgbevf iavf mlx5_core virtio_pci virtio_net)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-initramfs.sh: error: %s\n' "$*" >&2; exit 1; }
# need COMMAND PACKAGE: install PACKAGE (Debian) when COMMAND is missing.
APT_UPDATED=0
need() {
    command -v "$1" >/dev/null && return 0
    [[ $EUID -eq 0 ]] || die "$1 not found: run as root (to apt-get install $2) or install $2"
    if ((APT_UPDATED == 0)); then
        log "apt-get update"
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null ||
        die "apt-get install $2 failed"
    command -v "$1" >/dev/null || die "$1 still not found after installing $2"
}
usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

# --- Command line ----------------------------------------------------------
output_given=0
while (($#)); do
    case $1 in
        -o|--output) [[ $# -ge 2 ]] || die "$1 needs a path"; OUTPUT=$2; output_given=1; shift ;;
        --modules-for) [[ $# -ge 2 ]] || die "$1 needs a kernel version"; MODULES_FOR=$2; shift ;;
        --kmod-root) [[ $# -ge 2 ]] || die "$1 needs a directory"; KMOD_ROOT=$2; shift ;;
        -h|--help) usage 0 ;;
        -*) printf 'unknown option: %s\n\n' "$1" >&2; usage 2 ;;
        *.ko|*.ko.xz|*.ko.zst|*.ko.gz) MODULES+=("$1") ;;
        *)
            ((output_given == 0)) || die "more than one output path given ('$OUTPUT', '$1')"
            OUTPUT=$1; output_given=1 ;;
    esac
    shift
done

# Absolute output path: the archive is packed from inside the staging dir.
mkdir -p "$(dirname "$OUTPUT")"
OUTPUT=$(cd "$(dirname "$OUTPUT")" && pwd)/$(basename "$OUTPUT")

# --- Resolve --modules-for into an ordered module list -------------------------
# `modprobe --show-depends` prints "insmod PATH [params]" lines with the
# dependencies first, and "builtin NAME" for drivers built into that kernel.
if [[ -n $MODULES_FOR ]]; then
    [[ -d $KMOD_ROOT/lib/modules/$MODULES_FOR ]] ||
        die "no $KMOD_ROOT/lib/modules/$MODULES_FOR (install linux-image-$MODULES_FOR or pass --kmod-root)"
    need modprobe kmod
    need depmod kmod
    # A linux-image .deb unpacked by hand has no modules.dep (its postinst
    # runs depmod): generate it.
    if [[ ! -e $KMOD_ROOT/lib/modules/$MODULES_FOR/modules.dep ]]; then
        log "depmod -b $KMOD_ROOT $MODULES_FOR"
        depmod -b "$KMOD_ROOT" "$MODULES_FOR"
    fi
    declare -A seen=()
    for drv in "${VF_DRIVERS[@]}"; do
        deps=$(modprobe -d "$KMOD_ROOT" -S "$MODULES_FOR" --show-depends "$drv") ||
            die "modprobe cannot resolve '$drv' for kernel $MODULES_FOR"
        while read -r kind path _; do
            case $kind in
                insmod)
                    # (with -d, modprobe already prints KMOD_ROOT/lib/modules/...)
                    if [[ -z ${seen[$path]:-} ]]; then
                        seen[$path]=1
                        MODULES+=("$path")
                    fi ;;
                builtin) log "$drv: built into $MODULES_FOR, not needed as a module" ;;
            esac
        done <<<"$deps"
    done
fi

# --- Busybox -----------------------------------------------------------------
# Debian's busybox-static is a single static binary with all the applets
# /init needs (sh, mount, ip, udhcpc, insmod, setsid, cttyhack, poweroff).
if [[ ! -x $BUSYBOX && $BUSYBOX == /bin/busybox ]]; then
    need busybox busybox-static
fi
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (apt-get install busybox-static, or set BUSYBOX=)"
# (Outputs are captured first: `cmd | grep -q` can fail under pipefail when
# grep exits early and cmd gets SIGPIPE.)
if command -v readelf >/dev/null &&
    [[ $(LC_ALL=C readelf -l "$BUSYBOX") == *"program interpreter"* ]]; then
    die "$BUSYBOX is dynamically linked; install busybox-static (or set BUSYBOX=)"
fi
applets=$("$BUSYBOX" --list)
for applet in sh mount ip udhcpc insmod setsid cttyhack poweroff; do
    grep -qx "$applet" <<<"$applets" || die "$BUSYBOX lacks the '$applet' applet"
done
need cpio cpio
need gzip gzip
for ko in ${MODULES[@]+"${MODULES[@]}"}; do
    case $ko in
    *.ko.xz) need xz xz-utils ;;
    *.ko.zst) need zstd zstd ;;
    esac
done

# --- Staging tree ----------------------------------------------------------------
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/vflaunch-initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
cd "$STAGE"
mkdir -p bin sbin usr/bin usr/sbin dev proc sys tmp run root etc/udhcpc lib/modules
chmod 1777 tmp

cp "$BUSYBOX" bin/busybox
chmod 755 bin/busybox
# One symlink per applet, at the path busybox itself reports (bin/sh, ...).
while read -r applet; do
    [[ $applet == bin/busybox || -e $applet ]] && continue
    mkdir -p "$(dirname "$applet")"
    ln -s /bin/busybox "$applet"
done < <("$BUSYBOX" --list-full)

# The kernel opens /dev/console for /init before anything is mounted, so the
# node must be in the archive (creating it needs root). Without it, /init
# reopens the console itself once devtmpfs is mounted.
if [[ $EUID -eq 0 ]]; then
    mknod -m 600 dev/console c 5 1
    mknod -m 666 dev/null c 1 3
else
    log "warning: not root, /dev/console is not in the archive (/init will reopen it)"
fi

echo "vflaunch-guest" >etc/hostname
echo "root:x:0:0:root:/root:/bin/sh" >etc/passwd
echo "root:x:0:" >etc/group
: >etc/resolv.conf

# udhcpc calls this on lease events (busybox's default script path, so a
# bare `udhcpc -i eth0` in the shell works too).
cat >etc/udhcpc/default.script <<'EOF'
#!/bin/sh
# udhcpc event script: apply the DHCP lease to $interface.
# ($interface, $ip, $mask, $router, $dns, ... come from udhcpc.)
# shellcheck disable=SC2154
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip -4 addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
        if [ -n "$router" ]; then
            while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
            for r in $router; do
                ip -4 route add default via "$r" dev "$interface" && break
            done
        fi
        : >/etc/resolv.conf
        for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
        echo "udhcpc: $interface $1 $ip/${mask:-?} router ${router:--} dns ${dns:--}"
        ;;
    leasefail|nak)
        echo "udhcpc: $interface $1 ${message:-}"
        ;;
esac
exit 0
EOF
chmod 755 etc/udhcpc/default.script

# --- Extra kernel modules -----------------------------------------------------
# Stored flat in /lib/modules (decompressed) and listed, in load order, in
# /lib/modules/vflaunch.list for /init.
: >lib/modules/vflaunch.list
for ko in ${MODULES[@]+"${MODULES[@]}"}; do
    [[ -r $ko ]] || die "module not found: $ko"
    name=$(basename "$ko")
    case $name in
        *.ko.xz)  name=${name%.xz};  xz -dc "$ko" >"lib/modules/$name" ;;
        *.ko.zst) name=${name%.zst}; zstd -qdc "$ko" >"lib/modules/$name" ;;
        *.ko.gz)  name=${name%.gz};  gzip -dc "$ko" >"lib/modules/$name" ;;
        *)        cp "$ko" "lib/modules/$name" ;;
    esac
    echo "$name" >>lib/modules/vflaunch.list
    log "module: $name"
done

# --- /init ---------------------------------------------------------------------
cat >init <<'EOF'
#!/bin/sh
# /init of the vflaunch guest initramfs (busybox sh).
# Written by guest/build-initramfs.sh; kernel command-line switches:
#   vflaunch.poweroff        power off after the report instead of a shell
#   vflaunch.netwait=SECONDS wait this long for ethX to appear (default 10)
#   vflaunch.nodhcp          do not run udhcpc
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
export HOME=/root

# --- Pseudo filesystems, console ---
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# No-op if the kernel already gave us the console; needed if the archive
# had no /dev/console node (built without root).
[ -t 1 ] || exec </dev/console >/dev/console 2>&1
hostname -F /etc/hostname

CMDLINE=$(cat /proc/cmdline)
has_arg() {     # has_arg NAME: is NAME on the kernel command line?
    for a in $CMDLINE; do [ "$a" = "$1" ] && return 0; done
    return 1
}
arg_value() {   # arg_value NAME DEFAULT: value of NAME=VALUE on the cmdline
    for a in $CMDLINE; do
        case $a in "$1"=*) echo "${a#*=}"; return 0 ;; esac
    done
    echo "$2"
}

echo
echo "vflaunch guest up"
echo "kernel: $(uname -r)"
echo "cmdline: $CMDLINE"

# --- Extra modules (only when booting a kernel without built-in drivers) ---
while read -r ko; do
    [ -n "$ko" ] || continue
    if insmod "/lib/modules/$ko"; then
        echo "insmod: $ko"
    else
        echo "insmod: $ko FAILED"
    fi
done </lib/modules/vflaunch.list

# --- Wait for NIC drivers: a network-class (0x02xxxx) PCI device with a
# driver bound but no netdev yet. iavf, for one, registers its netdev
# asynchronously after probe; mlx5 puts it under an auxiliary device. ---
nic_pending() {
    for d in /sys/bus/pci/devices/*; do
        case $(cat "$d/class" 2>/dev/null) in 0x02*) ;; *) continue ;; esac
        [ -e "$d/driver" ] || continue          # no driver: waiting won't help
        for n in "$d"/net/* "$d"/*/net/*; do
            [ -e "$n" ] && continue 2           # this NIC has its netdev
        done
        return 0
    done
    return 1
}
wait_s=$(arg_value vflaunch.netwait 10)
while nic_pending && [ "$wait_s" -gt 0 ]; do
    sleep 1
    wait_s=$((wait_s - 1))
done

# --- PCI devices and their drivers ---
echo "PCI devices:"
for d in /sys/bus/pci/devices/*; do
    [ -e "$d" ] || { echo "  (none)"; break; }
    drv=-
    [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
    vendor=$(cat "$d/vendor") device=$(cat "$d/device") class=$(cat "$d/class")
    echo "  ${d##*/} [${vendor#0x}:${device#0x}] class ${class#0x} driver $drv"
done

# --- Network: loopback + DHCP on every ethX ---
ip link set lo up
for n in /sys/class/net/eth*; do
    [ -e "$n" ] || continue
    ifc=${n##*/}
    drv=-
    [ -e "$n/device/driver" ] && drv=$(basename "$(readlink "$n/device/driver")")
    echo "net: $ifc mac $(cat "$n/address") driver $drv"
    ip link set "$ifc" up
    if has_arg vflaunch.nodhcp; then
        continue
    fi
    # -n: give up if no lease, -q: exit once bound; 5 tries, 2 s apart.
    udhcpc -i "$ifc" -n -q -t 5 -T 2 -s /etc/udhcpc/default.script ||
        echo "net: $ifc: no DHCP lease"
done
ip addr

# --- Power off, or a shell on the console ---
if has_arg vflaunch.poweroff; then
    echo "vflaunch guest: powering off"
    sync
    poweroff -f
elif [ -t 0 ]; then
    echo "vflaunch guest: shell on the console (exit it to power off)"
    # setsid + cttyhack give the shell a controlling tty (job control, ^C).
    setsid cttyhack sh -l
    echo "vflaunch guest: shell exited, powering off"
    sync
    poweroff -f
else
    echo "vflaunch guest: no interactive console, powering off"
    sync
    poweroff -f
fi
# PID 1 must never exit (the kernel would panic); only reached if the
# power-off request failed.
while :; do sleep 3600; done
EOF
chmod 755 init

# --- Pack ------------------------------------------------------------------------
log "packing $OUTPUT"
# Sorted names + root ownership + --reproducible: same inputs, same archive.
find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet |
    gzip -9 -n >"$OUTPUT.tmp"
mv "$OUTPUT.tmp" "$OUTPUT"

# --- Check ------------------------------------------------------------------------
listing=$(gzip -dc "$OUTPUT" | cpio -it --quiet)
for want in init bin/busybox bin/sh etc/udhcpc/default.script; do
    grep -qx "$want" <<<"$listing" || die "$want missing from $OUTPUT"
done
echo "Wrote $OUTPUT ($(stat -c %s "$OUTPUT") bytes, $(wc -l <<<"$listing") entries," \
    "${#MODULES[@]} extra module(s))"
