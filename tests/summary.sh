#!/usr/bin/env bash
# The end-of-run summary of the test command (tests/run.sh sources this):
#
#   bash tests/summary.sh CARGO_LOG SKIP_LOG HIL_STATUS [CARGO_STATUS]
#
# CARGO_LOG is the captured output of `cargo test`; SKIP_LOG is the file the
# tests appended `<test name>: <reason>` lines to (VFLAUNCH_SKIP_LOG, see
# tests/common/mod.rs); HIL_STATUS is the exit status of tests/hil/run.sh, or
# "not run"; CARGO_STATUS is that of `cargo test` (default 0). With CI=true,
# skips are also reported in a WARNING line (not a failure).
#
# Counting: a skipped test returns early and so counts as passed in cargo's
# `test result:` lines. skipped = the number of lines in the skip log;
# passed = cargo passed - skipped (+ 1 for the HIL when it exited 0);
# failed = cargo failed (at least 1 if cargo test exited non-zero, e.g. a
# build error) (+ 1 for the HIL when it exited non-zero).
# The last line is always `summary: N passed, M failed, K skipped`.

test_summary() {
    local cargo_log=$1 skip_log=$2 hil=$3 cargo_status=${4:-0}
    local c_pass c_fail c_ign skipped passed failed hil_pass=0 hil_fail=0
    # One `test result:` line per test binary and doc-test run.
    read -r c_pass c_fail c_ign < <(awk '
        /^test result: / {
            for (i = 1; i <= NF; i++) {
                if ($(i + 1) ~ /^passed;/) p += $i
                if ($(i + 1) ~ /^failed;/) f += $i
                if ($(i + 1) ~ /^ignored;/) g += $i
            }
        }
        END { print p + 0, f + 0, g + 0 }' "$cargo_log")
    skipped=0
    if [[ -s $skip_log ]]; then
        skipped=$(wc -l <"$skip_log")
    fi
    case $hil in
    "not run") ;;
    0) hil_pass=1 ;;
    *) hil_fail=1 ;;
    esac
    passed=$((c_pass - skipped + hil_pass))
    if ((cargo_status != 0 && c_fail == 0)); then
        c_fail=1 # cargo failed before or beside any test: count it as one
    fi
    failed=$((c_fail + hil_fail))

    echo "== summary"
    echo "cargo test (exit $cargo_status): $c_pass passed (of which $skipped skipped), $c_fail failed, $c_ign ignored"
    echo "hil: $(case $hil in "not run") echo "not run" ;; 0) echo "passed" ;; *) echo "failed (exit $hil)" ;; esac)"
    echo "ran: $((passed + failed)) tests, $passed passed, $failed failed"
    echo "skipped: $skipped"
    if ((skipped > 0)); then
        sed 's/^/  /' "$skip_log"
        if [[ ${CI:-} == true ]]; then
            echo "WARNING: $skipped test(s) skipped in CI: $(sed "s/: .*//" "$skip_log" | paste -sd, - | sed "s/,/, /g")"
        fi
    fi
    echo "summary: $passed passed, $failed failed, $skipped skipped"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    if (($# < 3 || $# > 4)); then
        echo "usage: $0 CARGO_LOG SKIP_LOG HIL_STATUS [CARGO_STATUS]" >&2
        exit 2
    fi
    test_summary "$@"
fi
