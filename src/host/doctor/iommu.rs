//! The IOMMU: the firmware table (ACPI DMAR or IVRS), whether the kernel
//! runs it (`/sys/class/iommu`, IOMMU groups), the kernel command line, and
//! interrupt remapping.

use super::{cmdline, dir_names, Line};
use crate::host::checks::{interrupt_remapping, HostPaths, IrqRemap};

/// Which IOMMU the firmware describes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Intel,
    Amd,
    None,
}

/// Fix for "no IOMMU table".
const VIOMMU_FIX: &str = "enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup; in a VM, give it a virtual IOMMU (QEMU: -machine q35 -device intel-iommu,intremap=on)";

pub(super) fn check(p: &HostPaths, out: &mut Vec<Line>) {
    let tables = p.sys.join("firmware/acpi/tables");
    let kind = if tables.join("DMAR").exists() {
        Kind::Intel
    } else if tables.join("IVRS").exists() {
        Kind::Amd
    } else {
        Kind::None
    };
    let name = "firmware IOMMU table";
    out.push(match kind {
        Kind::Intel => Line::ok(name, "ACPI DMAR (Intel VT-d)"),
        Kind::Amd => Line::ok(name, "ACPI IVRS (AMD-Vi)"),
        Kind::None => Line::failed(name, "no ACPI DMAR or IVRS table", VIOMMU_FIX),
    });

    let words = cmdline(p);
    let has = |w: &str| words.iter().any(|x| x == w);
    let units = dir_names(&p.sys.join("class/iommu"));
    let groups = dir_names(&p.sys.join("kernel/iommu_groups")).len();
    let active = groups > 0;
    let enable_fix = match kind {
        Kind::Intel => "add intel_iommu=on to the kernel command line (GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub) and reboot",
        Kind::Amd => "remove amd_iommu=off / iommu=off from the kernel command line and reboot (AMD-Vi is on by default)",
        Kind::None => VIOMMU_FIX,
    };
    let name = "IOMMU active";
    out.push(if active {
        let units = if units.is_empty() {
            "no /sys/class/iommu entry".to_string()
        } else {
            units.join(" ")
        };
        Line::ok(name, format!("{units}, {groups} IOMMU groups"))
    } else {
        Line::failed(
            name,
            format!(
                "no IOMMU groups ({} in /sys/class/iommu)",
                if units.is_empty() {
                    "nothing".to_string()
                } else {
                    units.join(" ")
                }
            ),
            enable_fix,
        )
    });

    let name = "kernel command line";
    let off: Vec<&str> = ["intel_iommu=off", "amd_iommu=off", "iommu=off"]
        .into_iter()
        .filter(|w| has(w))
        .collect();
    let pt = if has("iommu=pt") {
        "iommu=pt (host-owned devices bypass translation; VFIO devices are still isolated)"
    } else {
        "no iommu=pt (optional: with it host-owned devices skip translation)"
    };
    out.push(if !off.is_empty() {
        Line::failed(
            name,
            format!("has {}", off.join(" ")),
            format!(
                "remove {} from the kernel command line; {enable_fix}",
                off.join(" ")
            ),
        )
    } else if kind == Kind::Intel && !has("intel_iommu=on") {
        if active {
            Line::ok(
                name,
                format!("no intel_iommu=on, but this kernel turns the IOMMU on by default; {pt}"),
            )
        } else {
            Line::failed(name, format!("no intel_iommu=on; {pt}"), enable_fix)
        }
    } else {
        let on = words
            .iter()
            .filter(|w| w.starts_with("intel_iommu=") || w.starts_with("amd_iommu"))
            .cloned()
            .collect::<Vec<_>>();
        let on = if on.is_empty() && kind == Kind::None {
            "no IOMMU parameters (nothing to set without an IOMMU table)".to_string()
        } else if on.is_empty() {
            "IOMMU on by default".to_string()
        } else {
            on.join(" ")
        };
        Line::ok(name, format!("{on}; {pt}"))
    });

    let name = "interrupt remapping";
    let off_param: Vec<&String> = words
        .iter()
        .filter(|w| *w == "intremap=off" || *w == "nointremap" || *w == "intremap=nosid")
        .collect();
    let fix = if !off_param.is_empty() {
        format!(
            "remove {} from the kernel command line and reboot",
            off_param
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )
    } else if !active {
        "enable the IOMMU first (above); remapping comes with it".to_string()
    } else {
        "enable interrupt remapping (and x2APIC) in the firmware setup; in a VM give the vIOMMU remapping (QEMU: -device intel-iommu,intremap=on, with -machine kernel-irqchip=split under KVM)".to_string()
    };
    out.push(match interrupt_remapping(p) {
        IrqRemap::Enabled => Line::ok(name, "on (IR interrupt chips)"),
        IrqRemap::UnsafeAllowed => Line::warn(
            name,
            "off, and vfio_iommu_type1 allow_unsafe_interrupts=Y lets VFIO take devices anyway (a guest could inject arbitrary interrupts; vflaunch run needs --allow-unsafe-interrupts)",
            fix,
        ),
        IrqRemap::Missing => Line::failed(
            name,
            "off: VFIO refuses devices (without it a VF could inject arbitrary interrupts into the host)",
            fix,
        ),
    });
}
