# shellcheck shell=bash
# Shared by the benchmarks bench.sh (start-up) and virtio-bench.sh (virtio
# throughput): the common knobs, the build, the one L1 boot with its stall
# guard, and the awk helpers of the tables. Source it from bash after lib.sh,
# with HERE, REPO, HIL_BENCH_RUN_TIMEOUT (each script's default), say() and
# die(); it sets the other common knobs' defaults, checks them and takes the
# rig's lock.

export HIL_WORK=${HIL_WORK:-$REPO/target/hil}
HIL_BENCH_ROUNDS=${HIL_BENCH_ROUNDS:-3}
HIL_BENCH_L2_ARGS=${HIL_BENCH_L2_ARGS-loglevel=4}
HIL_BENCH_VERBOSE=${HIL_BENCH_VERBOSE:-0}
HIL_BENCH_STALL=${HIL_BENCH_STALL:-$((HIL_BENCH_RUN_TIMEOUT + 60))}
HIL_L2_MEM=${HIL_L2_MEM:-256}
HIL_RUST_LOG=${HIL_RUST_LOG:-info}
HIL_TIMEOUT=${HIL_TIMEOUT:-1800}
HIL_SKIP_BUILD=${HIL_SKIP_BUILD:-0}
HIL_BENCH_L1_CPUS=${HIL_BENCH_L1_CPUS:-1}
case $HIL_BENCH_L1_CPUS in 1 | 2) ;; *) die "HIL_BENCH_L1_CPUS is 1 or 2, not '$HIL_BENCH_L1_CPUS'" ;; esac
case $HIL_BENCH_ROUNDS in '' | *[!0-9]* | 0) die "HIL_BENCH_ROUNDS must be a positive number, not '$HIL_BENCH_ROUNDS'" ;; esac
case $HIL_L2_MEM in '' | *[!0-9]* | 0) die "HIL_L2_MEM must be a number of MiB, not '$HIL_L2_MEM'" ;; esac
mkdir -p "$HIL_WORK/logs"
hil_lock # one rig at a time per work dir (shared with run.sh and guest/run.sh --nested)

