#!/usr/bin/env bash
# Run a Linux guest under vflaunch: one command, also on a fresh machine.
#
#   guest/run.sh [--direct|--nested] [--no-vf] [--debian-kernel] [--poweroff]
#                [vflaunch run options...]
#
# Every tool it needs is installed by it or by the scripts it calls (root is
# needed the first time, for apt-get). What it does:
#   1. cargo build --release (vflaunch),
#   2. kernel: $KERNEL, else the project's guest kernel with the VF drivers
#      built in (guest/build-kernel.sh --kernel guest: built once, ~5 min on 2
#      cores, then reused from /var/cache/vflaunch/kernels), or with
#      --debian-kernel Debian's 6.12 kernel, downloaded and unpacked into
#      target/hil/kernel by tests/hil/setup.sh,
#   3. initramfs: $INITRAMFS, else guest/build-initramfs.sh's busybox image
#      (banner "vflaunch guest up", PCI list, DHCP on every ethX, then a shell
#      or power off). With Debian's kernel it also gets that kernel's VF
#      driver modules (igbvf, ixgbevf, iavf, mlx5_core, virtio_net and their
#      dependencies),
#   4. boots it:
#      --direct  `vflaunch run` on this machine's /dev/kvm. The serial
#                console is this terminal; Ctrl-A x quits.
#      --nested  inside a QEMU TCG "L1" (the tests/hil rig): QEMU emulates a
#                CPU with SVM, an intel-iommu and an igb NIC with SR-IOV; L1
#                (Debian's kernel) loads kvm_amd, binds the NIC's VF0 to
#                vfio-pci and runs vflaunch with that VF on its serial console,
#                which QEMU connects to this terminal. The guest's igbvf drives
#                the VF and gets a DHCP lease through it from QEMU's user
#                network. For hosts whose KVM cannot boot Linux, or that have
#                no /dev/kvm. Slow (everything is emulated): ~10 s until L1
#                starts vflaunch, ~10 s more to the guest's shell. Ctrl-A x
#                quits (QEMU's escape here; Ctrl-A c is QEMU's monitor).
#      neither   --direct if a short probe boot on /dev/kvm works, else
#                --nested; one line says which and why (see probe_direct).
#   --no-vf          --nested without the emulated NIC and VF
#   --debian-kernel  Debian's kernel + modules instead of the project's kernel
#   --poweroff       same as GUEST_POWEROFF=1.
#
# Everything else goes to `vflaunch run` (see `vflaunch run --help`):
# --memory, --cpus, --cmdline, --device, ... `--kernel X`/`--initramfs X`
# there are the same as KERNEL=X/INITRAMFS=X.
#
# Exit code: vflaunch's (0 = the guest powered off), also with --nested.
# Besides: 124 = GUEST_TIMEOUT expired; 125 = the nested L1 failed before
# vflaunch ran or ended without reporting its exit code; 130 = quit with
# Ctrl-A x (as vflaunch's own Ctrl-A x); 2 = usage error.
#
# Env:
#   KERNEL, INITRAMFS    guest kernel / initramfs (defaults above)
#   GUEST_POWEROFF       1 = add vflaunch.poweroff to the guest command line:
#                        the guest prints its report and powers off, no shell.
#                        Default 1 when stdin is not a terminal or $CI is set
#                        (CI=true guest/run.sh </dev/null just works), else 0.
#   GUEST_TIMEOUT        seconds before the run is killed (exit 124); default
#                        600 when stdin is not a terminal, else 0 = no limit
#   GUEST_PROBE_TIMEOUT  seconds the auto-mode probe may take (default 15)
#   GUEST_NESTED_VF      0 = same as --no-vf (default 1)
#   GUEST_L1_ARGS        extra L1 kernel args (default "quiet"; "loglevel=7"
#                        shows L1's boot log)
#   GUEST_SKIP_BUILD     1 = no cargo, use the existing target/release/vflaunch
#   GUEST_WORK           work dir (default <repo>/target/guest)
#   HIL_WORK             tests/hil's cache: kernel, L1 lock (<repo>/target/hil)
#   RUST_LOG             vflaunch's log filter, passed into L1 as well
#
# Examples:
#   bash guest/run.sh                             # shell in the guest (nested here: with a VF and a lease)
#   guest/run.sh --memory 1G --cpus 2 --device 0000:03:02.1
#   CI=true guest/run.sh --nested </dev/null      # banner, lease, power off, exit 0
#   KERNEL=my/bzImage guest/run.sh --direct --cmdline "console=ttyS0 earlyprintk=serial"
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
HIL=$REPO/tests/hil
export HIL_WORK=${HIL_WORK:-$REPO/target/hil}
GUEST_WORK=${GUEST_WORK:-$REPO/target/guest}
VFL=$REPO/target/release/vflaunch
DEFAULT_CMDLINE="console=ttyS0 panic=-1" # vflaunch's default

