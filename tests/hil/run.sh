#!/bin/bash
# vflaunch hardware-in-loop test: SR-IOV VF passthrough with no real hardware.
#
#   host --(qemu, TCG, intel-iommu, igb NIC with SR-IOV)--> L1 Linux
#     L1: igb PF -> 2 VFs, VF0 bound to vfio-pci, kvm_amd = nested /dev/kvm
#     L1 --(vflaunch run --device VF0)--> L2 Linux
#       L2: igbvf drives VF0, DHCP lease + ping of 10.0.2.2 through the PF
#
# Passes when L2 reports the VF driver bound, a DHCP lease, 3/3 ping replies
# and the VMM exits with 0. See README.md next to this file.
#
# Env knobs:
#   HIL_WORK        cache/work dir (default <repo>/target/hil)
#   HIL_TIMEOUT     seconds for the whole L1 run (default 600)
#   HIL_L2_TIMEOUT  seconds the VMM may run inside L1 (default HIL_TIMEOUT - 60)
#   HIL_L2_ARGS     extra L2 kernel args (default "loglevel=4"; e.g. "loglevel=8")
#   HIL_RUST_LOG    RUST_LOG for vflaunch inside L1 (default info)
#   HIL_VMM         vflaunch (default) | qemu (rig self-check with the reference qemu)
#   HIL_SKIP_BUILD  1 = don't run cargo, use the existing target/release/vflaunch
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export HIL_WORK=${HIL_WORK:-$REPO/target/hil}
HIL_TIMEOUT=${HIL_TIMEOUT:-600}
HIL_L2_ARGS=${HIL_L2_ARGS-loglevel=4}
HIL_RUST_LOG=${HIL_RUST_LOG:-info}
HIL_VMM=${HIL_VMM:-vflaunch}
HIL_SKIP_BUILD=${HIL_SKIP_BUILD:-0}

say() { echo "[hil] $*"; }
die() { echo "[hil] ERROR: $*" >&2; exit 1; }

case "$HIL_VMM" in vflaunch | qemu) ;; *) die "HIL_VMM must be vflaunch or qemu, not '$HIL_VMM'" ;; esac
# shellcheck source=tests/hil/lib.sh
. "$HERE/lib.sh"
mkdir -p "$HIL_WORK/logs"
hil_lock # one L1 at a time (shared with guest/run.sh --nested)

T0=$SECONDS
bash "$HERE/setup.sh"
T_SETUP=$((SECONDS - T0))

# --- vflaunch ------------------------------------------------------------------
VFL=$REPO/target/release/vflaunch
if [ "$HIL_VMM" = vflaunch ]; then
    if [ "$HIL_SKIP_BUILD" != 1 ]; then
        command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
        say "cargo build --release"
        (cd "$REPO" && cargo build --release) || die "cargo build --release failed (HIL_SKIP_BUILD=1 runs an existing binary)"
    fi
    [ -x "$VFL" ] || die "$VFL does not exist: build it first or unset HIL_SKIP_BUILD"
fi
T_BUILD=$((SECONDS - T0))

# --- initramfs images ----------------------------------------------------------
hil_kernel # KDIR, KV, MODDIR (lib.sh: add_modules, add_elf, new_root, mk_cpio, shq)

# L2: busybox + igbvf + l2-init.
L2=$HIL_WORK/l2root
new_root "$L2" "$HERE/l2-init"
add_modules "$L2" igbvf
mk_cpio "$L2" "$HIL_WORK/l2.cpio"

# L1: busybox + modules (in dependency order of their depends= fields:
# igb <- dca,i2c-algo-bit; vfio-pci <- vfio-pci-core <- vfio,irqbypass;
# kvm-amd <- kvm,ccp; kvm <- irqbypass) + l1-init + the VMM + L2 kernel/initramfs.
L1=$HIL_WORK/l1root
new_root "$L1" "$HERE/l1-init"
add_modules "$L1" dca i2c-algo-bit igb igbvf vfio vfio_iommu_type1 irqbypass \
    vfio-pci-core vfio-pci kvm ccp kvm-amd
mkdir -p "$L1/l2"
# HIL_L2_KERNEL: another L2 kernel (e.g. guest/build/bzImage, or an ELF vmlinux
# with a PVH note); one with igbvf built in just ignores the insmod.
cp "${HIL_L2_KERNEL:-$KDIR/boot/vmlinuz-$KV}" "$L1/l2/vmlinuz"
cp "$HIL_WORK/l2.cpio" "$L1/l2/l2.cpio"
if [ "$HIL_VMM" = qemu ]; then
    add_elf "$L1" "$(command -v qemu-system-x86_64)"
    # qboot as BIOS; linuxboot_dma.bin loads -kernel; kvmvapic.bin is always loaded.
    mkdir -p "$L1/usr/share/qemu"
    for f in qboot.rom linuxboot_dma.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$f" "$L1/usr/share/qemu/"; done
else
    add_elf "$L1" "$VFL"
fi
{
    echo "HIL_VMM=$(shq "$HIL_VMM")"
    echo "HIL_L2_ARGS=$(shq "$HIL_L2_ARGS")"
    echo "HIL_RUST_LOG=$(shq "$HIL_RUST_LOG")"
    # The VMM gets a shorter timeout than L1 (L1 boots in ~10 s), so that a
    # hung VMM is killed and L1 still reports and powers off cleanly.
    l2t=$((HIL_TIMEOUT - 60))
    [ "$l2t" -ge $((HIL_TIMEOUT / 2)) ] || l2t=$((HIL_TIMEOUT / 2))
    echo "HIL_L2_TIMEOUT=$((${HIL_L2_TIMEOUT:-$l2t}))"
} >"$L1/hil.conf"
mk_cpio "$L1" "$HIL_WORK/l1.cpio"
say "images: l1.cpio $(du -m "$HIL_WORK/l1.cpio" | cut -f1) MiB, l2.cpio $(du -k "$HIL_WORK/l2.cpio" | cut -f1) KiB, kernel $KV, VMM in L1: $HIL_VMM"
T_IMAGES=$((SECONDS - T0))

