#!/bin/bash
# Start-up benchmark in the rig (not a test; CI does not run it): vflaunch
# against the reference qemu (and Cloud Hypervisor, if given) in ONE L1 boot.
#
#   host --(qemu TCG, intel-iommu, igb with SR-IOV)--> L1 (Debian's kernel,
#   iommu=pt) --(each VMM in turn, nested KVM)--> L2 = the project's guest
#   kernel + l2-init, 2 vCPUs, HIL_L2_MEM MiB, both VFs (DHCP lease + ping)
#
# Rounds of: every VMM with 2 MiB huge pages, then with 4 KiB pages; every
# other round backwards. Per run (all times from L1's clock, from just before
# the VMM starts): first console byte, L2 /init, first DHCP lease, ping done,
# exit; the VMM's own resident memory (Rss + hugetlb - guest RAM, from
# /proc/PID/smaps_rollup at ping done); vflaunch's DMA-map time; L1's KVM
# exit counters of the VM at L2 /init (debugfs; the row also has io, mmio,
# halt, irq and irq-window exits). Then the
# medians and the paired ratios (vflaunch / other, per round, median).
# L1's side is tests/hil/l1-bench. See README.md here.
#
# Env knobs:
#   HIL_BENCH_ROUNDS       rounds (default 3)
#   HIL_BENCH_CH           a Cloud Hypervisor binary: joins the rotation
#   HIL_BENCH_L2_ARGS      extra L2 kernel args (default "loglevel=4")
#   HIL_BENCH_RUN_TIMEOUT  seconds each L2 run may take (default 120)
#   HIL_BENCH_VERBOSE      1 = print every run's VMM log and L2 console
#   HIL_BENCH_PAGES        the page sizes of a round, in order (default "2M 4K")
#   HIL_BENCH_KERNEL       bzImage (default) or vmlinux (the ELF of the same build,
#                          booted through its PVH note: no decompressor) for
#                          vflaunch and qemu; Cloud Hypervisor always boots vmlinux
#   HIL_BENCH_L1_CPUS      L1's vCPUs, 1 (default) or 2: with 1, vflaunch's background
#                          DMA pinning and L2's vCPUs share L1's one CPU
#   HIL_BENCH_STALL        stop an L1 that printed nothing for this many seconds
#                          (default HIL_BENCH_RUN_TIMEOUT + 60; L1 freezes now
#                          and then)
#   HIL_L2_MEM             guest RAM in MiB (default 256)
#   HIL_RUST_LOG           RUST_LOG for vflaunch (default info: it logs the DMA-map time)
#   HIL_BENCH_VFL_ARGS     extra vflaunch arguments (e.g. "--log-format json": timed log lines)
#   HIL_WORK, HIL_TIMEOUT (the L1 boot, default 1800), HIL_SKIP_BUILD: as in run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HIL_BENCH_CH=${HIL_BENCH_CH:-}
HIL_BENCH_RUN_TIMEOUT=${HIL_BENCH_RUN_TIMEOUT:-120}
HIL_BENCH_PAGES=${HIL_BENCH_PAGES:-2M 4K}
HIL_BENCH_KERNEL=${HIL_BENCH_KERNEL:-bzImage}
HIL_BENCH_VFL_ARGS=${HIL_BENCH_VFL_ARGS:-}

say() { echo "[bench] $*"; }
die() { echo "[bench] ERROR: $*" >&2; exit 1; }

# shellcheck source=tests/hil/lib.sh
. "$HERE/lib.sh"
# shellcheck source=tests/hil/bench-lib.sh
. "$HERE/bench-lib.sh" # the other knobs' defaults and checks, the lock
[ -z "$HIL_BENCH_CH" ] || [ -x "$HIL_BENCH_CH" ] || die "HIL_BENCH_CH=$HIL_BENCH_CH is not an executable"
for pg in $HIL_BENCH_PAGES; do case $pg in 2M | 4K) ;; *) die "HIL_BENCH_PAGES takes 2M and 4K, not '$pg'" ;; esac; done
case $HIL_BENCH_KERNEL in bzImage | vmlinux) ;; *) die "HIL_BENCH_KERNEL is bzImage or vmlinux, not '$HIL_BENCH_KERNEL'" ;; esac

T0=$SECONDS
bench_build # VFL, KRES, KDIR, KV, MODDIR

# --- images: L2 = busybox + l2-init (no modules); L1 = l1-bench + the VMMs ------
B=$HIL_WORK/bench
mkdir -p "$B"
new_root "$B/l2root" "$HERE/l2-init"
mk_cpio "$B/l2root" "$B/l2.cpio"
R=$B/l1root
new_root "$R" "$HERE/l1-bench"
install -m 644 "$HERE/l1-bench-lib" "$R/l1-bench-lib"
add_elf "$R" "$(command -v ip)" iproute2-ip
add_elf "$R" "$VFL"
add_elf "$R" "$(command -v qemu-system-x86_64)"
mkdir -p "$R/usr/share/qemu" "$R/l2"
# qboot as BIOS; linuxboot_dma.bin loads -kernel; kvmvapic.bin is always loaded.
for f in qboot.rom linuxboot_dma.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$f" "$R/usr/share/qemu/"; done
add_modules "$R" dca i2c-algo-bit igb vfio vfio_iommu_type1 irqbypass vfio-pci-core vfio-pci kvm ccp kvm-amd
cp "$KRES/bzImage" "$R/l2/bzImage"
cp "$KRES/vmlinux" "$R/l2/vmlinux" # the same build, booted through PVH
cp "$B/l2.cpio" "$R/l2/l2.cpio"
CH=0
if [ -n "$HIL_BENCH_CH" ]; then
    add_elf "$R" "$HIL_BENCH_CH" cloud-hypervisor
    CH=1