say() { echo "[guest] $*" >&2; }
die() { echo "[guest] ERROR: $1" >&2; exit "${2:-1}"; } # message [exit code]
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }

# --- command line --------------------------------------------------------------
MODE=auto
POWEROFF=${GUEST_POWEROFF:-}
GUEST_NESTED_VF=${GUEST_NESTED_VF:-1}
DEBIAN_KERNEL=0
while (($#)); do
    case $1 in
    --direct | --nested) MODE=${1#--} ;;
    --poweroff) POWEROFF=1 ;;
    --no-vf) GUEST_NESTED_VF=0 ;;
    --debian-kernel) DEBIAN_KERNEL=1 ;;
    -h | --help) usage 0 ;;
    *) break ;; # the rest is for vflaunch run
    esac
    shift
done

# Take out of the vflaunch arguments what this script handles itself
# (--kernel, --initramfs, --cmdline) and note what --nested needs to know
# (--memory and --cpus size L1; --device cannot work there).
KERNEL=${KERNEL:-}
INITRAMFS=${INITRAMFS:-}
CMDLINE=
HAVE_CMDLINE=0
L2_MEM=512M
L2_CPUS=1
DEVICE_ARGS=0
VARGS=()
while (($#)); do
    opt=$1 val=
    case $opt in
    --kernel | --initramfs | --cmdline | --memory | --cpus)
        (($# >= 2)) || die "$opt needs a value" 2
        val=$2
        shift
        ;;
    --kernel=* | --initramfs=* | --cmdline=* | --memory=* | --cpus=*)
        val=${opt#*=} opt=${opt%%=*}
        ;;
    esac
    case $opt in
    --kernel) KERNEL=$val ;;
    --initramfs) INITRAMFS=$val ;;
    --cmdline) CMDLINE=$val HAVE_CMDLINE=1 ;;
    --memory) L2_MEM=$val; VARGS+=("$opt" "$val") ;;
    --cpus) L2_CPUS=$val; VARGS+=("$opt" "$val") ;;
    --device | --device=* | --vfio | --vfio=*) DEVICE_ARGS=1; VARGS+=("$opt") ;;
    *) VARGS+=("$opt") ;;
    esac
    shift
done

# Non-interactive (stdin not a terminal, or CI): nobody can type into the
# guest's shell, so by default it powers off after its report, and the run
# gets a time limit.
INTERACTIVE=1
[ -t 0 ] || INTERACTIVE=0
if [ -z "$POWEROFF" ]; then
    POWEROFF=0
    if [ "$INTERACTIVE" = 0 ] || [ -n "${CI:-}" ]; then POWEROFF=1; fi
fi
if [ "$INTERACTIVE" = 1 ]; then GUEST_TIMEOUT=${GUEST_TIMEOUT:-0}; else GUEST_TIMEOUT=${GUEST_TIMEOUT:-600}; fi
GUEST_PROBE_TIMEOUT=${GUEST_PROBE_TIMEOUT:-15}
for n in "$GUEST_TIMEOUT" "$GUEST_PROBE_TIMEOUT"; do
    [[ $n =~ ^[0-9]+$ ]] || die "GUEST_TIMEOUT and GUEST_PROBE_TIMEOUT take whole seconds, not '$n'" 2
