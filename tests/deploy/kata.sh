#!/usr/bin/env bash
# resources/kata/: parse the configuration and drive vflaunch the way Kata's
# clh driver does (see kata_check.py). Needs python3 >= 3.11 (tomllib).
set -euo pipefail
if ! python3 -c 'import tomllib' 2>/dev/null; then
    skip kata "python3 has no tomllib (needs 3.11+): $(python3 --version 2>&1)"
    exit 0
fi
if ! [[ -r /dev/kvm && -w /dev/kvm ]]; then
    skip kata "/dev/kvm not usable: vm.create checks that it opens read-write"
    exit 0
fi
exec python3 "$DEPLOY_DIR/kata_check.py" resources/kata/configuration-vflaunch.toml "$VFLAUNCH_BIN"