# --- boot L1 -------------------------------------------------------------------
LOG=$HIL_WORK/logs/hil-$(date +%Y%m%d-%H%M%S).log
ln -sfn "$(basename "$LOG")" "$HIL_WORK/logs/latest.log"
say "booting L1 (TCG, timeout ${HIL_TIMEOUT}s), log: $LOG"
# Prefix each line with seconds since L1 start (bash only, no perl/bc needed).
stamp() {
    local start=${EPOCHREALTIME/./} now line
    while IFS= read -r line || [ -n "$line" ]; do
        now=${EPOCHREALTIME/./}
        now=$(((now - start) / 100000))
        printf '[hil %4d.%ds] %s\n' $((now / 10)) $((now % 10)) "${line%$'\r'}"
    done
}
set +e
timeout "$HIL_TIMEOUT" qemu-system-x86_64 \
    -accel tcg -cpu max -machine q35 -m 3072 -smp 1 \
    -global q35-pcihost.pci-hole64-size=0 \
    -device intel-iommu,intremap=on \
    -netdev user,id=n0 -device igb,netdev=n0,romfile= \
    -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$HIL_WORK/l1.cpio" \
    -append "console=ttyS0 panic=-1 intel_iommu=on iommu=pt" \
    -no-reboot -display none -serial stdio -monitor none \
    </dev/null 2>&1 | stamp | tee "$LOG"
QRC=${PIPESTATUS[0]}
set -e
T_RUN=$((SECONDS - T0 - T_IMAGES))
say "L1 qemu exit code $QRC after ${T_RUN}s (setup ${T_SETUP}s, build $((T_BUILD - T_SETUP))s, images $((T_IMAGES - T_BUILD))s)"

# --- verdict -------------------------------------------------------------------
TAG=$(tr '[:lower:]' '[:upper:]' <<<"$HIL_VMM")
failed=0
check() { # description, extended regex expected in the log
    if grep -q -E "$2" "$LOG"; then
        say "ok:   $1"
    else
        say "FAIL: $1 (no line matching /$2/)"
        failed=1
    fi
}
case "$QRC" in
0) ;;
124) say "FAIL: L1 did not finish within HIL_TIMEOUT=${HIL_TIMEOUT}s"; failed=1 ;;
*) say "FAIL: L1 qemu exited with $QRC"; failed=1 ;;
esac
count() { # description, how many, extended regex
    local n
    n=$(grep -c -E "$3" "$LOG" || true)
    if [ "$n" -ge "$2" ]; then
        say "ok:   $1 ($n)"
    else
        say "FAIL: $1: $n of $2 lines match /$3/"
        failed=1
    fi
}
check "L2 booted and ran its /init" 'L2: STAGE init '
check "L2 brought up both vCPUs" 'L2: 2 cpu\(s\) online'
count "L2 bound igbvf to each VF" 2 'L2: VF driver igbvf bound to [0-9a-f:.]+'
count "L2 saw 4 KiB config space (ECAM) on each VF" 2 'L2: VF [0-9a-f:.]+ config space 4096 bytes'
count "each VF got a DHCP lease" 2 'L2: udhcpc: lease of [0-9.]+ obtained'
count "each VF pinged 10.0.2.2: 3 received, 0% loss" 2 'L2: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
if [ "$HIL_VMM" = vflaunch ]; then
    check "vflaunch check: interrupt remapping on" 'L1: check: ok +interrupt remapping'
    count "vflaunch check: both VFs usable" 2 'L1: check: ok +0000:'
    check "vflaunch check: the PF is refused, bound to igb" 'L1: check-pf: FAILED +0000:[0-9a-f:.]+: .*igb.*vfio-pci'
    check "a VM asking for a VF that another VM holds fails with exit 1" 'L1: busy-run rc=1$'
    check "... after setting up the other VF, saying the group is held by another process" 'L1: busy-run: .*cannot open VFIO device 0000:[0-9a-f:.]+: .*held by another process'
    check "SIGTERM stops the VM holding the VF (exit 143)" 'L1: holder rc=143$'
    # shellcheck disable=SC2016 # a literal $ in the pattern
    check "vflaunch took VF1 from the device plugin's variable" 'device [0-9a-f:.]+ from \$PCIDEVICE_INTEL_COM_SRIOV'
    check "vflaunch took VF0 from KubeVirt's network-info file" 'device [0-9a-f:.]+ for network "sriov-net" from /tmp/network-info'
    check "vflaunch followed L2 moving a VF's BARs" 'BAR[0-9] moved from 0x[0-9a-f]+ to 0x[0-9a-f]+'
    check "vflaunch backed guest RAM with huge pages" 'guest RAM: [0-9]+ MiB in 2 MiB huge pages'
fi
check "$HIL_VMM exited with 0" "^\[hil +[0-9.]+s\] ${TAG}_EXIT=0\$"
grep -E "HIL ERROR|${TAG}_EXIT=" "$LOG" | sed 's/^/[hil] L1 said: /' || true
if [ "$failed" = 0 ]; then
    say "HIL PASSED ($HIL_VMM, L1 run ${T_RUN}s, total $((SECONDS - T0))s)"
    exit 0
fi
say "---- last 60 lines of $LOG ----"
tail -n 60 "$LOG"
say "HIL FAILED ($HIL_VMM): see $LOG"
exit 1
