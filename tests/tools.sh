#!/usr/bin/env bash
# The tools the test command's tests call, installed when missing (tests/run.sh
# sources this; root for apt):
#   socat        from Debian's packages: bridges the API unix socket to TCP on loopback
#   schemathesis from PyPI, in a venv under target/: checks the live API against
#                resources/api/vflaunch-api.yaml
# Exports VFLAUNCH_SCHEMATHESIS (the schemathesis command) for tests/api.rs.

SCHEMATHESIS_VERSION=4.32.5

tools_log() { echo "[tools] $*"; }

ensure_socat() {
    command -v socat >/dev/null && return 0
    tools_log "apt-get install socat"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends socat >/dev/null
}

ensure_schemathesis() {
    local venv=$1/schemathesis-venv
    if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        tools_log "pip install schemathesis==$SCHEMATHESIS_VERSION (into $venv)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
    fi
    export VFLAUNCH_SCHEMATHESIS=$venv/bin/schemathesis
}

install_test_tools() {
    mkdir -p "$1"
    ensure_socat
    ensure_schemathesis "$1"
}
