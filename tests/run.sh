#!/usr/bin/env bash
# The project's test command: format and lint checks, unit and integration
# tests (cargo test), then the hardware-in-loop test (a real SR-IOV VF passed
# through by vflaunch inside a QEMU TCG L1). Needs root for the HIL's apt
# installs; installs everything else it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test
echo "== hardware-in-loop: SR-IOV VF passthrough in nested KVM"
bash tests/hil/run.sh