done

# The guest command line: the user's, or vflaunch's default; plus
# vflaunch.poweroff (read by build-initramfs.sh's /init).
if [ "$POWEROFF" = 1 ]; then
    [ "$HAVE_CMDLINE" = 1 ] || CMDLINE=$DEFAULT_CMDLINE
    case " $CMDLINE " in *" vflaunch.poweroff "*) ;; *) CMDLINE="$CMDLINE vflaunch.poweroff" HAVE_CMDLINE=1 ;; esac
fi
# (no --cmdline unless needed: a "cmdline" in a --config file then still counts)
[ "$HAVE_CMDLINE" = 0 ] || VARGS+=(--cmdline "$CMDLINE")

no_devices_nested() {
    if [ "$DEVICE_ARGS" = 1 ]; then
        die "--device names a PCI device of this machine, which the nested L1 does not have (there the guest gets L1's emulated igb VF; --no-vf turns that off)" 2
    fi
}
[ "$MODE" != nested ] || no_devices_nested

mkdir -p "$GUEST_WORK"
T0=$SECONDS

# --- 1. vflaunch -----------------------------------------------------------------
if [ "${GUEST_SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
    command -v cargo >/dev/null || die "cargo not found (install Rust, or GUEST_SKIP_BUILD=1 with a built target/release/vflaunch)"
    say "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[ -x "$VFL" ] || die "$VFL does not exist: build it first or unset GUEST_SKIP_BUILD"

# --- 2. kernel, 3. initramfs -------------------------------------------------------
# The kernel: $KERNEL; else with --debian-kernel Debian's 6.12 kernel, which
# tests/hil/setup.sh downloads and unpacks; else (the default) the project's
# guest kernel with the VF drivers built in, from guest/build-kernel.sh
# (cached in /var/cache/vflaunch/kernels; the first build takes ~5 minutes).
# setup.sh also provides QEMU and Debian's kernel for --nested (L1 runs it),
# and busybox-static and cpio for the initramfs; it is idempotent and quick
# (< 1 s) once everything is there.
setup() { # [setup.sh options]
    bash "$HIL/setup.sh" "$@" 2>&1 | sed 's/^/[guest] /' >&2
}
KERNEL_KIND=given
if [ -z "$KERNEL" ]; then
    if [ "$DEBIAN_KERNEL" = 1 ]; then KERNEL_KIND=debian; else KERNEL_KIND=project; fi
fi
if [ "$MODE" = nested ]; then
    setup
elif [ "$KERNEL_KIND" = debian ]; then
    setup --no-qemu
else
    setup --no-qemu --no-kernel
fi
# shellcheck source=tests/hil/lib.sh
. "$HIL/lib.sh"
case $KERNEL_KIND in
debian)
    hil_kernel # KDIR, KV, MODDIR
    KERNEL=$KDIR/boot/vmlinuz-$KV
    ;;
project)
    say "guest kernel: guest/build-kernel.sh --kernel guest (reused from its cache when built before)"
    kres=$(bash "$HERE/build-kernel.sh" --kernel guest 2> >(sed 's/^/[guest] /' >&2) | tail -n1) ||
        die "guest/build-kernel.sh failed (see above; --debian-kernel boots Debian's kernel instead)"
    KERNEL=$kres/bzImage
    ;;
esac
[ -r "$KERNEL" ] || die "kernel $KERNEL not found"
KERNEL=$(realpath "$KERNEL")
say "kernel: $KERNEL ($KERNEL_KIND)"