fi
bench_conf "$R"
{
    echo "HIL_BENCH_CH=$CH"
    echo "HIL_BENCH_PAGES=$(shq "$HIL_BENCH_PAGES")"
    echo "HIL_BENCH_KERNEL=$(shq "$HIL_BENCH_KERNEL")"
    echo "HIL_BENCH_VFL_ARGS=$(shq "$HIL_BENCH_VFL_ARGS")"
} >>"$R/bench.conf"
mk_cpio "$R" "$B/l1.cpio"
say "L1 image $(du -m "$B/l1.cpio" | cut -f1) MiB (L1 kernel $KV; L2 kernel $(cat "$KRES/release")); VMMs: vflaunch qemu${HIL_BENCH_CH:+ ch ($HIL_BENCH_CH)}"

# --- one L1 boot, as run.sh boots the "debian" L1 --------------------------------
bench_boot_l1 "$B/l1.cpio" bench # LOG, QRC, STALLED, ROWS

# --- tables ------------------------------------------------------------------------
awk -v ch="$CH" "$BENCH_AWK"'
    BEGIN { nm = split("first init lease ping exit exits own dma", M, " ")
        split("first byte|/init|lease|ping done|exit|KVM exits|own MiB|DMA ms", H, "|")
        split("%.3f %.3f %.3f %.3f %.3f %.0f %.1f %.0f", F, " ")
        nv = split(ch ? "vflaunch qemu ch" : "vflaunch qemu", V, " ") }
    { delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        if (f["own_kib"] != "-") f["own"] = f["own_kib"] / 1024; else f["own"] = "-"
        f["dma"] = f["dma_ms"]
        ok = f["rc"] == 0 && $0 !~ / timeout/
        rows[++nr] = sprintf("%-5s %-5s %-9s %3s", f["round"], f["pages"], f["vmm"], f["rc"] ($0 ~ / timeout/ ? "T" : ""))
        for (m = 1; m <= nm; m++) { rows[nr] = rows[nr] sprintf(" %10s", fmt(f[M[m]], F[m]))
            if (ok) { add(f["vmm"] SUBSEP f["pages"] SUBSEP M[m], f[M[m]]); run[f["round"], f["pages"], f["vmm"], M[m]] = f[M[m]] } }
        rounds[f["round"]] = 1 }
    END {
        hdr = sprintf("%-5s %-5s %-9s %3s", "round", "pages", "VMM", "rc"); for (m = 1; m <= nm; m++) hdr = hdr sprintf(" %10s", H[m])
        print "per run (seconds from launch, L1 clock; KVM exits = L1 KVM exits of the VM up to L2 /init; own = Rss + hugetlb - guest RAM at ping done):"; print "  " hdr
        for (i = 1; i <= nr; i++) print "  " rows[i]
        print ""; print "medians:"; hdr = sprintf("%-5s %-9s %3s", "pages", "VMM", "n"); for (m = 1; m <= nm; m++) hdr = hdr sprintf(" %10s", H[m]); print "  " hdr
        for (p = 1; p <= 2; p++) { pg = p == 1 ? "2M" : "4K"
            for (v = 1; v <= nv; v++) { line = sprintf("%-5s %-9s %3d", pg, V[v], cnt[V[v] SUBSEP pg SUBSEP "exit"])
                for (m = 1; m <= nm; m++) line = line sprintf(" %10s", fmt(med(V[v] SUBSEP pg SUBSEP M[m]), F[m])); print "  " line } }
        print ""; print "paired ratios vflaunch / other (median over the rounds where both ran; < 1 = vflaunch better):"
        hdr = sprintf("%-5s %-14s %3s", "pages", "ratio", "n"); for (m = 1; m <= nm - 1; m++) hdr = hdr sprintf(" %10s", H[m]); print "  " hdr
        for (p = 1; p <= 2; p++) { pg = p == 1 ? "2M" : "4K"
            for (v = 2; v <= nv; v++) { n = 0
                line = ""
                for (m = 1; m <= nm - 1; m++) { key = "r" SUBSEP pg SUBSEP V[v] SUBSEP M[m]; k = 0
                    for (r in rounds) { a = run[r, pg, "vflaunch", M[m]]; b = run[r, pg, V[v], M[m]]
                        if (a != "" && a != "-" && b != "" && b != "-" && b + 0 > 0) add(key, a / b) }
                    if (cnt[key] > n) n = cnt[key]
                    line = line sprintf(" %10s", fmt(med(key), "%.2f")) }
                print "  " sprintf("%-5s %-14s %3d", pg, "vflaunch/" V[v], n) line } } }
' "$ROWS" | sed 's/^/[bench] /'
bad=$(grep -c -v -E ' rc=0 first=[0-9].* ping=[0-9]' "$ROWS" || true)
npg=$(echo "$HIL_BENCH_PAGES" | wc -w)
want=$((HIL_BENCH_ROUNDS * npg * (2 + CH)))
if [ "$QRC" != 0 ] || [ "$bad" != 0 ] || [ "$(wc -l <"$ROWS")" != "$want" ] || ! grep -q '^L1: bench: done' "$LOG"; then
    say "$bad run(s) failed or timed out, $(wc -l <"$ROWS") of $want runs reported$([ "$STALLED" = 0 ] || echo ", L1 froze"), L1 qemu exit code $QRC: see $LOG"
    exit 1
fi
say "done: $(wc -l <"$ROWS") runs; rows in $ROWS, log in $LOG"
