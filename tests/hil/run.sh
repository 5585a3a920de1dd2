#!/bin/bash
# vflaunch hardware-in-loop test: SR-IOV VF passthrough with no real hardware.
#
#   host --(qemu, TCG, intel-iommu, igb NIC with SR-IOV [, NVMe with SR-IOV])--> L1 Linux
#     L1: igb PF -> 2 VFs on vfio-pci, kvm_amd = nested /dev/kvm
#     L1 --(vflaunch run --device ...)--> L2 Linux, several runs per L1 boot
#       L2: igbvf drives the VFs, DHCP lease + ping of 10.0.2.2 through the PF;
#           nvme drives an NVMe VF, O_DIRECT write + read back
#
# Two L1 boots (HIL_BOOTS), by default at the same time (one core each):
#   debian  L1 = Debian's kernel, intel_iommu=on iommu=pt. Runs: main (the
#           historical run: Debian's kernel in L2 with igbvf as a module),
#           builtin (the project's guest kernel, no modules).
#   host    L1 = the project's host kernel (iommufd, vfio cdev), intel_iommu=on
#           without iommu=pt (DMA translated). Runs: host (guest kernel, both
#           igb VFs), nvme (guest kernel, an NVMe VF), pvh (its ELF vmlinux
#           through PVH, with VF0).
# Both kernels are built by guest/build-kernel.sh (cached outside the clone).
# Passes when every criterion listed at the end holds. See README.md here.
#
# Env knobs:
#   HIL_WORK        cache/work dir (default <repo>/target/hil)
#   HIL_TIMEOUT     seconds for each L1 boot (default 900)
#   HIL_L2_TIMEOUT  seconds the VMM may run the main L2 inside L1 (default 300)
#   HIL_RUN_TIMEOUT seconds for each other L2 run (default 240)
#   HIL_L2_ARGS     extra L2 kernel args (default "loglevel=4"; e.g. "loglevel=8")
#   HIL_RUST_LOG    RUST_LOG for vflaunch inside L1 (default info)
#   HIL_VMM         vflaunch (default) | qemu (rig self-check: main run only)
#   HIL_SKIP_BUILD  1 = don't run cargo, use the existing target/release/vflaunch
#   HIL_BOOTS       which L1 boots (default "debian host")
#   HIL_PARALLEL    1 (default) = the L1 boots run at the same time; 0 = one after the other
#   HIL_L2_KERNEL   another L2 kernel for the main run (default Debian's vmlinuz)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export HIL_WORK=${HIL_WORK:-$REPO/target/hil}
HIL_TIMEOUT=${HIL_TIMEOUT:-900}
HIL_L2_ARGS=${HIL_L2_ARGS-loglevel=4}
HIL_RUST_LOG=${HIL_RUST_LOG:-info}
HIL_VMM=${HIL_VMM:-vflaunch}
HIL_SKIP_BUILD=${HIL_SKIP_BUILD:-0}
HIL_BOOTS=${HIL_BOOTS:-debian host}
HIL_PARALLEL=${HIL_PARALLEL:-1}

say() { echo "[hil] $*"; }
die() { echo "[hil] ERROR: $*" >&2; exit 1; }

case "$HIL_VMM" in vflaunch | qemu) ;; *) die "HIL_VMM must be vflaunch or qemu, not '$HIL_VMM'" ;; esac
for b in $HIL_BOOTS; do
    case $b in debian | host) ;; *) die "HIL_BOOTS takes debian and/or host, not '$b'" ;; esac
done
[ "$HIL_VMM" = vflaunch ] || HIL_BOOTS=debian # the reference qemu: the main run only
want_boot() { case " $HIL_BOOTS " in *" $1 "*) return 0 ;; esac; return 1; }
# shellcheck source=tests/hil/lib.sh
. "$HERE/lib.sh"
mkdir -p "$HIL_WORK/logs"
hil_lock # one rig at a time (shared with guest/run.sh --nested)

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