if [ -z "$INITRAMFS" ]; then
    mods=()
    if [ "$KERNEL_KIND" = debian ]; then
        INITRAMFS=$GUEST_WORK/initramfs-$KV.cpio.gz
        mods=(--modules-for "$KV" --kmod-root "$KDIR")
    else
        INITRAMFS=$GUEST_WORK/initramfs.cpio.gz
    fi
    # Rebuilt when build-initramfs.sh is newer (it takes ~2 s; its output is reproducible).
    if [ ! "$INITRAMFS" -nt "$HERE/build-initramfs.sh" ]; then
        say "building $INITRAMFS"
        blog=$GUEST_WORK/build-initramfs.log
        bash "$HERE/build-initramfs.sh" ${mods[@]+"${mods[@]}"} "$INITRAMFS" >"$blog" 2>&1 ||
            { cat "$blog" >&2; die "guest/build-initramfs.sh failed"; }
        say "$(tail -n1 "$blog")"
    fi
fi
[ -r "$INITRAMFS" ] || die "initramfs $INITRAMFS not found"
INITRAMFS=$(realpath "$INITRAMFS")

# --- 4. direct or nested -----------------------------------------------------------
# Auto mode probe: boot the kernel itself on /dev/kvm, with no initramfs and
# only emergency messages on the console. A working KVM runs it through all
# of start_kernel until it finds no root fs and prints "Kernel panic - not
# syncing: VFS: Unable to mount root fs" (expected within about a second on
# a real KVM; at 1.8 s guest time under nested KVM on TCG); the probe then
# stops vflaunch. (Its exit code is not used: panic=-1 should reset the guest
# and end vflaunch, but under nested KVM on TCG vflaunch was still running a
# minute after the panic.) A KVM that cannot run Linux shows up as vflaunch's
# "KVM internal error" within a few seconds (what this kind of nested KVM
# does), or as a guest that never gets to the panic (GUEST_PROBE_TIMEOUT).
# This checks the same kernel and VMM as the real run, needs no initramfs of
# a known kind, and costs one short boot.
# Sets PROBE_WHY; returns 0 if direct works.
probe_direct() {
    local log=$GUEST_WORK/probe.log pid rc=0 t=$SECONDS ok=0 n=0
    if [ ! -e /dev/kvm ]; then PROBE_WHY="this machine has no /dev/kvm"; return 1; fi
    if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then PROBE_WHY="/dev/kvm is not read-writable for $(id -un)"; return 1; fi
    "$VFL" run --kernel "$KERNEL" --memory 256M --cpus 1 --no-devices-from-env \
        --cmdline "$DEFAULT_CMDLINE loglevel=1" </dev/null >"$log" 2>&1 &
    pid=$!
    # Poll every 0.2 s until the panic line, vflaunch's exit or the time limit.
    while kill -0 "$pid" 2>/dev/null && ((SECONDS - t < GUEST_PROBE_TIMEOUT)); do
        if grep -q 'Kernel panic' "$log"; then break; fi
        sleep 0.2
    done
    t=$((SECONDS - t))
    # Stop it if it still runs: SIGTERM, SIGKILL after 5 s.
    while kill -0 "$pid" 2>/dev/null; do
        if ((n == 0)); then kill -TERM "$pid" 2>/dev/null || true; elif ((n == 25)); then kill -KILL "$pid" 2>/dev/null || true; fi
        n=$((n + 1))
        sleep 0.2
    done
    wait "$pid" 2>/dev/null || rc=$?
    grep -q 'Kernel panic' "$log" && ok=1
    if [ "$ok" = 1 ]; then
        PROBE_WHY="a probe boot on /dev/kvm ran the kernel to its no-root-fs panic in ${t}s"
        return 0
    elif grep -q 'KVM internal error' "$log"; then
        PROBE_WHY="a probe boot on /dev/kvm stopped with \"KVM internal error\" after ${t}s"
    elif ((n > 0)); then
        PROBE_WHY="a probe boot on /dev/kvm did not get to the kernel's no-root-fs panic within ${GUEST_PROBE_TIMEOUT}s"
    else
        PROBE_WHY="a probe boot on /dev/kvm failed (vflaunch exit $rc after ${t}s: $(tail -n1 "$log" | tr -d '\r'))"
    fi
    return 1
}

