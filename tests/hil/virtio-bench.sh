#!/bin/bash
# Virtio throughput benchmark in the rig (not a test; CI does not run it):
# vflaunch's virtio-blk and hybrid vsock against the reference qemu's
# virtio-blk-pci and vhost-vsock-pci, in ONE L1 boot.
#
#   host --(qemu TCG)--> L1 (Debian's kernel) --(each VMM in turn, nested
#   KVM)--> L2 = the project's guest kernel + l2-virtio-bench, 2 vCPUs,
#   HIL_L2_MEM MiB, a read-only raw disk (L1 tmpfs) and vsock CID 3, no VFs
#
# Per run: sequential 1 MiB O_DIRECT reads over the disk (MiB/s), random
# 4 KiB O_DIRECT reads at queue depth 1 and 4 (IOPS), vsock host -> guest
# and guest -> host (MiB/s). Timed with L1's clock (L2's loops are timed by
# their console lines as they arrive in L1; L1's vsock clients time
# themselves); L2's own clock is printed alongside. Rounds of vflaunch then
# qemu, qemu first in even rounds. Then the medians and the paired ratios
# vflaunch / qemu (per round, median; > 1 = vflaunch faster).
# L1's side is tests/hil/l1-virtio-bench, L2's tests/hil/l2-virtio-bench,
# the loops tests/hil/vbench.c. See README.md here.
#
# Env knobs:
#   HIL_BENCH_ROUNDS       rounds (default 3)
#   HIL_VBENCH_DISK_MIB    size of the disk image, MiB (default 128)
#   HIL_VBENCH_RAND        random reads per figure (default 4096)
#   HIL_VBENCH_VSOCK_MIB   MiB per vsock direction (default 64)
#   HIL_VBENCH_VSOCK_WRITE bytes per write() on the sending side (default 262144,
#                          the most; above ~32 KiB L2's kernel sends packets
#                          whose data spans several descriptors)
#   HIL_VBENCH_DIRECT      1 = O_DIRECT in L1 too (vflaunch direct=on, qemu
#                          cache=none; default 0: vflaunch's default, buffered,
#                          and qemu's cache=writeback)
#   HIL_BENCH_L2_ARGS      extra L2 kernel args (default "loglevel=4")
#   HIL_BENCH_RUN_TIMEOUT  seconds each L2 run may take (default 180)
#   HIL_BENCH_VERBOSE      1 = print every run's VMM log and L2 console
#   HIL_BENCH_STALL        stop an L1 that printed nothing for this many seconds
#                          (default HIL_BENCH_RUN_TIMEOUT + 60)
#   HIL_L2_MEM             guest RAM in MiB (default 256)
#   HIL_RUST_LOG           RUST_LOG for vflaunch (default info)
#   HIL_WORK, HIL_TIMEOUT (the L1 boot, default 1800), HIL_SKIP_BUILD: as in run.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HIL_VBENCH_DISK_MIB=${HIL_VBENCH_DISK_MIB:-128}
HIL_VBENCH_RAND=${HIL_VBENCH_RAND:-4096}
HIL_VBENCH_VSOCK_MIB=${HIL_VBENCH_VSOCK_MIB:-64}
HIL_VBENCH_VSOCK_WRITE=${HIL_VBENCH_VSOCK_WRITE:-262144}
HIL_VBENCH_DIRECT=${HIL_VBENCH_DIRECT:-0}
HIL_BENCH_RUN_TIMEOUT=${HIL_BENCH_RUN_TIMEOUT:-180}

say() { echo "[vbench] $*"; }
die() { echo "[vbench] ERROR: $*" >&2; exit 1; }

# shellcheck source=tests/hil/lib.sh
. "$HERE/lib.sh"
# shellcheck source=tests/hil/bench-lib.sh
. "$HERE/bench-lib.sh" # the other knobs' defaults and checks, the lock
for v in HIL_VBENCH_DISK_MIB HIL_VBENCH_RAND HIL_VBENCH_VSOCK_MIB HIL_VBENCH_VSOCK_WRITE; do
    case ${!v} in '' | *[!0-9]* | 0) die "$v must be a positive number, not '${!v}'" ;; esac
done
[ "$HIL_VBENCH_VSOCK_WRITE" -le 262144 ] || die "HIL_VBENCH_VSOCK_WRITE must be at most 262144, not $HIL_VBENCH_VSOCK_WRITE"
case $HIL_VBENCH_DIRECT in 0 | 1) ;; *) die "HIL_VBENCH_DIRECT must be 0 or 1, not '$HIL_VBENCH_DIRECT'" ;; esac

T0=$SECONDS
bench_build # VFL, KRES, KDIR, KV, MODDIR