# --- the project's kernels -------------------------------------------------------
# guest/build-kernel.sh prints the result directory (bzImage, vmlinux, ...);
# a cached build of the same fragments + source version + script is reused.
KTIMES=()
build_kernel() { # guest|host -> sets KRES
    local t=$SECONDS how
    KRES=$(bash "$REPO/guest/build-kernel.sh" --kernel "$1" | tail -n1) || die "guest/build-kernel.sh --kernel $1 failed"
    [ -f "$KRES/bzImage" ] || die "guest/build-kernel.sh --kernel $1 gave no bzImage in '$KRES'"
    if [ $((SECONDS - t)) -ge "$(cat "$KRES/build-seconds")" ]; then how="built now"; else how="cached"; fi
    KTIMES+=("$1 kernel $(cat "$KRES/release"): $how, make took $(cat "$KRES/build-seconds")s, this step $((SECONDS - t))s")
}
GUEST_KERNEL='' GUEST_VMLINUX='' HOST_KERNEL=''
if [ "$HIL_VMM" = vflaunch ]; then
    build_kernel guest
    GUEST_KERNEL=$KRES/bzImage
    GUEST_VMLINUX=$KRES/vmlinux
fi
if want_boot host; then
    build_kernel host
    HOST_KERNEL=$KRES/bzImage
fi
for k in ${KTIMES[@]+"${KTIMES[@]}"}; do say "kernel: $k"; done
T_KERNELS=$((SECONDS - T0))

# --- initramfs images ----------------------------------------------------------
hil_kernel # KDIR, KV, MODDIR (lib.sh: add_modules, add_elf, new_root, mk_cpio, shq)

# L2 for Debian's kernel: busybox + igbvf + l2-init.
L2=$HIL_WORK/l2root
new_root "$L2" "$HERE/l2-init"
add_modules "$L2" igbvf
mk_cpio "$L2" "$HIL_WORK/l2.cpio"
# L2 for the project's kernel: busybox + l2-init, no modules.
new_root "$L2" "$HERE/l2-init"
mk_cpio "$L2" "$HIL_WORK/l2-builtin.cpio"

# Common part of both L1 images: l1-init, the VMM, iproute2's ip (busybox's
# cannot set a VF's MAC), the L2 kernels and initramfs images.
l1_common() { # root
    new_root "$1" "$HERE/l1-init"
    add_elf "$1" "$(command -v ip)" iproute2-ip
    mkdir -p "$1/l2"
    cp "$HIL_WORK/l2-builtin.cpio" "$1/l2/l2-builtin.cpio"
    [ -z "$GUEST_KERNEL" ] || cp "$GUEST_KERNEL" "$1/l2/bzImage"
    if [ "$HIL_VMM" = qemu ]; then
        add_elf "$1" "$(command -v qemu-system-x86_64)"
        # qboot as BIOS; linuxboot_dma.bin loads -kernel; kvmvapic.bin is always loaded.
        mkdir -p "$1/usr/share/qemu"
        for f in qboot.rom linuxboot_dma.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$f" "$1/usr/share/qemu/"; done
    else
        add_elf "$1" "$VFL"
    fi
}
hil_conf() { # L1 kind, runs, NVMe 0/1
    echo "HIL_L1=$(shq "$1")"
    echo "HIL_RUNS=$(shq "$2")"
    echo "HIL_NVME=$3"
    echo "HIL_VMM=$(shq "$HIL_VMM")"
    echo "HIL_L2_ARGS=$(shq "$HIL_L2_ARGS")"
    echo "HIL_RUST_LOG=$(shq "$HIL_RUST_LOG")"
    echo "HIL_L2_TIMEOUT=$((${HIL_L2_TIMEOUT:-300}))"
    echo "HIL_RUN_TIMEOUT=$((${HIL_RUN_TIMEOUT:-240}))"
}
IMGS=
if want_boot debian; then
    # Modules, in dependency order of their depends= fields: igb <-
    # dca,i2c-algo-bit; vfio-pci <- vfio-pci-core <- vfio,irqbypass; kvm-amd
    # <- kvm,ccp; kvm <- irqbypass.
    L1=$HIL_WORK/l1root
    l1_common "$L1"
    add_modules "$L1" dca i2c-algo-bit igb vfio vfio_iommu_type1 irqbypass \
        vfio-pci-core vfio-pci kvm ccp kvm-amd
    cp "${HIL_L2_KERNEL:-$KDIR/boot/vmlinuz-$KV}" "$L1/l2/vmlinuz"
    cp "$HIL_WORK/l2.cpio" "$L1/l2/l2.cpio"
    runs=main
    [ "$HIL_VMM" != vflaunch ] || runs="main builtin"
    hil_conf debian "$runs" 0 >"$L1/hil.conf"
    # shellcheck source=tests/hil/virtio-image.sh
    [ "$HIL_VMM" != vflaunch ] || . "$HERE/virtio-image.sh" # run virtio: its L1/L2 files, HIL_RUNS += virtio
    mk_cpio "$L1" "$HIL_WORK/l1.cpio"
    IMGS="$IMGS l1.cpio $(du -m "$HIL_WORK/l1.cpio" | cut -f1) MiB (L1 kernel $KV, runs: $runs);"
