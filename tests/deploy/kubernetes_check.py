"""Checks resources/kubernetes/ for real:

1. every manifest validates strictly against the Kubernetes schemas
   (kubernetes-validate; a mutated pod must fail, so the check can fail);
   the NetworkAttachmentDefinition against Multus' CRD schema, its CNI
   config against the sriov CNI's fields;
2. the cross-references: the NAD's resourceName is the device plugin's
   resource, the pod (and the Deployment's template, which must equal it)
   requests it, the pod's network selection names the NAD with a MAC,
   hugepages-2Mi equals the VM's memory, the grace period outlasts
   --shutdown-timeout, every capability is dropped, the probes ask the
   container's own API socket;
3. against the binary: the container's command line, with the volumes'
   paths moved into a temp dir and the device plugin's variable set, gets as
   far as the host pre-flight (exit 3, the VF it names from that variable in
   the JSON log); the probe command answers a live `vflaunch --api-socket`
   (exit 0) and fails once it is gone.

usage: kubernetes_check.py MANIFEST_DIR VFLAUNCH_BINARY
"""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.37.0"
# Multus' CRD (network-attachment-definition v1): spec.config is a string of
# CNI JSON. Unknown top-level fields are refused here, as strict validation does.
NAD_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "k8s.cni.cncf.io/v1"},
        "kind": {"const": "NetworkAttachmentDefinition"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"config": {"type": "string"}},
        },
    },
}
# The sriov CNI's configuration fields this NAD uses (sriov-cni's NetConf).
SRIOV_CNI_SCHEMA = {
    "type": "object",
    "required": ["cniVersion", "name", "type"],
    "properties": {
        "cniVersion": {"type": "string"},
        "name": {"type": "string"},
        "type": {"const": "sriov"},
        "vlan": {"type": "integer", "minimum": 0, "maximum": 4094},
        "vlanQoS": {"type": "integer", "minimum": 0, "maximum": 7},
        "spoofchk": {"enum": ["on", "off"]},
        "trust": {"enum": ["on", "off"]},
        "link_state": {"enum": ["auto", "enable", "disable"]},
        "capabilities": {
            "type": "object",
            "properties": {"mac": {"type": "boolean"}, "ips": {"type": "boolean"}},
        },
    },
}
FAKE_VF = "0000:ff:1f.7"  # no such device here: the pre-flight must name it

failures = []


def check(ok, what):
    print(("ok      " if ok else "FAILED  ") + what)
    if not ok:
        failures.append(what)


def load(dir_):
    docs = {}
    for path in sorted(Path(dir_).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = (path.name, doc)
    return docs


def schema_checks(docs):
    objectmeta = json.loads(
        (
            Path(kubernetes_validate.__file__).parent
            / "kubernetes-json-schema"
            / f"v{K8S_VERSION}-local-strict"
            / "objectmeta-meta-v1.json"
        ).read_text()
    )
    for (kind, name), (file, doc) in docs.items():
        if kind == "NetworkAttachmentDefinition":
            try:
                jsonschema.validate(doc, NAD_SCHEMA)
                jsonschema.validate(doc["metadata"], objectmeta)
                jsonschema.validate(json.loads(doc["spec"]["config"]), SRIOV_CNI_SCHEMA)
                check(True, f"{file}: {kind}/{name} valid (Multus CRD, ObjectMeta, sriov CNI config)")
            except (jsonschema.ValidationError, json.JSONDecodeError) as e:
                check(False, f"{file}: {kind}/{name}: {e}")
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            check(True, f"{file}: {kind}/{name} valid against Kubernetes {K8S_VERSION} (strict)")
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            check(False, f"{file}: {kind}/{name}: {e}")
    # The validator must be able to say no.
    _, pod = docs[("Pod", "vflaunch-vm")]
    bad = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["resourcez"] = {}
    bad2 = copy.deepcopy(pod)
    bad2["spec"]["terminationGracePeriodSeconds"] = "forty"
    for b, what in ((bad, "an unknown field"), (bad2, "a string for an integer")):
        try:
            kubernetes_validate.validate(b, K8S_VERSION, strict=True)
            check(False, f"the validator accepts a pod with {what}")
        except kubernetes_validate.ValidationError:
            check(True, f"the validator refuses a pod with {what}")


def arg_value(args, flag, default=None):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return default


def env_var_for(resource):
    """The variable the device plugin sets for a resource: PCIDEVICE_<NAME>,
    the resource name uppercased with '/' and '.' turned into '_'."""
    return "PCIDEVICE_" + re.sub(r"[/.]", "_", resource).upper()


def quantity_bytes(q):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    return int(m.group(1)) * units.get(m.group(2), 1)


def vm_memory_bytes(v):
    m = re.fullmatch(r"(\d+)([KMGT]?)", str(v))
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "": 1 << 20}
    return int(m.group(1)) * mult[m.group(2)]


