//! CPU virtualization (vmx/svm), `/dev/kvm`, and nested KVM.

use super::{param_set, read_text, Line};
use crate::host::checks::{check_kvm, HostPaths};

/// The flags of the first CPU in `/proc/cpuinfo`.
fn cpu_flags(cpuinfo: &str) -> Vec<&str> {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

pub(super) fn check(p: &HostPaths, out: &mut Vec<Line>) {
    let cpuinfo = read_text(&p.proc.join("cpuinfo")).unwrap_or_default();
    let flags = cpu_flags(&cpuinfo);
    let has = |f: &str| flags.contains(&f);
    let kvm = check_kvm(p);
    let name = "CPU virtualization";
    out.push(if has("vmx") {
        Line::ok(name, "vmx (Intel VT-x)")
    } else if has("svm") {
        Line::ok(name, "svm (AMD-V)")
    } else if kvm.is_ok() {
        Line::ok(name, "no vmx or svm flag in /proc/cpuinfo, but /dev/kvm works (the hypervisor hides the flags)")
    } else {
        Line::failed(
            name,
            "no vmx or svm flag in /proc/cpuinfo",
            "enable Intel VT-x or AMD-V (SVM) in the firmware setup; in a VM, expose it (QEMU: -cpu host with kvm_intel/kvm_amd nested=1 on the outer host)",
        )
    });
    out.push(match kvm {
        Ok(()) => Line::ok("/dev/kvm", "opens read-write"),
        Err(e) => Line::failed(
            "/dev/kvm",
            e.to_string(),
            "modprobe kvm_intel (or kvm_amd) after enabling virtualization in the firmware",
        ),
    });
    let nested = ["kvm_intel", "kvm_amd"]
        .iter()
        .find(|m| p.sys.join("module").join(m).exists())
        .map(|m| {
            let on = param_set(&p.sys.join(format!("module/{m}/parameters/nested")));
            format!("{m} nested={}", if on { "Y" } else { "N" })
        });
    if has("hypervisor") {
        let module = nested.map(|n| format!(", {n}")).unwrap_or_default();
        out.push(Line::ok(
            "nested KVM",
            format!("this host is itself a VM (CPUID hypervisor flag): /dev/kvm is nested KVM and its devices are the outer host's (a vIOMMU is needed for passthrough){module}"),
        ));
    } else if let Some(n) = nested {
        out.push(Line::ok("nested KVM", format!("bare metal, {n}")));
    }
}