fi
if want_boot host; then
    L1=$HIL_WORK/l1root-host
    l1_common "$L1"
    add_elf "$L1" "$(command -v nvme)"
    cp "$GUEST_VMLINUX" "$L1/l2/vmlinux"
    hil_conf host "host nvme pvh" 1 >"$L1/hil.conf"
    mk_cpio "$L1" "$HIL_WORK/l1-host.cpio"
    IMGS="$IMGS l1-host.cpio $(du -m "$HIL_WORK/l1-host.cpio" | cut -f1) MiB (L1 kernel $(basename "$(dirname "$HOST_KERNEL")"), runs: host nvme pvh);"
    # The NVMe namespace's backing file (sparse).
    rm -f "$HIL_WORK/nvme.img"
    truncate -s 64M "$HIL_WORK/nvme.img"
fi
say "images:$IMGS l2.cpio $(du -k "$HIL_WORK/l2.cpio" | cut -f1) KiB, l2-builtin.cpio $(du -k "$HIL_WORK/l2-builtin.cpio" | cut -f1) KiB, VMM in L1: $HIL_VMM"
T_IMAGES=$((SECONDS - T0))

# --- boot L1 -------------------------------------------------------------------
STAMP=$(date +%Y%m%d-%H%M%S)
LOG=$HIL_WORK/logs/hil-$STAMP.log
LOG_HOST=$HIL_WORK/logs/hil-$STAMP-host.log
# Prefix each line with seconds since L1 start (bash only, no perl/bc needed).
stamp() {
    local start=${EPOCHREALTIME/./} now line
    while IFS= read -r line || [ -n "$line" ]; do
        now=${EPOCHREALTIME/./}
        now=$(((now - start) / 100000))
        printf '[hil %4d.%ds] %s\n' $((now / 10)) $((now % 10)) "${line%$'\r'}"
    done
}
# shellcheck disable=SC2054 # the commas are QEMU's
QEMU_COMMON=(-accel tcg -cpu max -machine q35 -m 3072 -smp 1
    -global q35-pcihost.pci-hole64-size=0
    -device intel-iommu,intremap=on
    -netdev user,id=n0 -device igb,netdev=n0,romfile=
    -no-reboot -display none -serial stdio -monitor none)