def cross_checks(docs):
    _, cm = docs[("ConfigMap", "sriovdp-config")]
    plugin = json.loads(cm["data"]["config.json"])
    resources = {
        f'{r.get("resourcePrefix", "intel.com")}/{r["resourceName"]}': r
        for r in plugin["resourceList"]
    }
    for name, r in resources.items():
        check(r["selectors"].get("drivers") == ["vfio-pci"], f"device plugin resource {name} selects vfio-pci VFs")
    _, nad = docs[("NetworkAttachmentDefinition", "sriov-vfio")]
    resource = nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"]
    check(resource in resources, f"NAD resourceName {resource} is the device plugin's {sorted(resources)}")
    cni = json.loads(nad["spec"]["config"])
    check(cni.get("capabilities", {}).get("mac") is True, "the sriov CNI takes a MAC from the runtime config")
    check(cni["name"] == nad["metadata"]["name"], "the CNI config's name is the NAD's")

    _, pod = docs[("Pod", "vflaunch-vm")]
    _, dep = docs[("Deployment", "vflaunch-vm")]
    tmpl = dep["spec"]["template"]
    check(tmpl["spec"] == pod["spec"], "the Deployment's template spec is pod.yaml's spec")
    check(
        tmpl["metadata"].get("annotations") == pod["metadata"].get("annotations"),
        "the Deployment's template has pod.yaml's annotations",
    )
    check(
        dep["spec"]["selector"]["matchLabels"].items() <= tmpl["metadata"]["labels"].items(),
        "the Deployment's selector matches its template",
    )
    nets = json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"])
    check([n["name"] for n in nets] == [nad["metadata"]["name"]], "the pod's network selection names the NAD")
    check(all(re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", n.get("mac", "")) for n in nets), "the pod asks for a fixed MAC")

    spec = pod["spec"]
    (c,) = spec["containers"]
    for kind in ("requests", "limits"):
        res = c["resources"][kind]
        check(res.get(resource) == "1", f"the pod's {kind} have one {resource}")
        check(res.get("devices.kubevirt.io/kvm") == "1", f"the pod's {kind} have /dev/kvm (devices.kubevirt.io/kvm)")
        check("hugepages-2Mi" in res and "memory" in res, f"the pod's {kind} have hugepages-2Mi and memory")
    _, vmcm = docs[("ConfigMap", "vflaunch-vm-config")]
    vm = json.loads(vmcm["data"]["vm.json"])
    check(vm.get("hugepages") is True, "vm.json backs guest RAM with huge pages")
    check(
        quantity_bytes(c["resources"]["requests"]["hugepages-2Mi"]) == vm_memory_bytes(vm["memory"]),
        f'hugepages-2Mi {c["resources"]["requests"]["hugepages-2Mi"]} = guest memory {vm["memory"]}',
    )
    check("devices" not in vm, "vm.json names no device: the pod's come from the device plugin")

    args = c["args"]
    timeout = int(arg_value(args, "--shutdown-timeout", "25"))
    grace = spec["terminationGracePeriodSeconds"]
    check(grace > timeout, f"terminationGracePeriodSeconds {grace} > --shutdown-timeout {timeout}")
    sc = c["securityContext"]
    psc = spec["securityContext"]
    check(sc["capabilities"] == {"drop": ["ALL"]}, "every capability dropped, none added")
    check(sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"), "no privilege escalation")
    check(psc.get("runAsUser") == 107 and psc.get("runAsNonRoot") is True, "runs as uid 107, non-root")
    sock = arg_value(args, "--api-socket")
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = c[probe]["exec"]["command"]
        check(
            cmd[:2] == [c["command"][0], "ping"] and arg_value(cmd, "--api-socket") == sock,
            f"{probe} is `vflaunch ping` on the container's API socket {sock}",
        )
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    check(set(mounts) == set(vols), "every volume is mounted")
    podinfo = [n for n, v in vols.items() if "downwardAPI" in v]
    check(
        len(podinfo) == 1
        and mounts[podinfo[0]] == "/etc/podinfo"
        and [i["path"] for i in vols[podinfo[0]]["downwardAPI"]["items"]] == ["network-info"],
        "/etc/podinfo/network-info comes from the downward API",
    )
    check(arg_value(args, "--config", "").startswith(mounts["vm-config"] + "/"), "--config is on the vm-config volume")
    for key in ("kernel", "initramfs"):
        check(vm[key].startswith(mounts["vm-images"] + "/"), f"the guest's {key} is on the vm-images volume")
    check(os.path.dirname(sock) == mounts["run"], "the API socket is on the writable run volume")
    return resource, c, mounts, vm


def remap(s, mounts, root):
    for path in sorted(mounts.values(), key=len, reverse=True):
        if s == path or s.startswith(path + "/") or ("=" + path) in s:
            return s.replace(path, str(root) + path, 1)
    return s


def binary_checks(binary, resource, c, mounts, vm):
    var = env_var_for(resource)
    check(var == "PCIDEVICE_INTEL_COM_SRIOV_VFIO", f"the device plugin will set {var}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for path in mounts.values():
            (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / "vm" / "bzImage").write_bytes(b"\0" * 4096)
        (root / "vm" / "initrd.img").write_bytes(b"\0" * 4096)
        vm2 = {k: remap(v, mounts, root) if isinstance(v, str) else v for k, v in vm.items()}
        (root / "etc/vflaunch/vm.json").write_text(json.dumps(vm2))
        (root / "etc/podinfo/network-info").write_text("")  # the annotation is not set yet
        args = [remap(a, mounts, root) for a in c["args"]]
        env = {"PATH": "/usr/bin:/bin", var: FAKE_VF}
        env.update({e["name"]: e["value"] for e in c.get("env", [])})
        r = subprocess.run([binary] + args, env=env, capture_output=True, text=True, timeout=60)
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        logs = []
        for l in lines:
            try:
                logs.append(json.loads(l))
            except json.JSONDecodeError:
                logs.append(None)
        check(r.returncode == 3, f"the container's command line reaches the host pre-flight (exit {r.returncode}, want 3)")
        check(
            any(l and FAKE_VF in l["message"] and var in l["message"] for l in logs),
            f"vflaunch took the VF from ${var}",
        )
        # The error line is plain text; every log line before it is a JSON object.
        check(
            all(l and {"time", "level", "message", "target"} <= l.keys() for l in logs[:-1]) and logs[:-1],
            "--log-format json: every log line is an object with time, level, message, target",
        )
        check(FAKE_VF in lines[-1] if lines else False, f"the pre-flight failure names {FAKE_VF}: {lines[-1] if lines else ''}")

        # The probe against a live API socket, then against none.
        sock = root / "probe" / "api.sock"
        sock.parent.mkdir()
        vmm = subprocess.Popen([binary, "--api-socket", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            probe = [binary] + [str(sock) if a == arg_value(c["args"], "--api-socket") else a for a in c["readinessProbe"]["exec"]["command"][1:]]
            deadline = time.monotonic() + 10
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            p = subprocess.run(probe, capture_output=True, text=True, timeout=30)
            check(p.returncode == 0 and '"version"' in p.stdout, f"the probe answers on a live socket (exit {p.returncode}: {p.stdout.strip()})")
        finally:
            vmm.send_signal(signal.SIGTERM)
            vmm.wait(timeout=30)
        p = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        check(p.returncode != 0, f"the probe fails once vflaunch is gone (exit {p.returncode})")


def main():
    dir_, binary = sys.argv[1], sys.argv[2]
    docs = load(dir_)
    kinds = sorted(k for k, _ in docs)
    print(f"manifests: {', '.join(kinds)}")
    schema_checks(docs)
    binary_checks(binary, *cross_checks(docs))
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)


main()