if [ "$MODE" = auto ]; then
    if probe_direct; then MODE=direct; else MODE=nested; fi
    say "mode: $MODE, because $PROBE_WHY (log: $GUEST_WORK/probe.log; force with --direct/--nested)"
    if [ "$MODE" = nested ]; then
        no_devices_nested
        setup # QEMU
    fi
else
    say "mode: $MODE (as asked)"
fi

if [ "$MODE" = direct ]; then
    say "$(printf '%q ' vflaunch run --kernel "$KERNEL" --initramfs "$INITRAMFS" ${VARGS[@]+"${VARGS[@]}"})(prepared in $((SECONDS - T0))s)"
    tmo=()
    [ "$GUEST_TIMEOUT" = 0 ] || tmo=(timeout --foreground -k 10 "$GUEST_TIMEOUT")
    exec ${tmo[@]+"${tmo[@]}"} "$VFL" run --kernel "$KERNEL" --initramfs "$INITRAMFS" ${VARGS[@]+"${VARGS[@]}"}
fi

# ---------------------------------------------------------------------------------
# --nested: the tests/hil rig's L1 (QEMU TCG, -cpu max = SVM, Debian kernel,
# kvm_amd), running vflaunch as a program on L1's console.
# ---------------------------------------------------------------------------------
hil_kernel # L1 always runs Debian's kernel: it has kvm_amd, vfio-pci and igb as modules
hil_lock   # one L1 at a time (shared with tests/hil/run.sh)

# L1's RAM: the guest's plus 1 GiB for L1 itself (its initramfs holds the
# guest's kernel and initramfs too). --memory takes K/M/G/T or plain MiB.
l2_mib() {
    local n=${L2_MEM%[KkMmGgTt]} u=${L2_MEM: -1}
    [[ $n =~ ^[0-9]+$ ]] || { echo 512; return; } # vflaunch will reject it anyway
    case $u in K | k) echo $((n / 1024)) ;; G | g) echo $((n * 1024)) ;; T | t) echo $((n * 1024 * 1024)) ;; *) echo "$n" ;; esac
}
L1_MEM=$(($(l2_mib) + 1024))
[ "$L1_MEM" -ge 1536 ] || L1_MEM=1536
# As many vCPUs as the guest gets (vflaunch's vCPUs are threads in L1).
[[ $L2_CPUS =~ ^[1-9][0-9]*$ ]] || L2_CPUS=1

# L1's /init (busybox sh). Its console is the user's terminal; the exit code
# goes to L1's second serial port, a file on this side.
L1_INIT=$GUEST_WORK/l1-init
cat >"$L1_INIT" <<'EOF'
#!/bin/busybox sh
# shellcheck shell=sh disable=SC1091,SC2012 # guest.conf is written by run.sh; ls of sysfs is fine
# L1 /init for guest/run.sh --nested (generated by guest/run.sh).
# Loads kvm_amd (QEMU's TCG emulates SVM, so L1 gets a /dev/kvm), optionally
# turns the emulated igb NIC into SR-IOV VFs and binds VF0 to vfio-pci, then
# runs vflaunch on the console (the user's terminal, through QEMU's serial
# stdio). vflaunch's exit code goes to ttyS1 (a file on the host) and to the
# console as "L1: VFLAUNCH_EXIT=<code>"; then L1 powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp

GUEST_MODULES='' GUEST_VF=0 GUEST_L2_TIMEOUT=0 GUEST_RUST_LOG='' VFL_ARGS=''
. /guest.conf

say() { echo "L1: $*"; }
report() { echo "$1" >/dev/ttyS1; sync; poweroff -f; sleep 10; }
fail() { say "ERROR: $*"; report l1-error; }
drv() { basename "$(readlink "/sys/bus/pci/devices/$1/driver")" 2>/dev/null || echo none; }

for m in $GUEST_MODULES; do insmod "/lib/modules/$m.ko" || fail "insmod $m"; done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading kvm_amd"
eval "set -- $VFL_ARGS"

