"""resources/kata/configuration-vflaunch.toml against the binary:

the [hypervisor.clh] and [runtime] keys vflaunch depends on are set as the
file says; vflaunch is started with the exact command line Kata's clh driver
builds from them (`<path> --api-socket <sock>`, `-v` repeated
hypervisor_loglevel times when enable_debug, `--seccomp false` when
disable_seccomp), with the binary under test in place of `path`; then Kata's
calls: vmm.ping polled every 10 ms, vm.create with the body Kata builds from
the configuration (the kernel and initrd paths moved to stand-in files),
vm.info "Created" with the configuration applied, what the file calls
unsupported refused with 400 (disks, fs, vsock), and vmm.shutdown: the
process exits 0.

usage: kata_check.py CONFIG.toml VFLAUNCH_BINARY
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

failures = []


def check(ok, what):
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failures.append(what)


def kata_launch_line(clh, sock):
    """What Kata's clh driver (launchClh) runs."""
    args = [clh["path"], "--api-socket", sock]
    if clh.get("enable_debug") and clh.get("hypervisor_loglevel", 1) > 0:
        args.append("-" + "v" * clh.get("hypervisor_loglevel", 1))
    if clh.get("disable_seccomp"):
        args += ["--seccomp", "false"]
    return args


def api(binary, sock, method, endpoint, body=None):
    cmd = [binary, "api", "--api-socket", sock, method, endpoint]
    if body is not None:
        cmd.append(json.dumps(body))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    status = next(
        (int(l.split()[-1]) for l in r.stderr.splitlines() if l.startswith("vflaunch: HTTP ")),
        None,
    )
    return status, r.stdout.strip()


def kata_body(clh, kernel, initrd):
    """vm.create as Kata's clh driver fills it from the configuration: its
    generated client sends every default too."""
    mib = 1 << 20
    return {
        "payload": {"kernel": kernel, "initramfs": initrd, "cmdline": clh.get("kernel_params", "") or "console=ttyS0"},
        "cpus": {
            "boot_vcpus": clh["default_vcpus"],
            "max_vcpus": clh["default_maxvcpus"],
            "nested": True,
            "kvm_hyperv": False,
            "topology": {"threads_per_core": 1, "cores_per_die": 1, "dies_per_package": 1, "packages": 1},
        },
        "memory": {
            "size": clh["default_memory"] * mib,
            "shared": False,
            "hugepages": clh.get("enable_hugepages", False),
            "thp": True,
            "hotplug_method": "Acpi",
            "hotplug_size": 24 << 30,
        },
        "serial": {"mode": "Off"},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "platform": {"num_pci_segments": 2},
        "iommu": clh.get("enable_iommu", False),
        "watchdog": False,
        "pvpanic": False,
    }


def main():
    config_path, binary = sys.argv[1], sys.argv[2]
    conf = tomllib.loads(Path(config_path).read_text())
    clh, runtime = conf["hypervisor"]["clh"], conf["runtime"]
    check(os.path.basename(clh["path"]) == "vflaunch", f"path points at vflaunch ({clh['path']})")
    check(clh["path"] in clh.get("valid_hypervisor_paths", []), "path is in valid_hypervisor_paths")
    check(runtime.get("static_sandbox_resource_mgmt") is True, "static_sandbox_resource_mgmt = true")
    check(clh.get("shared_fs") == "none", 'shared_fs = "none" (no virtio-fs)')
    check(clh.get("cold_plug_vfio", "no-port") != "no-port", f"cold_plug_vfio = {clh.get('cold_plug_vfio')!r}")
    check(clh.get("hot_plug_vfio", "no-port") == "no-port", "no VFIO hotplug")
    check("image" not in clh and clh.get("initrd"), "an initrd, no rootfs image")
    check(clh["default_maxvcpus"] == clh["default_vcpus"], "max vCPUs = boot vCPUs (no CPU hotplug)")
    check(not clh.get("enable_iommu", False), "no vIOMMU")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kernel = root / clh["kernel"].lstrip("/")
        initrd = root / clh["initrd"].lstrip("/")
        for f in (kernel, initrd):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"\0" * 4096)  # vm.create needs them to exist; nothing boots them here
        sock = str(root / "clh-api.sock")
        line = kata_launch_line(clh, sock)
        print("kata runs: " + " ".join(line))
        vmm = subprocess.Popen([binary] + line[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            start = time.monotonic()
            while subprocess.run([binary, "ping", "--api-socket", sock], capture_output=True).returncode != 0:
                if vmm.poll() is not None or time.monotonic() - start > 10:
                    check(False, f"vmm.ping answers (exit {vmm.poll()}): {vmm.stderr.read() if vmm.poll() is not None else ''}")
                    return
                time.sleep(0.01)
            check(True, f"vmm.ping answers after {time.monotonic() - start:.2f} s")
            body = kata_body(clh, str(kernel), str(initrd))
            for extra, what in (
                ({"disks": [{"path": str(kernel)}]}, "disks"),
                ({"fs": [{"tag": "kataShared", "socket": str(root / "vfsd.sock")}]}, "fs"),
                ({"vsock": {"cid": 3, "socket": str(root / "kata.hvsock")}}, "vsock"),
            ):
                status, answer = api(binary, sock, "PUT", "vm.create", {**body, **extra})
                check(status == 400 and what in answer, f"vm.create with {what} is refused: {status} {answer}")
            status, answer = api(binary, sock, "PUT", "vm.create", body)
            check(status == 204, f"vm.create with Kata's body: {status} {answer}")
            status, answer = api(binary, sock, "GET", "vm.info")
            info = json.loads(answer) if status == 200 else {}
            check(info.get("state") == "Created", f"vm.info state {info.get('state')!r}")
            cfg = info.get("config", {})
            check(cfg.get("payload", {}).get("kernel") == str(kernel), "vm.info has the configuration's kernel")
            check(cfg.get("payload", {}).get("initramfs") == str(initrd), "vm.info has the configuration's initrd")
            check(cfg.get("cpus", {}).get("boot_vcpus") == clh["default_vcpus"], "vm.info has default_vcpus")
            check(cfg.get("memory", {}).get("size") == clh["default_memory"] << 20, "vm.info has default_memory")
            status, answer = api(binary, sock, "PUT", "vmm.shutdown")
            check(status in (200, 204), f"vmm.shutdown: {status} {answer}")
            code = vmm.wait(timeout=10)
            check(code == 0, f"vflaunch exited {code} after vmm.shutdown")
        finally:
            if vmm.poll() is None:
                vmm.kill()
                vmm.wait()
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)


main()