boot_debian() {
    local t=$SECONDS rc
    timeout "$HIL_TIMEOUT" qemu-system-x86_64 "${QEMU_COMMON[@]}" \
        -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$HIL_WORK/l1.cpio" \
        -append "console=ttyS0 panic=-1 intel_iommu=on iommu=pt" \
        </dev/null 2>&1 | stamp | tee "$LOG"
    rc=${PIPESTATUS[0]}
    echo $((SECONDS - t)) >"$HIL_WORK/logs/.t-debian"
    return "$rc"
}
# The host kernel, with full DMA translation (no iommu=pt), and an NVMe
# controller with SR-IOV in an NVM subsystem (a shared namespace, so its VF
# sees it too): 1 VF, 3 flexible queues and 2 flexible interrupts.
boot_host() {
    local t=$SECONDS rc
    # shellcheck disable=SC2054 # the commas are QEMU's
    timeout "$HIL_TIMEOUT" qemu-system-x86_64 "${QEMU_COMMON[@]}" \
        -drive "file=$HIL_WORK/nvme.img,if=none,id=nvm0,format=raw" \
        -device nvme-subsys,id=subsys0 \
        -device nvme,serial=vflaunch0,subsys=subsys0,sriov_max_vfs=1,sriov_vq_flexible=3,sriov_vi_flexible=2 \
        -device nvme-ns,drive=nvm0,nsid=1 \
        -kernel "$HOST_KERNEL" -initrd "$HIL_WORK/l1-host.cpio" \
        -append "console=ttyS0 panic=-1 intel_iommu=on" \
        </dev/null 2>&1 | stamp | tee "$LOG_HOST" | sed -u 's/^\[hil /[hil-host /'
    rc=${PIPESTATUS[0]}
    echo $((SECONDS - t)) >"$HIL_WORK/logs/.t-host"
    return "$rc"
}
QRC=- QRC_HOST=-
rm -f "$HIL_WORK"/logs/.t-*
set +e
if want_boot debian && want_boot host && [ "$HIL_PARALLEL" = 1 ]; then
    say "booting both L1s at once (TCG, timeout ${HIL_TIMEOUT}s each), logs: $LOG, $LOG_HOST"
    boot_host &
    HPID=$!
    boot_debian
    QRC=$?
    wait "$HPID"
    QRC_HOST=$?
else
    if want_boot debian; then
        say "booting L1 with Debian's kernel (TCG, timeout ${HIL_TIMEOUT}s), log: $LOG"
        boot_debian
        QRC=$?
    fi
    if want_boot host; then
        say "booting L1 with the project's host kernel (TCG, timeout ${HIL_TIMEOUT}s), log: $LOG_HOST"
        boot_host
        QRC_HOST=$?
    fi
fi
set -e
T_DEB=$(cat "$HIL_WORK/logs/.t-debian" 2>/dev/null || echo -)s
T_HOST=$(cat "$HIL_WORK/logs/.t-host" 2>/dev/null || echo -)s
[ "$T_DEB" != -s ] || T_DEB="not run"
[ "$T_HOST" != -s ] || T_HOST="not run"
ln -sfn "$(basename "$LOG")" "$HIL_WORK/logs/latest.log"
! want_boot host || ln -sfn "$(basename "$LOG_HOST")" "$HIL_WORK/logs/latest-host.log"
T_RUN=$((SECONDS - T0 - T_IMAGES))
say "L1 qemu exit codes: debian $QRC ($T_DEB), host $QRC_HOST ($T_HOST); L1 boots took ${T_RUN}s (setup ${T_SETUP}s, cargo $((T_BUILD - T_SETUP))s, kernels $((T_KERNELS - T_BUILD))s, images $((T_IMAGES - T_KERNELS))s)"

