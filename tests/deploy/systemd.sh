#!/usr/bin/env bash
# resources/systemd/vflaunch@.service: `systemd-analyze verify` prints nothing
# (and does print for a misspelled key, so the check can fail); the offline
# security exposure stays under 3.5; LimitMEMLOCK and DeviceAllow are there;
# ExecStart, with %i expanded and /etc/vflaunch, /run/vflaunch moved into a
# temp dir, is a command line vflaunch accepts: it gets to the host pre-flight
# (exit 3, naming the VM's device).
set -euo pipefail
unit=resources/systemd/vflaunch@.service
if ! command -v systemd-analyze >/dev/null; then
    skip systemd "systemd-analyze not installed (the systemd package)"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
ok() { echo "ok      $*"; }
bad() {
    echo "FAILED  $*"
    fail=1
}

# The binary under test in place of /usr/bin/vflaunch: verify checks that
# ExecStart's program exists.
sed "s|/usr/bin/vflaunch|$VFLAUNCH_BIN|" "$unit" >"$tmp/vflaunch@.service"
out=$(cd "$tmp" && systemd-analyze verify --man=no "$tmp/vflaunch@ci.service" 2>&1) && rc=0 || rc=$?
if ((rc == 0)) && [[ -z $out ]]; then
    ok "systemd-analyze verify: no warnings"
else
    bad "systemd-analyze verify (exit $rc): $out"
fi
sed 's/^LimitMEMLOCK=/LimitMEMLOK=/' "$tmp/vflaunch@.service" >"$tmp/typo@.service"
out=$(systemd-analyze verify --man=no "$tmp/typo@ci.service" 2>&1 || true)
if [[ $out == *LimitMEMLOK* ]]; then ok "verify reports a misspelled key"; else bad "verify missed a misspelled key: $out"; fi
if systemd-analyze security --offline=yes --threshold=35 --no-pager "$tmp/vflaunch@ci.service" >"$tmp/security" 2>&1; then
    ok "security: $(grep -o 'Overall exposure level.*' "$tmp/security")"
else
    bad "security exposure over 3.5: $(tail -1 "$tmp/security")"
fi
for want in "LimitMEMLOCK=infinity" "DeviceAllow=/dev/kvm rw" "DeviceAllow=char-vfio rw" "DeviceAllow=/dev/vfio/vfio rw" "DevicePolicy=closed"; do
    if grep -qx "$want" "$unit"; then ok "$want"; else bad "missing $want"; fi
done

# ExecStart against the binary.
mkdir -p "$tmp/etc/vflaunch" "$tmp/run/vflaunch/ci"
printf '\0%.0s' {1..64} >"$tmp/bzImage"
printf '{"kernel": "%s", "memory": "64M", "devices": ["0000:ff:1f.7"]}\n' "$tmp/bzImage" >"$tmp/etc/vflaunch/ci.json"
mapfile -t argv < <(python3 - "$unit" "$tmp" <<'PY'
import shlex, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
line = next(l for l in text.splitlines() if l.startswith("ExecStart="))
argv = shlex.split(line.split("=", 1)[1].replace("%i", "ci"))
for a in argv[1:]:
    for p in ("/etc/vflaunch/", "/run/vflaunch/"):
        a = a.replace(p, sys.argv[2] + p)
    print(a)
PY
)
out=$("$VFLAUNCH_BIN" "${argv[@]}" </dev/null 2>&1) && rc=0 || rc=$?
if ((rc == 3)) && [[ $out == *0000:ff:1f.7* ]]; then
    ok "ExecStart reaches the host pre-flight: $out"
else
    bad "ExecStart (exit $rc, want 3): $out"
fi
exit $fail
