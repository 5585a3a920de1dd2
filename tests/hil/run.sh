#!/bin/bash
# vflaunch hardware-in-loop test: SR-IOV VF passthrough with no real hardware.
#
#   host --(qemu, TCG, intel-iommu, igb NIC with SR-IOV [, NVMe with SR-IOV])--> L1 Linux
#     L1: igb PF -> 2 VFs on vfio-pci, kvm_amd = nested /dev/kvm
#     L1 --(vflaunch run --device ...)--> L2 Linux, several runs per L1 boot
#       L2: igbvf drives the VFs, DHCP lease + ping of 10.0.2.2 through the PF;
#           nvme drives an NVMe VF, O_DIRECT write + read back
#
# Four L1 boots (HIL_BOOTS), in two lanes at the same time (one core each):
# debian then nointremap | host then noiommu.
#   debian  L1 = Debian's kernel, intel_iommu=on iommu=pt. vflaunch doctor,
#           bind/unbind (l1-doctor). Runs: main (the historical run: Debian's
#           kernel in L2 with igbvf as a module), api (the guest kernel made
#           and booted through the REST API, stopped by SIGTERM = the ACPI
#           power button), builtin (the project's guest kernel, no modules).
#   host    L1 = the project's host kernel (iommufd, vfio cdev), intel_iommu=on
#           without iommu=pt (DMA translated). Runs: host (guest kernel, both
#           igb VFs, auto = iommufd), group (the same, group backend), nvme
#           (guest kernel, an NVMe VF), pvh (its ELF vmlinux through PVH, with
#           VF0), fds (vflaunch as uid 107 with descriptors a root wrapper
#           opened: --iommufd-fd, --device BDF,fd=N).
#   nointremap, noiommu  L1 = Debian's kernel with intel-iommu,intremap=off /
#           without an emulated IOMMU: doctor names the problem and the fix,
#           check and run refuse (exit 3); no L2.
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
#   HIL_BOOTS       which L1 boots (default "debian host nointremap noiommu")
#   HIL_IOMMU       the emulated IOMMU of the "debian" boot: on (default,
#                   intel-iommu,intremap=on) | nointremap (intremap=off) | none
#                   (no IOMMU device; then only main runs and vflaunch refuses)
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
HIL_BOOTS=${HIL_BOOTS:-debian host nointremap noiommu}
HIL_PARALLEL=${HIL_PARALLEL:-1}
HIL_IOMMU=${HIL_IOMMU:-on}

say() { echo "[hil] $*"; }
die() { echo "[hil] ERROR: $*" >&2; exit 1; }

case "$HIL_VMM" in vflaunch | qemu) ;; *) die "HIL_VMM must be vflaunch or qemu, not '$HIL_VMM'" ;; esac
case "$HIL_IOMMU" in on | nointremap | none) ;; *) die "HIL_IOMMU must be on, nointremap or none, not '$HIL_IOMMU'" ;; esac
for b in $HIL_BOOTS; do
    case $b in debian | host | nointremap | noiommu) ;; *) die "HIL_BOOTS takes debian, host, nointremap, noiommu, not '$b'" ;; esac
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