# --- verdict -------------------------------------------------------------------
TAG=$(tr '[:lower:]' '[:upper:]' <<<"$HIL_VMM")
failed=0
F=$LOG # the log (or part of it) that check/count/absent look at
check() { # description, extended regex expected in $F
    if grep -q -E "$2" "$F"; then
        say "ok:   $1"
    else
        say "FAIL: $1 (no line matching /$2/)"
        failed=1
    fi
}
count() { # description, how many, extended regex
    local n
    n=$(grep -c -E "$3" "$F" || true)
    if [ "$n" -ge "$2" ]; then
        say "ok:   $1 ($n)"
    else
        say "FAIL: $1: $n of $2 lines match /$3/"
        failed=1
    fi
}
absent() { # description, extended regex that must not match in $F
    if grep -q -E "$2" "$F"; then
        say "FAIL: $1 (found: $(grep -m1 -E "$2" "$F"))"
        failed=1
    else
        say "ok:   $1"
    fi
}
qemu_rc() { # boot, exit code
    case "$2" in
    0) ;;
    124) say "FAIL: L1 ($1) did not finish within HIL_TIMEOUT=${HIL_TIMEOUT}s"; failed=1 ;;
    *) say "FAIL: L1 ($1) qemu exited with $2"; failed=1 ;;
    esac
}
# The lines of run $2 in log $1 -> a file of their own; prints its name.
segment() {
    local out=$HIL_WORK/logs/run-$2.log
    sed -n "/L1: RUN $2 start/,/L1: RUN $2 end/p" "$1" >"$out"
    echo "$out"
}
# The checks every igbvf run shares: both VFs bound, leased and pinging.
igb_checks() { # run name
    count "$1: L2 bound igbvf to each VF" 2 'L2: VF driver igbvf bound to [0-9a-f:.]+'
    count "$1: each VF got a DHCP lease" 2 'L2: udhcpc: lease of [0-9.]+ obtained'
    count "$1: each VF pinged 10.0.2.2: 3 received, 0% loss" 2 'L2: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
}
builtin_checks() { # run name
    check "$1: L2 runs the project's guest kernel" 'L2: kernel [0-9.]+-vflaunch,'
    absent "$1: L2's init loaded no module (no insmod)" 'L2: insmod '
    check "$1: L2 has no module loaded (CONFIG_MODULES off, no /proc/modules)" 'L2: modules loaded: 0 '
    check "$1: launch -> L2 /init measured" 'L1: launch -> L2 /init [0-9.]+s'
    check "$1: vflaunch exited with 0" "L1: RUN $1 VFLAUNCH_EXIT=0\$"
}

if want_boot debian; then
    say "== L1 with Debian's kernel ($KV, iommu=pt)"
    qemu_rc debian "$QRC"
    # The historical checks, on the log up to the end of the main run.
    F=$HIL_WORK/logs/run-main-and-before.log
    sed '/L1: RUN main end/q' "$LOG" >"$F"
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
    F=$(segment "$LOG" main)
    if [ -z "${HIL_L2_KERNEL:-}" ]; then
        check "main: L2 ran Debian's kernel with igbvf as a module" 'L2: modules loaded: [1-9][0-9]* \(.*igbvf'
    fi
    check "main: launch -> L2 /init measured" 'L1: launch -> L2 /init [0-9.]+s'
    if [ "$HIL_VMM" = vflaunch ]; then
        F=$(segment "$LOG" builtin)
        builtin_checks builtin
        check "builtin: L2 brought up both vCPUs" 'L2: 2 cpu\(s\) online'
        igb_checks builtin
        # shellcheck source=tests/hil/virtio-checks.sh
        . "$HERE/virtio-checks.sh" # run virtio's verdict lines
    fi
    grep -E "HIL ERROR|_EXIT=" "$LOG" | sed 's/^/[hil] L1 said: /' || true
fi

