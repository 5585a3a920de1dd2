#!/usr/bin/env bash
# The deployment resources' tests (resources/ and the generated man page and
# completions), each against the real binary:
#
#   bash tests/deploy/run.sh [TEST...]     # default: every test below
#
# kubernetes  manifests validated against the Kubernetes schemas
#             (kubernetes-validate from PyPI, in a venv under target/), the
#             NAD against Multus' CRD schema, the cross-references, the pod's
#             command line and probe run against the binary
# kata        the [hypervisor.clh] section parsed; vflaunch launched with the
#             command line Kata builds from it; ping, vm.create, vm.info, shutdown
# systemd     systemd-analyze verify on vflaunch@.service; its ExecStart run
# container   the OCI image assembled, unpacked, run with chroot; buildah
#             builds the Containerfile where it runs
# docs        man pages rendered without warnings; bash completion of
#             `vflaunch run --dev`; zsh/fish scripts generated
#
# A test that cannot run here prints `SKIPPED: <reason>` and appends
# `deploy::<test>: <reason>` to $VFLAUNCH_SKIP_LOG when set (a skip counts as
# passed in the result line, as in cargo's). Ends with a cargo-style
# `test result:` line (so tests/summary.sh counts these tests when this output
# is appended to the cargo log) and exits non-zero if any test failed.
# Needs root for apt (groff, buildah) and chroot.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
export PATH="$HOME/.cargo/bin:$PATH"
DEPLOY_DIR=tests/deploy
export DEPLOY_DIR

# The binary under test: $VFLAUNCH_BIN, or the debug build (built if stale).
if [[ -z ${VFLAUNCH_BIN:-} ]]; then
    cargo build -q --bin vflaunch || exit 1
    VFLAUNCH_BIN=$PWD/target/debug/vflaunch
fi
export VFLAUNCH_BIN
TOOLS=$PWD/target/deploy-tools
mkdir -p "$TOOLS"
export TOOLS

# skip NAME REASON: the skip protocol (see tests/common/mod.rs).
skip() {
    echo "SKIPPED: $2"
    if [[ -n ${VFLAUNCH_SKIP_LOG:-} ]]; then
        printf 'deploy::%s: %s\n' "$1" "$2" >>"$VFLAUNCH_SKIP_LOG"
    fi
}
export -f skip

# apt_install PKG...: installs Debian packages that are missing (root only).
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || return 1
    echo "[deploy] apt-get install ${missing[*]}"
    local log
    log=$(mktemp)
    apt-get update -q >/dev/null 2>&1
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -3 "$log"
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}
export -f apt_install

all=(kubernetes kata systemd container docs)
tests=("${@:-${all[@]}}")
passed=0 failed=0 failures=()
for t in "${tests[@]}"; do
    start=$(date +%s%N)
    echo "== deploy::$t"
    if bash "$DEPLOY_DIR/$t.sh"; then
        result=ok passed=$((passed + 1))
    else
        result=FAILED failed=$((failed + 1)) failures+=("$t")
    fi
    ms=$((($(date +%s%N) - start) / 1000000))
    printf 'test deploy::%s ... %s (%d.%03d s)\n' "$t" "$result" $((ms / 1000)) $((ms % 1000))
done
if ((failed > 0)); then
    echo "failures: ${failures[*]}"
    echo "test result: FAILED. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out"
    exit 1
fi
echo "test result: ok. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out"