# setup.sh, cargo build --release (unless HIL_SKIP_BUILD=1), the guest
# kernel; sets VFL (vflaunch), KRES (the guest kernel's build dir) and
# lib.sh's KDIR, KV, MODDIR (the L1 kernel).
bench_build() {
    bash "$HERE/setup.sh"
    VFL=$REPO/target/release/vflaunch
    if [ "$HIL_SKIP_BUILD" != 1 ]; then
        command -v cargo >/dev/null || PATH=$HOME/.cargo/bin:$PATH
        say "cargo build --release"
        (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
    fi
    [ -x "$VFL" ] || die "$VFL does not exist: build it first or unset HIL_SKIP_BUILD"
    KRES=$(bash "$REPO/guest/build-kernel.sh" --kernel guest | tail -n1) || die "guest/build-kernel.sh --kernel guest failed"
    [ -f "$KRES/bzImage" ] || die "guest/build-kernel.sh gave no bzImage in '$KRES'"
    hil_kernel # KDIR, KV, MODDIR
}

# bench_conf ROOT [KNOB...]: L1's /bench.conf in image ROOT: the common
# knobs and the numeric KNOBs given.
bench_conf() {
    local v
    {
        for v in HIL_BENCH_ROUNDS HIL_BENCH_RUN_TIMEOUT HIL_L2_MEM "${@:2}"; do echo "$v=$((${!v}))"; done
        echo "HIL_BENCH_L2_ARGS=$(shq "$HIL_BENCH_L2_ARGS")"
        echo "HIL_BENCH_VERBOSE=$(shq "$HIL_BENCH_VERBOSE")"
        echo "HIL_RUST_LOG=$(shq "$HIL_RUST_LOG")"
    } >"$1/bench.conf"
}

# bench_boot_l1 CPIO NAME: boots L1 (Debian's kernel, intel_iommu=on
# iommu=pt, as run.sh boots the "debian" L1) from CPIO and echoes its lines
# that start with "L1: ", "BENCH: ", "  VMM| " or "  L2| ". Sets LOG
# ($HIL_WORK/logs/NAME-<timestamp>.log, also latest-NAME.log), QRC (the
# outer qemu's exit code), STALLED (1: it froze and was stopped) and ROWS
# ($HIL_WORK/logs/NAME-rows.txt: L1's "BENCH: row " lines, without that).
bench_boot_l1() {
    local size last tpid n
    LOG=$HIL_WORK/logs/$2-$(date +%Y%m%d-%H%M%S).log
    say "booting L1 (TCG, timeout ${HIL_TIMEOUT}s), $HIL_BENCH_ROUNDS round(s); log: $LOG"
    # Now and then L1 freezes while an L2 runs (no progress at all, so its own
    # run limit never fires; TCG's nested SVM or L1's KVM): L1 is stopped when
    # it has printed nothing for HIL_BENCH_STALL seconds; its rows are kept.
    STALLED=0
    # shellcheck disable=SC2054 # the commas are QEMU's
    timeout "$HIL_TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -machine q35 -m 3072 -smp "$HIL_BENCH_L1_CPUS" \
        -global q35-pcihost.pci-hole64-size=0 \
        -netdev user,id=n0 -device igb,netdev=n0,romfile= \
        -device intel-iommu,intremap=on \
        -no-reboot -display none -serial stdio -monitor none \
        -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$1" \
        -append "console=ttyS0 panic=-1 intel_iommu=on iommu=pt" \
        </dev/null > >(sed -u 's/\r$//' >"$LOG") 2>&1 &
    QPID=$!
    tail -n +1 -F --pid="$QPID" "$LOG" 2>/dev/null | grep --line-buffered -E '^(L1: |BENCH: |  (VMM|L2)\| )' &
    tpid=$!
    size=-1 last=$SECONDS
    while kill -0 "$QPID" 2>/dev/null; do
        sleep 5
        n=$(stat -c %s "$LOG" 2>/dev/null || echo 0)
        if [ "$n" != "$size" ]; then
            size=$n last=$SECONDS
        elif [ $((SECONDS - last)) -ge "$HIL_BENCH_STALL" ] && [ "$STALLED" = 0 ]; then
            say "L1 printed nothing for ${HIL_BENCH_STALL}s: it is frozen; stopping it (run the benchmark again)"
            STALLED=1
            kill "$QPID" 2>/dev/null || true
        fi
    done
    set +e
    wait "$QPID"
    QRC=$?
    wait "$tpid"
    set -e
    sleep 1 # the last lines through sed
    ln -sfn "$(basename "$LOG")" "$HIL_WORK/logs/latest-$2.log"
    say "L1 qemu exit code $QRC, $((SECONDS - T0))s in all"
    ROWS=$HIL_WORK/logs/$2-rows.txt
    sed -n 's/^BENCH: row //p' "$LOG" >"$ROWS"
    [ -s "$ROWS" ] || die "L1 printed no BENCH rows (see $LOG)"
}

# awk functions for the tables: add(key, x) collects a value ("-" or empty:
# none), med(key) is the median of what key collected ("-": nothing),
# fmt(x, f) formats a value with printf format f (keeps "-").
# shellcheck disable=SC2016,SC2034 # awk's, not the shell's; used by the scripts that source this
BENCH_AWK='
    function med(key,   n, i, j, v, t) { n = cnt[key]; if (!n) return "-"
        for (i = 1; i <= n; i++) v[i] = val[key, i]
        for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2 }
    function add(key, x) { if (x == "-" || x == "") return; cnt[key]++; val[key, cnt[key]] = x + 0 }
    function fmt(x, f) { return x == "-" ? "-" : sprintf(f, x) }
'