if want_boot host; then
    say "== L1 with the project's host kernel (iommufd, vfio cdev; no iommu=pt)"
    qemu_rc host "$QRC_HOST"
    F=$LOG_HOST
    check "L1 runs the project's host kernel, no module support" 'L1: kernel without module support'
    check "L1 kernel is ours" 'L1: kernel [0-9.]+-vflaunch-host,'
    absent "L1 booted without iommu=pt" 'L1: kernel .*cmdline: .*iommu=pt'
    check "L1: interrupt remapping enabled" 'L1: dmesg: .*(Interrupt remapping enabled|Enabled IRQ remapping)'
    count "L1: the VFs' IOMMU groups translate DMA (type DMA, not identity)" 3 'L1: VF [0-9a-f:.]+ driver=vfio-pci .*type=DMA(-FQ)?\)$'
    check "L1: iommufd's /dev/iommu exists" 'L1: iommufd: /dev/iommu is a character device'
    check "L1: a vfio cdev for each of the 3 VFs in /dev/vfio/devices" 'L1: vfio cdev: /dev/vfio/devices: vfio[0-9]+ vfio[0-9]+ vfio[0-9]+'
    check "L1: the NVMe secondary controller is online" 'L1: nvme: .*Online|L1: nvme: .*online'
    check "vflaunch check: interrupt remapping on" 'L1: check: ok +interrupt remapping'
    count "vflaunch check: the 2 igb VFs and the NVMe VF usable" 3 'L1: check: ok +0000:'
    F=$(segment "$LOG_HOST" host)
    builtin_checks host
    igb_checks host
    F=$(segment "$LOG_HOST" nvme)
    builtin_checks nvme
    check "nvme: L2's built-in nvme driver bound the VF" 'L2: NVMe driver nvme bound to [0-9a-f:.]+'
    check "nvme: L2 sees the namespace" 'L2: NVMe namespace nvme[0-9]+n1: 64 MiB'
    check "nvme: O_DIRECT write + read back of 4 MiB checksum equal" 'L2: NVMe data check: read back what was written'
    check "nvme: vflaunch mapped part of a BAR straight into the guest" 'BAR[0-9] \+0x[0-9a-f]+ \(0x[0-9a-f]+ bytes\) mapped into the guest'
    check "nvme: vflaunch traps the MSI-X pages" 'trapping 0x[0-9a-f]+\+0x[0-9a-f]+'
    say "nvme VF BARs (vflaunch, RUST_LOG=debug):"
    grep -E 'BAR[0-9].*(bytes at guest|mapped into the guest)|trapping|MSI-X with' "$F" | sed 's/^.*L2| /[hil]   /' || true
    F=$(segment "$LOG_HOST" pvh)
    builtin_checks pvh
    check "pvh: vflaunch booted the ELF vmlinux through its PVH entry" 'kernel entry 0x[0-9a-f]+ \(Pvh32\)'
    check "pvh: igbvf bound VF0" 'L2: VF driver igbvf bound to [0-9a-f:.]+'
    check "pvh: VF0 got a DHCP lease" 'L2: udhcpc: lease of [0-9.]+ obtained'
    check "pvh: VF0 pinged 10.0.2.2: 3 received, 0% loss" 'L2: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
    grep -E "HIL ERROR|_EXIT=" "$LOG_HOST" | sed 's/^/[hil] L1 (host) said: /' || true
fi

say "timings:"
for k in ${KTIMES[@]+"${KTIMES[@]}"}; do say "  kernel: $k"; done
for f in "$LOG" "$LOG_HOST"; do
    [ -f "$f" ] || continue
    sed -n -E 's/.*L1: RUN ([a-z]+) start.*/run \1/p; s/.*L1: launch -> L2 \/init (.*)/\1/p' "$f" |
        awk '$1 == "run" { run = $2; next } { print "[hil]   launch -> L2 /init, run " run " (" (run == "main" ? "Debian kernel + igbvf module" : "project kernel") "): " $0 }'
done
say "  L1 boots: debian $T_DEB, host $T_HOST (parallel=$HIL_PARALLEL); whole HIL $((SECONDS - T0))s"
if [ "$failed" = 0 ]; then
    say "HIL PASSED ($HIL_VMM, L1 boots ${T_RUN}s, total $((SECONDS - T0))s)"
    exit 0
fi
for f in "$LOG" "$LOG_HOST"; do
    [ -f "$f" ] || continue
    say "---- last 60 lines of $f ----"
    tail -n 60 "$f"
done
say "HIL FAILED ($HIL_VMM): see $LOG${HOST_KERNEL:+ and $LOG_HOST}"
exit 1
