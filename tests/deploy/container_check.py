"""Unpacks an OCI image archive and proves it self-sufficient:

the layout's blobs match their digests and sizes, the config runs
/usr/bin/vflaunch as 107:107 and the user exists in /etc/passwd; the root
filesystem holds the binary, the libraries `ldd` names for it and
/etc/passwd, /etc/group, nothing else; inside it with chroot,
`vflaunch --version` (as uid 107) prints what the binary prints outside, and
`vflaunch check --device <absent VF>` (as root, with /dev, /sys and /proc bound in a private mount
namespace) prints the same lines with the same exit code as outside.

usage: container_check.py IMAGE.tar VFLAUNCH_BINARY WORKDIR
"""

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

failures = []


def check(ok, what):
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failures.append(what)


def main():
    archive, binary, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    layout = work / "layout"
    rootfs = work / "rootfs"
    layout.mkdir(parents=True)
    rootfs.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(layout, filter="tar")

    def blob(desc):
        algo, digest = desc["digest"].split(":")
        data = (layout / "blobs" / algo / digest).read_bytes()
        check(
            hashlib.sha256(data).hexdigest() == digest and len(data) == desc["size"],
            f"blob {digest[:12]} matches its digest and size ({len(data)} bytes)",
        )
        return data

    index = json.loads((layout / "index.json").read_text())
    (mdesc,) = index["manifests"]
    manifest = json.loads(blob(mdesc))
    config = json.loads(blob(manifest["config"]))
    check(config["os"] == "linux" and config["architecture"] == "amd64", "linux/amd64")
    cfg = config["config"]
    check(cfg.get("User") == "107:107", f"runs as 107:107 (User {cfg.get('User')!r})")
    check(cfg.get("Entrypoint") == ["/usr/bin/vflaunch"], f"entrypoint {cfg.get('Entrypoint')}")
    check(len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]), "one diff_id per layer")
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        data = blob(layer)
        if layer["mediaType"].endswith("+gzip"):
            data = gzip.decompress(data)
        check("sha256:" + hashlib.sha256(data).hexdigest() == diff_id, "the layer's diff_id")
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            t.extractall(rootfs, filter="tar")

    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = set()
    for line in ldd.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            libs.add(parts[parts.index("=>") + 1].lstrip("/"))
        elif parts and parts[0].startswith("/"):
            libs.add(parts[0].lstrip("/"))
    files = {str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file() or p.is_symlink()}
    want = {"usr/bin/vflaunch", "etc/passwd", "etc/group"} | libs
    check(files == want, f"only the binary, its libraries and passwd/group: {sorted(files)}")
    passwd = (rootfs / "etc/passwd").read_text()
    check(any(l.split(":")[2:4] == ["107", "107"] for l in passwd.splitlines()), "/etc/passwd has uid 107")

    host_version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    r = subprocess.run(
        ["chroot", "--userspec=107:107", str(rootfs), "/usr/bin/vflaunch", "--version"],
        capture_output=True,
        text=True,
    )
    check(r.returncode == 0 and r.stdout == host_version, f"chroot, uid 107: vflaunch --version: {r.stdout.strip()} {r.stderr.strip()}")
    CHECK = ["check", "--device", "0000:ff:1f.7", "--memory", "1G"]  # a VF that is not here: sysfs is read
    host = subprocess.run([binary] + CHECK, capture_output=True, text=True)
    script = (
        'set -e; r="$1"; mount --rbind /dev "$r/dev"; mount --rbind /sys "$r/sys"; '
        'mount -t proc proc "$r/proc"; shift; exec chroot "$r" /usr/bin/vflaunch "$@"'
    )
    inside = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(rootfs)] + CHECK,
        capture_output=True,
        text=True,
    )
    check(
        inside.returncode == host.returncode and inside.stdout == host.stdout and inside.stdout,
        f"chroot: vflaunch {' '.join(CHECK)} exits {inside.returncode} (outside {host.returncode}) with the same lines:\n"
        + "\n".join("    | " + l for l in (inside.stdout + inside.stderr).splitlines()),
    )
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)


main()