# Common part of both L1 images: l1-init, l1-doctor, the VMM, iproute2's ip
# (busybox's cannot set a VF's MAC), util-linux's setpriv (busybox-static has
# no chpst), the L2 kernels and initramfs images.
l1_common() { # root
    new_root "$1" "$HERE/l1-init"
    install -m 644 "$HERE/l1-doctor" "$1/l1-doctor"
    add_elf "$1" "$(command -v ip)" iproute2-ip
    add_elf "$1" "$(command -v setpriv)"
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
hil_conf() { # L1 kind, runs, NVMe 0/1[, IOMMU variant]
    echo "HIL_L1=$(shq "$1")"
    echo "HIL_RUNS=$(shq "$2")"
    echo "HIL_NVME=$3"
    echo "HIL_IOMMU=$(shq "${4:-on}")"
    echo "HIL_VMM=$(shq "$HIL_VMM")"
    echo "HIL_L2_ARGS=$(shq "$HIL_L2_ARGS")"
    echo "HIL_RUST_LOG=$(shq "$HIL_RUST_LOG")"
    echo "HIL_L2_TIMEOUT=$((${HIL_L2_TIMEOUT:-300}))"
    echo "HIL_RUN_TIMEOUT=$((${HIL_RUN_TIMEOUT:-240}))"
}
IMGS=
if want_boot debian || want_boot nointremap || want_boot noiommu; then
    # Modules, in dependency order of their depends= fields: igb <-
    # dca,i2c-algo-bit; vfio-pci <- vfio-pci-core <- vfio,irqbypass; kvm-amd
    # <- kvm,ccp; kvm <- irqbypass. igbvf: l1-doctor's bind/unbind round trip.
    L1=$HIL_WORK/l1root
    l1_common "$L1"
    add_modules "$L1" dca i2c-algo-bit igb igbvf vfio vfio_iommu_type1 irqbypass \
        vfio-pci-core vfio-pci kvm ccp kvm-amd
    cp "${HIL_L2_KERNEL:-$KDIR/boot/vmlinuz-$KV}" "$L1/l2/vmlinuz"
    cp "$HIL_WORK/l2.cpio" "$L1/l2/l2.cpio"
    runs=main
    [ "$HIL_VMM" != vflaunch ] || [ "$HIL_IOMMU" != on ] || runs="main api builtin"
    hil_conf debian "$runs" 0 "$HIL_IOMMU" >"$L1/hil.conf"
    # shellcheck source=tests/hil/virtio-image.sh
    [ "$HIL_VMM" != vflaunch ] || [ "$HIL_IOMMU" != on ] || . "$HERE/virtio-image.sh" # run virtio: its L1/L2 files, HIL_RUNS += virtio
    mk_cpio "$L1" "$HIL_WORK/l1.cpio"
    IMGS="$IMGS l1.cpio $(du -m "$HIL_WORK/l1.cpio" | cut -f1) MiB (L1 kernel $KV, runs: $runs, IOMMU $HIL_IOMMU);"
    # The short boots: the same image with another /hil.conf appended (the
    # kernel unpacks concatenated archives in order, a later file wins).
    for v in nointremap:nointremap noiommu:none; do
        want_boot "${v%%:*}" || continue
        rm -rf "$HIL_WORK/l1conf" && mkdir -p "$HIL_WORK/l1conf"
        hil_conf debian main 0 "${v#*:}" >"$HIL_WORK/l1conf/hil.conf"
        mk_cpio "$HIL_WORK/l1conf" "$HIL_WORK/l1conf.cpio"
        cat "$HIL_WORK/l1.cpio" "$HIL_WORK/l1conf.cpio" >"$HIL_WORK/l1-${v%%:*}.cpio"
        IMGS="$IMGS l1-${v%%:*}.cpio (IOMMU ${v#*:}, run main: refused);"
    done
fi
if want_boot host; then
    L1=$HIL_WORK/l1root-host
    l1_common "$L1"
    add_elf "$L1" "$(command -v nvme)"
    cp "$GUEST_VMLINUX" "$L1/l2/vmlinux"
    hil_conf host "host group nvme pvh fds user" 1 >"$L1/hil.conf"
    mk_cpio "$L1" "$HIL_WORK/l1-host.cpio"
    IMGS="$IMGS l1-host.cpio $(du -m "$HIL_WORK/l1-host.cpio" | cut -f1) MiB (L1 kernel $(basename "$(dirname "$HOST_KERNEL")"), runs: host group nvme pvh fds);"
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
LOG_NOINTREMAP=$HIL_WORK/logs/hil-$STAMP-nointremap.log
LOG_NOIOMMU=$HIL_WORK/logs/hil-$STAMP-noiommu.log
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
    -netdev user,id=n0 -device igb,netdev=n0,romfile=
    -no-reboot -display none -serial stdio -monitor none)