if [ "$GUEST_VF" = 1 ]; then
    # As in tests/hil/l1-init: the igb PF (8086:10c9) must be up for its VFs
    # to get a link; VF0 goes to vfio-pci and to the guest.
    PF=
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x8086:0x10c9 ] && PF=$(basename "$d") && break
    done
    [ -n "$PF" ] || fail "no igb PF (8086:10c9) found"
    PFIF=$(ls "/sys/bus/pci/devices/$PF/net" | head -n1)
    ip link set "$PFIF" up || fail "ip link set $PFIF up"
    for _ in 1 2 3 4 5; do [ "$(cat "/sys/class/net/$PFIF/carrier" 2>/dev/null)" = 1 ] && break; sleep 1; done
    echo 1 >"/sys/bus/pci/devices/$PF/sriov_numvfs" || fail "sriov_numvfs"
    sleep 1
    VF=$(basename "$(readlink "/sys/bus/pci/devices/$PF/virtfn0")")
    [ -n "$VF" ] || fail "no virtfn0 under $PF"
    echo vfio-pci >"/sys/bus/pci/devices/$VF/driver_override"
    [ -e "/sys/bus/pci/devices/$VF/driver" ] && echo "$VF" >"/sys/bus/pci/devices/$VF/driver/unbind"
    echo "$VF" >/sys/bus/pci/drivers_probe
    [ "$(drv "$VF")" = vfio-pci ] || fail "VF0 $VF not bound to vfio-pci"
    say "igb VF0 $VF on vfio-pci, passed to the guest"
    set -- "$@" --device "$VF"
fi

[ -z "$GUEST_RUST_LOG" ] || export RUST_LOG="$GUEST_RUST_LOG"
CMDSTR=
for a in "$@"; do CMDSTR="$CMDSTR '$a'"; done
say "ready after $(cut -d' ' -f1 /proc/uptime)s (kvm_amd loaded); running vflaunch run$CMDSTR"
# With "quiet" (the default), L1's kernel stays off the shared console.
case " $(cat /proc/cmdline) " in *" quiet "*) echo 1 >/proc/sys/kernel/printk ;; esac
T0=$(cut -d. -f1 /proc/uptime)
# The console goes raw here (keys, ^C included, go to the guest), and
# vflaunch's stdout is a pipe, so vflaunch leaves the terminal alone and does
# not look for its own Ctrl-A x: in nested mode Ctrl-A belongs to the outer
# QEMU (-serial mon:stdio), whose Ctrl-A x ends everything.
stty raw -echo 2>/dev/null
if [ "$GUEST_L2_TIMEOUT" -gt 0 ]; then
    set -- timeout -k 10 "$GUEST_L2_TIMEOUT" /bin/vflaunch run "$@"
else
    set -- /bin/vflaunch run "$@"
fi
{ "$@"; echo $? >/tmp/rc; } | cat
stty sane 2>/dev/null
rc=$(cat /tmp/rc)
if [ "$GUEST_L2_TIMEOUT" -gt 0 ] && [ $(($(cut -d. -f1 /proc/uptime) - T0)) -ge "$GUEST_L2_TIMEOUT" ]; then
    say "vflaunch was stopped after GUEST_TIMEOUT; its exit code was $rc"
    rc=124
fi
say "VFLAUNCH_EXIT=$rc"
report "$rc"
EOF