# --- images: L2 = busybox + l2-virtio-bench + vbench; L1 = l1-virtio-bench + the VMMs
B=$HIL_WORK/vbench
mkdir -p "$B"
command -v cc >/dev/null || die "no C compiler (cc) for tests/hil/vbench.c (apt-get install gcc libc6-dev)"
cc -O2 -Wall -static -pthread -o "$B/vbench" "$HERE/vbench.c" || die "cannot build tests/hil/vbench.c statically (libc6-dev?)"
new_root "$B/l2root" "$HERE/l2-virtio-bench"
install -m 755 "$B/vbench" "$B/l2root/bin/vbench"
mk_cpio "$B/l2root" "$B/l2.cpio"
R=$B/l1root
new_root "$R" "$HERE/l1-virtio-bench"
install -m 644 "$HERE/l1-bench-lib" "$R/l1-bench-lib"
install -m 755 "$B/vbench" "$R/bin/vbench"
add_elf "$R" "$VFL"
add_elf "$R" "$(command -v qemu-system-x86_64)"
mkdir -p "$R/usr/share/qemu" "$R/l2"
# qboot as BIOS; linuxboot_dma.bin loads -kernel; kvmvapic.bin is always loaded.
for f in qboot.rom linuxboot_dma.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$f" "$R/usr/share/qemu/"; done
add_modules "$R" irqbypass kvm ccp kvm-amd vsock vmw_vsock_virtio_transport_common vhost_iotlb vhost vhost_vsock
cp "$KRES/bzImage" "$R/l2/bzImage"
cp "$B/l2.cpio" "$R/l2/l2.cpio"
bench_conf "$R" HIL_VBENCH_DISK_MIB HIL_VBENCH_RAND HIL_VBENCH_VSOCK_MIB HIL_VBENCH_VSOCK_WRITE HIL_VBENCH_DIRECT
mk_cpio "$R" "$B/l1.cpio"
say "L1 image $(du -m "$B/l1.cpio" | cut -f1) MiB (L1 kernel $KV; L2 kernel $(cat "$KRES/release")); disk ${HIL_VBENCH_DISK_MIB} MiB, $HIL_VBENCH_RAND random reads, ${HIL_VBENCH_VSOCK_MIB} MiB each vsock way in writes of $HIL_VBENCH_VSOCK_WRITE bytes"

bench_boot_l1 "$B/l1.cpio" vbench # LOG, QRC, STALLED, ROWS

# --- tables ------------------------------------------------------------------------
awk "$BENCH_AWK"'
    BEGIN { nm = split("seq rand1 rand4 h2g g2h", M, " ")
        split("seq MiB/s|rand1 IOPS|rand4 IOPS|h2g MiB/s|g2h MiB/s", H, "|")
        split("vflaunch qemu", V, " ") }
    function hdr(a, b, c,   s, m) { s = sprintf("%-5s %-14s %3s", a, b, c); for (m = 1; m <= nm; m++) s = s sprintf(" %11s", H[m]); return s }
    { delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        ok = f["rc"] == 0 && $0 !~ / timeout/
        rows[++nr] = sprintf("%-5s %-14s %3s", f["round"], f["vmm"], f["rc"] ($0 ~ / timeout/ ? "T" : ""))
        for (m = 1; m <= nm; m++) { rows[nr] = rows[nr] sprintf(" %11s", f[M[m]])
            if (ok) { add(f["vmm"] SUBSEP M[m], f[M[m]]); add(f["vmm"] SUBSEP M[m] "_l2", f[M[m] "_l2"])
                run[f["round"], f["vmm"], M[m]] = f[M[m]] } }
        rounds[f["round"]] = 1 }
    END {
        print "per run (L1 clock; rand: 4 KiB reads per second):"; print "  " hdr("round", "VMM", "rc")
        for (i = 1; i <= nr; i++) print "  " rows[i]
        for (c = 1; c <= 2; c++) { sfx = c == 1 ? "" : "_l2"
            print ""; print c == 1 ? "medians (L1 clock):" : "medians by L2 clock (h2g/g2h: L2 side of the stream), for comparison:"
            print "  " hdr("", "VMM", "n")
            for (v = 1; v <= 2; v++) { s = sprintf("%-5s %-14s %3d", "", V[v], cnt[V[v] SUBSEP "seq" sfx])
                for (m = 1; m <= nm; m++) s = s sprintf(" %11s", fmt(med(V[v] SUBSEP M[m] sfx), "%.1f")); print "  " s } }
        print ""; print "paired ratios vflaunch / qemu (per round, median; > 1 = vflaunch faster):"
        print "  " hdr("", "ratio", "n"); n = 0; s = ""
        for (m = 1; m <= nm; m++) { key = "r" SUBSEP M[m]
            for (r in rounds) { a = run[r, "vflaunch", M[m]]; b = run[r, "qemu", M[m]]
                if (a != "" && a != "-" && b != "" && b != "-" && b + 0 > 0) add(key, a / b) }
            if (cnt[key] > n) n = cnt[key]
            s = s sprintf(" %11s", fmt(med(key), "%.2f")) }
        print "  " sprintf("%-5s %-14s %3d", "", "vflaunch/qemu", n) s }
' "$ROWS" | sed 's/^/[vbench] /'
bad=$(grep -c -v -E ' rc=0 .*seq=[0-9].* rand4=[0-9].* h2g=[0-9].* g2h=[0-9]' "$ROWS" || true)
want=$((HIL_BENCH_ROUNDS * 2))
if [ "$QRC" != 0 ] || [ "$bad" != 0 ] || [ "$(wc -l <"$ROWS")" != "$want" ] || ! grep -q '^L1: vbench: done' "$LOG"; then
    say "$bad run(s) failed or timed out, $(wc -l <"$ROWS") of $want runs reported$([ "$STALLED" = 0 ] || echo ", L1 froze"), L1 qemu exit code $QRC: see $LOG"
    exit 1
fi
say "done: $(wc -l <"$ROWS") runs; rows in $ROWS, log in $LOG"
