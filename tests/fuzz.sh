#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time, starting from the
# committed seed corpus (fuzz/corpus/<target>/), and fails on the first
# crash: a panic or a broken invariant (see src/fuzzing/). New corpus
# entries go to a scratch directory, so the committed corpus stays small.
#
#   bash tests/fuzz.sh                      # every target, 30 s each
#   FUZZ_SECONDS=600 bash tests/fuzz.sh     # longer
#   FUZZ_TARGETS="pci_bus legacy" bash tests/fuzz.sh
#   FUZZ_JOBS=2 ...                         # parallel libFuzzer jobs per target
#
# Needs the nightly toolchain; installs cargo-fuzz if it is missing. A crash
# leaves its input in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>`, fix it, and add the input to
# fuzz/regressions/<target>/ (cargo test replays that directory).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${FUZZ_SECONDS:-30}"
jobs="${FUZZ_JOBS:-1}"
all="pci_bus device_config legacy cli_values config_json intake_env network_info virtio_queue"
targets="${FUZZ_TARGETS:-$all}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi

start=$(date +%s)
nice cargo +nightly fuzz build
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=""
for t in $targets; do
    mkdir -p "fuzz/artifacts/$t"
    mkdir -p "$scratch/$t"
    echo "fuzz: $t for ${secs}s"
    par=()
    if [ "$jobs" -gt 1 ]; then
        # libFuzzer writes each job's log to fuzz-<n>.log in the current directory.
        par=(-jobs="$jobs" -workers="$jobs")
    fi
    if ! (cd "$scratch" && nice cargo +nightly fuzz run --fuzz-dir "$OLDPWD/fuzz" "$t" \
        "$scratch/$t" "$OLDPWD/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$OLDPWD/fuzz/artifacts/$t/" "${par[@]}") 2>"$scratch/$t.log"; then
        tail -n 40 "$scratch/$t.log"
        echo "fuzz: $t FAILED; inputs: $(ls fuzz/artifacts/"$t"/ 2>/dev/null | tr '\n' ' ')"
        failed="$failed $t"
    else
        grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "$scratch/$t.log" | tail -n 1 || true
    fi
done
echo "fuzz: $(($(date +%s) - start)) s in all"
if [ -n "$failed" ]; then
    echo "fuzz: crashes in:$failed"
    exit 1
fi
echo "fuzz: no crash in: $targets"