L1=$GUEST_WORK/l1root
new_root "$L1" "$L1_INIT"
l1_mods=(irqbypass kvm ccp kvm-amd) # in load order: kvm <- irqbypass; kvm-amd <- kvm, ccp
[ "$GUEST_NESTED_VF" = 0 ] || l1_mods+=(dca i2c-algo-bit igb vfio vfio_iommu_type1 vfio-pci-core vfio-pci)
add_modules "$L1" "${l1_mods[@]}"
add_elf "$L1" "$VFL"
mkdir -p "$L1/l2"
cp "$KERNEL" "$L1/l2/kernel"
cp "$INITRAMFS" "$L1/l2/initramfs"
# The vflaunch arguments, single-quoted for L1's `eval set --`.
vfl_args=(--kernel /l2/kernel --initramfs /l2/initramfs ${VARGS[@]+"${VARGS[@]}"})
q=
for a in "${vfl_args[@]}"; do q="$q $(shq "$a")"; done
# vflaunch inside L1 gets 60 s less than QEMU (at least half), so that a hung
# VMM is stopped and L1 still reports its exit code.
l2t=0
if [ "$GUEST_TIMEOUT" -gt 0 ]; then
    l2t=$((GUEST_TIMEOUT - 60))
    [ "$l2t" -ge $((GUEST_TIMEOUT / 2)) ] || l2t=$((GUEST_TIMEOUT / 2))
fi
{
    echo "GUEST_MODULES=$(shq "${l1_mods[*]}")"
    echo "GUEST_VF=$(shq "$GUEST_NESTED_VF")"
    echo "GUEST_L2_TIMEOUT=$l2t"
    echo "GUEST_RUST_LOG=$(shq "${RUST_LOG:-}")"
    echo "VFL_ARGS=$(shq "$q")"
} >"$L1/guest.conf"
mk_cpio "$L1" "$GUEST_WORK/l1.cpio"

# QEMU: serial 0 = L1's console = this terminal (mon:stdio multiplexes QEMU's
# monitor behind Ctrl-A when a person is typing; plain stdio otherwise),
# serial 1 = a file that receives vflaunch's exit code.
RCFILE=$GUEST_WORK/l1-exit-code
rm -f "$RCFILE"
console=stdio
if [ "$INTERACTIVE" = 1 ] && [ -t 1 ]; then console=mon:stdio; fi
l1_append="console=ttyS0 panic=-1 ${GUEST_L1_ARGS-quiet}"
qemu=(qemu-system-x86_64 -accel tcg -cpu max -machine q35 -m "$L1_MEM" -smp "$L2_CPUS"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$GUEST_WORK/l1.cpio"
    -serial "$console" -serial "file:$RCFILE")
if [ "$GUEST_NESTED_VF" = 1 ]; then
    # The tests/hil NIC: igb (82576, SR-IOV) on slirp, behind an emulated
    # IOMMU; QEMU 10.0 leaves the VF BARs unmapped without pci-hole64-size=0.
    # shellcheck disable=SC2054 # the commas are QEMU's
    qemu+=(-global q35-pcihost.pci-hole64-size=0 -device intel-iommu,intremap=on
        -netdev user,id=n0 -device igb,netdev=n0,romfile=)
    l1_append="$l1_append intel_iommu=on iommu=pt"
fi
qemu+=(-append "$l1_append")
tmo=()
[ "$GUEST_TIMEOUT" = 0 ] || tmo=(timeout --foreground -k 10 "$GUEST_TIMEOUT")
say "booting L1 (QEMU TCG, $L1_MEM MiB, kernel $KV; ~5 s before vflaunch starts in it; prepared in $((SECONDS - T0))s)"
T1=$SECONDS
qrc=0
${tmo[@]+"${tmo[@]}"} "${qemu[@]}" || qrc=$?
T_RUN=$((SECONDS - T1))

rc=$(tr -d '\r\n' <"$RCFILE" 2>/dev/null || true)
case $rc in
[0-9]*) say "nested: vflaunch exited with $rc (L1 ran ${T_RUN}s, total $((SECONDS - T0))s)"; exit "$rc" ;;
l1-error) die "nested: L1 failed before vflaunch could run (see the L1: lines above)" 125 ;;
esac
[ "$qrc" != 124 ] || die "nested: GUEST_TIMEOUT=${GUEST_TIMEOUT}s expired" 124
if [ "$qrc" = 0 ] && [ "$console" = mon:stdio ]; then
    say "nested: QEMU was quit (Ctrl-A x) while vflaunch ran"
    exit 130
fi
die "nested: L1 ended without reporting vflaunch's exit code (QEMU exit code $qrc)" 125
