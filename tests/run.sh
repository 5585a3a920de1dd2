#!/usr/bin/env bash
# The project's test command: format and lint checks, unit and integration
# tests (cargo test), then the hardware-in-loop test (a real SR-IOV VF passed
# through by vflaunch inside a QEMU TCG L1). Needs root for the HIL's apt
# installs; installs everything else it needs itself.
#
# Ends with a summary (tests/summary.sh): tests run, passed, failed, and every
# test that skipped itself (no /dev/kvm, no VF) with its reason, so a run in
# which a tier did nothing is visible. Exits non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=tests/summary.sh
. tests/summary.sh
# shellcheck source=tests/tools.sh
. tests/tools.sh

cargo_log=$(mktemp)
skip_log=$(mktemp) # fresh and empty: tests append one line per skip
trap 'rm -f "$cargo_log" "$skip_log"' EXIT

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings (also with --features fuzzing)"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features fuzzing -- -D warnings
echo "== test tools (socat, schemathesis)"
install_test_tools target/tools
echo "== cargo test"
status=0
VFLAUNCH_SKIP_LOG=$skip_log cargo test 2>&1 | tee "$cargo_log" || status=$?
echo "== deployment resources: tests/deploy/run.sh"
VFLAUNCH_SKIP_LOG=$skip_log bash tests/deploy/run.sh 2>&1 | tee -a "$cargo_log" || status=$?
if ((status != 0)); then
    test_summary "$cargo_log" "$skip_log" "not run" "$status"
    exit "$status"
fi
echo "== fuzz (tests/fuzz.sh, ${FUZZ_SECONDS:=20} s per target)"
FUZZ_SECONDS=$FUZZ_SECONDS bash tests/fuzz.sh || {
    status=$?
    test_summary "$cargo_log" "$skip_log" "not run" "$status"
    exit "$status"
}
echo "== hardware-in-loop: SR-IOV VF passthrough in nested KVM"
bash tests/hil/run.sh || status=$?
test_summary "$cargo_log" "$skip_log" "$status"
exit "$status"