iommu_dev() { # on|nointremap|none -> the emulated IOMMU's qemu arguments
    case $1 in
    on) echo "-device intel-iommu,intremap=on" ;;
    nointremap) echo "-device intel-iommu,intremap=off" ;;
    none) ;;
    esac
}
# Debian's kernel as L1: boot NAME IMAGE IOMMU LOG (NAME != debian: a short
# boot, its lines echoed as "[hil-NAME ...]").
boot_debian_kernel() {
    local t=$SECONDS rc
    # shellcheck disable=SC2046 # iommu_dev's words are separate arguments
    timeout "$HIL_TIMEOUT" qemu-system-x86_64 "${QEMU_COMMON[@]}" $(iommu_dev "$3") \
        -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$2" \
        -append "console=ttyS0 panic=-1 intel_iommu=on iommu=pt" \
        </dev/null 2>&1 | stamp | tee "$4" | if [ "$1" = debian ]; then cat; else sed -u "s/^\[hil /[hil-$1 /"; fi
    rc=${PIPESTATUS[0]}
    echo $((SECONDS - t)) >"$HIL_WORK/logs/.t-$1"
    return "$rc"
}
boot_debian() { boot_debian_kernel debian "$HIL_WORK/l1.cpio" "$HIL_IOMMU" "$LOG"; }
# A short boot (nointremap|noiommu), if wanted; its exit code -> .rc-NAME.
boot_short() {
    want_boot "$1" || return 0
    if [ "$1" = nointremap ]; then
        boot_debian_kernel nointremap "$HIL_WORK/l1-nointremap.cpio" nointremap "$LOG_NOINTREMAP"
    else
        boot_debian_kernel noiommu "$HIL_WORK/l1-noiommu.cpio" none "$LOG_NOIOMMU"
    fi
    echo $? >"$HIL_WORK/logs/.rc-$1"
}
# The host kernel, with full DMA translation (no iommu=pt), and an NVMe
# controller with SR-IOV in an NVM subsystem (a shared namespace, so its VF
# sees it too): 1 VF, 3 flexible queues and 2 flexible interrupts.
boot_host() {
    local t=$SECONDS rc
    # shellcheck disable=SC2054,SC2046 # the commas are QEMU's; iommu_dev's words are arguments
    timeout "$HIL_TIMEOUT" qemu-system-x86_64 "${QEMU_COMMON[@]}" $(iommu_dev on) \
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
rm -f "$HIL_WORK"/logs/.t-* "$HIL_WORK"/logs/.rc-*
# Two lanes, each a long boot then a short one: debian, nointremap | host, noiommu.
lane1() {
    local rc=0
    if want_boot debian; then
        boot_debian
        rc=$?
    fi
    boot_short nointremap
    return "$rc"
}
lane2() {
    local rc=0
    if want_boot host; then
        boot_host
        rc=$?
    fi
    boot_short noiommu
    return "$rc"
}
set +e
if [ "$HIL_PARALLEL" = 1 ]; then
    say "booting L1s in two lanes at once (TCG, timeout ${HIL_TIMEOUT}s each): debian, nointremap | host, noiommu (of: $HIL_BOOTS); logs: $HIL_WORK/logs/hil-$STAMP*.log"
    lane2 &
    HPID=$!
    lane1
    QRC=$?
    wait "$HPID"
    QRC_HOST=$?
else
    say "booting L1s one after the other (TCG, timeout ${HIL_TIMEOUT}s each): $HIL_BOOTS; logs: $HIL_WORK/logs/hil-$STAMP*.log"
    lane1
    QRC=$?
    lane2
    QRC_HOST=$?
fi
set -e
want_boot debian || QRC=-
want_boot host || QRC_HOST=-
QRC_NOINTREMAP=$(cat "$HIL_WORK/logs/.rc-nointremap" 2>/dev/null || echo -)
QRC_NOIOMMU=$(cat "$HIL_WORK/logs/.rc-noiommu" 2>/dev/null || echo -)
boot_time() { # NAME -> "Ns" or "not run"
    if [ -f "$HIL_WORK/logs/.t-$1" ]; then echo "$(cat "$HIL_WORK/logs/.t-$1")s"; else echo "not run"; fi
}
T_DEB=$(boot_time debian)
T_HOST=$(boot_time host)
T_NOINTREMAP=$(boot_time nointremap)
T_NOIOMMU=$(boot_time noiommu)
! want_boot debian || ln -sfn "$(basename "$LOG")" "$HIL_WORK/logs/latest.log"
! want_boot host || ln -sfn "$(basename "$LOG_HOST")" "$HIL_WORK/logs/latest-host.log"
! want_boot nointremap || ln -sfn "$(basename "$LOG_NOINTREMAP")" "$HIL_WORK/logs/latest-nointremap.log"
! want_boot noiommu || ln -sfn "$(basename "$LOG_NOIOMMU")" "$HIL_WORK/logs/latest-noiommu.log"
T_RUN=$((SECONDS - T0 - T_IMAGES))
say "L1 qemu exit codes: debian $QRC ($T_DEB), host $QRC_HOST ($T_HOST), nointremap $QRC_NOINTREMAP ($T_NOINTREMAP), noiommu $QRC_NOIOMMU ($T_NOIOMMU); L1 boots took ${T_RUN}s (setup ${T_SETUP}s, cargo $((T_BUILD - T_SETUP))s, kernels $((T_KERNELS - T_BUILD))s, images $((T_IMAGES - T_KERNELS))s)"

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
    check "$1: the vCPUs' TSC rate is pinned to L1's; TSC-deadline timer offered" "tsc: vCPUs count at the host's [0-9]+ kHz; TSC-deadline timer offered"
    check "$1: L2 runs its local APIC timer in TSC-deadline mode" 'L2: timer: .*TSC deadline timer available'
    check "$1: vflaunch exited with 0" "L1: RUN $1 VFLAUNCH_EXIT=0\$"
}

# The short boots (and HIL_IOMMU != on): doctor's lines, and no L2.
short_checks() { # name, IOMMU variant (on|nointremap|none)
    local keep=$HIL_IOMMU
    HIL_IOMMU=$2
    # shellcheck source=tests/hil/doctor-checks.sh
    . "$HERE/doctor-checks.sh"
    HIL_IOMMU=$keep
    absent "$1: vflaunch refused before L2 started (no L2 /init)" 'L2: STAGE init '
    check "$1: vflaunch's refusal names the check" 'L2\| .*(interrupt remapping|IOMMU|iommu|vfio-pci)'
}

if want_boot debian; then
    say "== L1 with Debian's kernel ($KV, iommu=pt, IOMMU $HIL_IOMMU)"
    qemu_rc debian "$QRC"
    # The historical checks, on the log up to the end of the main run.
    F=$HIL_WORK/logs/run-main-and-before.log
    sed '/L1: RUN main end/q' "$LOG" >"$F"
    if [ "$HIL_IOMMU" = on ]; then
        check "L2 booted and ran its /init" 'L2: STAGE init '
        check "L2 brought up both vCPUs" 'L2: 2 cpu\(s\) online'
        count "L2 bound igbvf to each VF" 2 'L2: VF driver igbvf bound to [0-9a-f:.]+'
        count "L2 saw 4 KiB config space (ECAM) on each VF" 2 'L2: VF [0-9a-f:.]+ config space 4096 bytes'
        count "each VF got a DHCP lease" 2 'L2: udhcpc: lease of [0-9.]+ obtained'
        count "each VF pinged 10.0.2.2: 3 received, 0% loss" 2 'L2: 3 packets transmitted, 3 (packets )?received, 0% packet loss'
    fi
    if [ "$HIL_VMM" = vflaunch ] && [ "$HIL_IOMMU" != on ]; then
        short_checks debian "$HIL_IOMMU"
    elif [ "$HIL_VMM" = vflaunch ]; then
        # shellcheck source=tests/hil/doctor-checks.sh
        . "$HERE/doctor-checks.sh"
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
    if [ "$HIL_IOMMU" = on ]; then
        check "$HIL_VMM exited with 0" "^\[hil +[0-9.]+s\] ${TAG}_EXIT=0\$"
        F=$(segment "$LOG" main)
        if [ -z "${HIL_L2_KERNEL:-}" ]; then
            check "main: L2 ran Debian's kernel with igbvf as a module" 'L2: modules loaded: [1-9][0-9]* \(.*igbvf'
        fi
        check "main: launch -> L2 /init measured" 'L1: launch -> L2 /init [0-9.]+s'
    fi
    if [ "$HIL_VMM" = vflaunch ] && [ "$HIL_IOMMU" = on ]; then
        F=$(segment "$LOG" api)
        check "api: vflaunch --api-socket answered vflaunch ping" 'L1: api: vflaunch ping answered after [0-9]+ retries'
        check "api: PUT vm.create (Kata's shape, VF0) answered 2xx" 'L1: api: PUT vm.create @[^ ]+ -> rc=0 '
        check "api: vm.info: Created" 'L1: api: state after vm.create: Created$'
        check "api: vm.add-device VF1 -> guest 0000:00:02.0" 'L1: api: vm.add-device bdf: 0000:00:02.0$'
        check "api: PUT vm.boot answered 2xx" 'L1: api: PUT vm.boot -> rc=0 '
        check "api: vm.info: Running" 'L1: api: state after vm.boot: Running$'
        check "api: vm.info's device_tree has vf0 on 00:01.0 and vf1 on 00:02.0" 'L1: api: device_tree: .*"vf0".*"pci_bdf": *"0000:00:01.0".*"vf1".*"pci_bdf": *"0000:00:02.0"'
        check "api: L2 runs the project's guest kernel" 'L2: kernel [0-9.]+-vflaunch,'
        igb_checks api
        check "api: L2 found the ACPI power button's input device" 'L2: waiting for the power button \(event[0-9]+\)'
        check "api: SIGTERM -> L2: power button pressed: orderly shutdown" 'L2: power button pressed: orderly shutdown'
        check "api: vflaunch exited with 0 within 10 s of SIGTERM" 'L1: api: vflaunch exited with 0 [0-9]\.[0-9]+s after SIGTERM'
        check "api: events in order: starting, created, booted, power-button, shutdown, exit" 'L1: api: event order: starting (created |device-added )+booted power-button shutdown exit $'
        check "api: an exit event with exit code 0" 'L1: api-event: .*"event": *"exit".*"exit_code": *0'
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
    check "host: --vfio-backend auto picked iommufd" 'vfio backend: iommufd \(auto: iommufd, because /dev/iommu exists'
    count "host: both VFs on the iommufd backend" 2 'IOMMU group [0-9]+, iommufd$'
    F=$(segment "$LOG_HOST" group)
    builtin_checks group
    igb_checks group
    count "group: both VFs on the group backend (--vfio-backend group)" 2 'IOMMU group [0-9]+, vfio-group$'
    absent "group: no iommufd" 'IOMMU group [0-9]+, iommufd$'
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
    check "pvh: VF0 on the group backend, guest RAM in 4 KiB pages" 'IOMMU group [0-9]+, vfio-group$'
    F=$(segment "$LOG_HOST" fds)
    builtin_checks fds
    igb_checks fds
    check "fds: /dev/iommu and the cdevs are root's, mode 0600; /dev/kvm group 107" 'L1: fds: crw------- 0:0 /dev/iommu;crw-rw---- 0:107 /dev/kvm;crw------- 0:0 /dev/vfio/devices/vfio[0-9]+;crw------- 0:0 /dev/vfio/devices/vfio[0-9]+;'
    check "fds: uid 107 cannot open /dev/iommu itself" 'L1: fds: uid 107 opening /dev/iommu itself: rc=[1-9][0-9]* .*(denied|Permission)'
    check "fds: uid 107 cannot open a vfio cdev itself" 'L1: fds: uid 107 opening /dev/vfio/devices/vfio[0-9]+ itself: rc=[1-9][0-9]* .*(denied|Permission)'
    check "fds: the wrapper opened /dev/iommu and both cdevs, memlock unlimited" 'fds-wrapper: fd 5 /dev/iommu, fd 6 /dev/vfio/devices/vfio[0-9]+, fd 7 /dev/vfio/devices/vfio[0-9]+; memlock unlimited'
    check "fds: vflaunch ran as uid 107" 'fds-wrapper: vflaunch runs as uid 107 gid 107'
    count "fds: both VFs on the iommufd backend from the descriptors" 2 'IOMMU group [0-9]+, iommufd$'
    F=$(segment "$LOG_HOST" user)
    builtin_checks user
    igb_checks user
    check "user: /dev/kvm and the VFs' group nodes usable by group 107 only" 'L1: user: crw-rw---- 0:107 /dev/kvm;crw-rw---- 0:107 /dev/vfio/[0-9]+;crw-rw---- 0:107 /dev/vfio/[0-9]+;'
    check "user: vflaunch ran as uid 107 with no capability and a memlock limit" 'user-wrapper: uid 107 gid 107 memlock [0-9]+ KiB CapEff: 0000000000000000'
    count "user: both VFs on the group backend" 2 'IOMMU group [0-9]+, vfio-group$'
    grep -E "HIL ERROR|_EXIT=" "$LOG_HOST" | sed 's/^/[hil] L1 (host) said: /' || true
fi

for v in nointremap:nointremap:"$QRC_NOINTREMAP":"$LOG_NOINTREMAP" noiommu:none:"$QRC_NOIOMMU":"$LOG_NOIOMMU"; do
    IFS=: read -r name iommu qrc F <<<"$v"
    want_boot "$name" || continue
    say "== L1 with Debian's kernel, $([ "$iommu" = none ] && echo "no emulated IOMMU" || echo "intel-iommu,intremap=off") (doctor, then check and run refuse)"
    qemu_rc "$name" "$qrc"
    short_checks "$name" "$iommu"
done

# --- guest RAM pinned for DMA, by backend and page size ------------------------
# Every run's "guest RAM (N MiB) pinned and mapped for device DMA in X ms",
# with its backend ("IOMMU group G, <backend>") and its pages.
DMA=$HIL_WORK/logs/dma-map.txt
: >"$DMA"
for l in debian:"$LOG" host:"$LOG_HOST"; do
    f=${l#*:}
    [ -f "$f" ] || continue
    while read -r r; do
        seg=$(segment "$f" "$r")
        ms=$(sed -n 's/.*guest RAM (\([0-9]*\) MiB) pinned and mapped for device DMA in \([0-9]*\) ms.*/\2 \1/p' "$seg" | head -n1)
        [ -n "$ms" ] || continue
        be=$(sed -n 's/.*IOMMU group [0-9]*, \([a-z-]*\)$/\1/p' "$seg" | head -n1)
        pg=$(sed -n 's/.*guest RAM: [0-9]* MiB in \(2 MiB huge\|4 KiB\) pages.*/\1/p' "$seg" | head -n1)
        pg=${pg/ huge/}
        echo "${l%%:*} $r ${be:-?} ${pg/ /} ${ms% *} ${ms#* }" >>"$DMA"
    done < <(sed -n 's/.*L1: RUN \([a-z]*\) start.*/\1/p' "$f")
done
if [ -s "$DMA" ]; then
    say "guest RAM pinned and mapped for device DMA (vflaunch's log; L1 'debian' has iommu=pt, 'host' translates):"
    say "  L1      run      backend     pages  RAM       DMA map"
    while read -r l1 r be pg ms mib; do
        say "$(printf '  %-7s %-8s %-11s %-6s %-9s %6s ms' "$l1" "$r" "$be" "$pg" "$mib MiB" "$ms")"
    done <"$DMA"
    if want_boot host; then
        F=$DMA
        for c in "iommufd 4KiB" "iommufd 2MiB" "vfio-group 4KiB" "vfio-group 2MiB"; do
            check "DMA map timed in L1 host with ${c% *} and ${c#* } pages" "^host [a-z]+ ${c% *} ${c#* } "
        done
    fi
fi

say "timings:"
for k in ${KTIMES[@]+"${KTIMES[@]}"}; do say "  kernel: $k"; done
for f in "$LOG" "$LOG_HOST"; do
    [ -f "$f" ] || continue
    sed -n -E 's/.*L1: RUN ([a-z]+) start.*/run \1/p; s/.*L1: launch -> L2 \/init (.*)/\1/p' "$f" |
        awk '$1 == "run" { run = $2; next } { print "[hil]   launch -> L2 /init, run " run " (" (run == "main" ? "Debian kernel + igbvf module" : "project kernel") "): " $0 }'
done
say "  L1 boots: debian $T_DEB, host $T_HOST, nointremap $T_NOINTREMAP, noiommu $T_NOIOMMU (parallel=$HIL_PARALLEL: debian, nointremap | host, noiommu); whole HIL $((SECONDS - T0))s"
if [ "$failed" = 0 ]; then
    say "HIL PASSED ($HIL_VMM, L1 boots ${T_RUN}s, total $((SECONDS - T0))s)"
    exit 0
fi
for f in "$LOG" "$LOG_HOST" "$LOG_NOINTREMAP" "$LOG_NOIOMMU"; do
    [ -f "$f" ] || continue
    say "---- last 60 lines of $f ----"
    tail -n 60 "$f"
done
say "HIL FAILED ($HIL_VMM): see $LOG${HOST_KERNEL:+ and $LOG_HOST}"
exit 1
