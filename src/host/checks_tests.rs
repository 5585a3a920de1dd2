//! Tests for the host pre-flight checks, against fake sysfs/dev/proc trees
//! built under a temp dir.

use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;
use crate::host::fake::{bdf, fake};

macro_rules! assert_matches {
    ($e:expr, $p:pat $(if $g:expr)?) => {{
        let v = $e;
        assert!(matches!(&v, $p $(if $g)?), "{v:?}");
        v
    }};
}

#[test]
fn good_devices_pass() {
    let f = fake();
    let dev = f.add("0000:03:02.1", Some("vfio-pci"), Some(42));
    symlink("../0000:03:00.0", dev.join("physfn")).unwrap();
    let got = check_device(&f.p, bdf("03:02.1")).unwrap();
    let want = HostDevice {
        bdf: bdf("0000:03:02.1"),
        sysfs: dev,
        group: 42,
        is_vf: true,
        cdev: None,
    };
    assert_eq!(got, want);
    f.add("0000:04:00.0", Some("vfio-pci"), Some(7));
    assert!(!check_device(&f.p, bdf("0000:04:00.0")).unwrap().is_vf);
}

#[test]
fn missing_unbound_or_groupless_devices() {
    let f = fake();
    let err = assert_matches!(f.err("0000:03:02.1"), HostError::DeviceNotFound(_));
    assert!(err.to_string().contains("lspci -D"));
    f.add("0000:03:02.1", Some("ixgbevf"), Some(1));
    let err = assert_matches!(f.err("0000:03:02.1"), HostError::NotBoundToVfio { driver: Some(d), .. } if d == "ixgbevf");
    let msg = err.to_string();
    let dev = "/sys/bus/pci/devices/0000:03:02.1";
    assert!(
        msg.contains(&format!("echo vfio-pci > {dev}/driver_override")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("echo 0000:03:02.1 > {dev}/driver/unbind")),
        "{msg}"
    );
    assert!(
        msg.contains("echo 0000:03:02.1 > /sys/bus/pci/drivers_probe"),
        "{msg}"
    );
    f.add("0000:03:02.2", None, Some(2));
    let err = assert_matches!(
        f.err("0000:03:02.2"),
        HostError::NotBoundToVfio { driver: None, .. }
    );
    assert!(!err.to_string().contains("unbind"), "{err}");
    f.add("0000:03:02.3", Some("vfio-pci"), None);
    let err = assert_matches!(f.err("0000:03:02.3"), HostError::NoIommuGroup(_));
    assert!(err.to_string().contains("intel_iommu=on"));
}

#[test]
fn no_iommu_mode_is_refused() {
    let f = fake();
    f.add("0000:03:02.1", Some("vfio-pci"), Some(5));
    f.write("kernel/iommu_groups/5/name", "vfio-noiommu\n");
    assert_matches!(
        f.err("0000:03:02.1"),
        HostError::NoIommuMode { group: 5, .. }
    );
    f.add("0000:03:02.2", Some("vfio-pci"), Some(6));
    fs::write(f.p.dev.join("vfio/noiommu-6"), "").unwrap();
    assert_matches!(
        f.err("0000:03:02.2"),
        HostError::NoIommuMode { group: 6, .. }
    );
}

#[test]
fn group_viability_names_each_offender() {
    let f = fake();
    f.add("0000:03:02.1", Some("vfio-pci"), Some(9));
    let group = f.p.sys.join("kernel/iommu_groups/9/devices");
    for (addr, driver) in [
        ("0000:03:00.1", Some("ixgbe")),
        ("0000:00:01.0", Some("pcieport")),
        ("0000:03:00.2", Some("pci-stub")),
        ("0000:03:00.3", None),
        ("0000:03:00.0", Some("ixgbe")),
    ] {
        symlink(f.add(addr, driver, None), group.join(addr)).unwrap();
    }
    let ixgbe = |a: &str| (a.to_string(), "ixgbe".to_string());
    let want = vec![ixgbe("0000:03:00.0"), ixgbe("0000:03:00.1")];
    let err = assert_matches!(f.err("0000:03:02.1"), HostError::GroupNotViable { group: 9, others, .. } if *others == want);
    let msg = err.to_string();
    assert!(
        msg.contains("0000:03:00.0 is bound to ixgbe, 0000:03:00.1"),
        "{msg}"
    );
    // Without <sys>/kernel/iommu_groups/N, the device's own group link is used.
    let dev = f.add("0000:05:00.1", Some("vfio-pci"), None);
    let g = f.p.sys.join("elsewhere/12");
    fs::create_dir_all(g.join("devices/0000:05:00.0")).unwrap();
    symlink("../mlx5_core", g.join("devices/0000:05:00.0/driver")).unwrap();
    symlink(&g, dev.join("iommu_group")).unwrap();
    assert_matches!(
        f.err("0000:05:00.1"),
        HostError::GroupNotViable { group: 12, .. }
    );
}

#[test]
fn vfio_nodes_must_exist() {
    let f = fake();
    f.add("0000:03:02.1", Some("vfio-pci"), Some(3));
    let d = check_device(&f.p, bdf("0000:03:02.1")).unwrap();
    check_group_nodes(&f.p, &d).unwrap();
    fs::remove_file(f.p.dev.join("vfio/3")).unwrap();
    let err = assert_matches!(
        check_group_nodes(&f.p, &d).unwrap_err(),
        HostError::GroupNodeMissing { group: 3, .. }
    );
    assert!(err.to_string().contains("/dev/vfio/3"), "{err}");
    fs::write(f.p.dev.join("vfio/3"), "").unwrap();
    fs::remove_file(f.p.dev.join("vfio/vfio")).unwrap();
    assert_matches!(
        check_group_nodes(&f.p, &d).unwrap_err(),
        HostError::ContainerNodeMissing(_)
    );
}

#[test]
fn kvm_node() {
    let f = fake();
    check_kvm(&f.p).unwrap();
    let kvm = f.p.dev.join("kvm");
    fs::set_permissions(&kvm, fs::Permissions::from_mode(0o400)).unwrap();
    // Root (DAC override) can open it anyway; then only the missing case is checked.
    if fs::OpenOptions::new().write(true).open(&kvm).is_err() {
        let err = check_kvm(&f.p).unwrap_err().to_string();
        assert!(err.contains("add the user to group kvm"), "{err}");
    }
    fs::remove_file(&kvm).unwrap();
    let err = check_kvm(&f.p).unwrap_err().to_string();
    assert!(err.contains("load kvm_intel or kvm_amd"), "{err}");
}

#[test]
fn memlock_decision_and_cap_parsing() {
    let need = 512 << 20;
    assert!(memlock_sufficient(u64::MAX, false, need));
    assert!(memlock_sufficient(need, false, need));
    assert!(!memlock_sufficient(8 << 20, false, need));
    assert!(memlock_sufficient(8 << 20, true, need));
    let status = "Name:\tvflaunch\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
    assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    assert_eq!(
        parse_cap_eff("CapEff:\t0000000000004000"),
        Some(1 << CAP_IPC_LOCK)
    );
    assert_eq!(parse_cap_eff("CapEff:\tzz"), None);
    assert_eq!(parse_cap_eff("Name: x"), None);
    check_memlock(0).unwrap(); // whatever the runner's limit is, 0 bytes fit
    let msg = HostError::MemlockTooLow {
        limit: 8 << 20,
        need,
    }
    .to_string();
    assert!(msg.contains("8 MiB") && msg.contains("512 MiB") && msg.contains("ulimit -l"));
}

#[test]
fn interrupt_remapping_detection_and_policy() {
    let f = fake();
    assert_eq!(interrupt_remapping(&f.p), IrqRemap::Missing);
    let err = check_interrupt_remapping(&f.p, false).unwrap_err();
    let err = assert_matches!(
        err,
        HostError::NoInterruptRemapping {
            module_param: false
        }
    );
    assert!(err.to_string().contains("--allow-unsafe-interrupts"));
    let state = check_interrupt_remapping(&f.p, true).unwrap();
    assert_eq!(state, IrqRemap::Missing);
    assert!(state.warning().unwrap().contains("allow_unsafe_interrupts"));
    f.write(UNSAFE_IRQ_PARAM, "Y\n");
    f.write("kernel/irq/24/chip_name", "PCI-MSI-0000:00:1f.6\n");
    assert_eq!(interrupt_remapping(&f.p), IrqRemap::UnsafeAllowed);
    let err = check_interrupt_remapping(&f.p, false).unwrap_err();
    assert_matches!(err, HostError::NoInterruptRemapping { module_param: true });
    assert_eq!(
        check_interrupt_remapping(&f.p, true).unwrap(),
        IrqRemap::UnsafeAllowed
    );
    f.write("kernel/irq/25/chip_name", "IR-PCI-MSIX-0000:03:00.0\n");
    assert_eq!(
        check_interrupt_remapping(&f.p, false).unwrap(),
        IrqRemap::Enabled
    );
    assert_eq!(IrqRemap::Enabled.warning(), None);

    let f = fake();
    let interrupts = f.p.proc.join("interrupts");
    fs::write(&interrupts, "  0:  44  IO-APIC  2-edge  timer\n").unwrap();
    assert_eq!(interrupt_remapping(&f.p), IrqRemap::Missing);
    fs::write(&interrupts, "  0:  44  IR-IO-APIC  2-edge  timer\n").unwrap();
    assert_eq!(interrupt_remapping(&f.p), IrqRemap::Enabled);
    f.write("kernel/irq/3/chip_name", "AMD-IR-0\n");
    fs::write(&interrupts, "").unwrap();
    assert_eq!(interrupt_remapping(&f.p), IrqRemap::Enabled);
}

#[test]
fn a_pf_named_as_a_device_points_at_its_vfs() {
    let f = fake();
    let pf = f.add("0000:03:00.0", Some("igb"), Some(3));
    fs::write(pf.join("sriov_totalvfs"), "7\n").unwrap();
    let err = assert_matches!(f.err("0000:03:00.0"), HostError::PhysicalFunction { vfs, .. } if vfs.is_empty());
    assert!(err.to_string().contains("sriov_numvfs"), "{err}");
    for (n, vf) in [(1, "0000:03:10.2"), (0, "0000:03:10.0")] {
        f.add(vf, Some("vfio-pci"), Some(10 + n));
        symlink(format!("../{vf}"), pf.join(format!("virtfn{n}"))).unwrap();
    }
    let msg = f.err("0000:03:00.0").to_string();
    assert!(
        msg.contains(
            "SR-IOV physical function bound to igb: pass one of its VFs instead (0000:03:10.0, 0000:03:10.2), bound to vfio-pci"
        ),
        "{msg}"
    );
    assert!(!msg.contains("driver_override"), "{msg}");
    // A PF bound to vfio-pci on purpose is passed through whole.
    let pf2 = f.add("0000:05:00.0", Some("vfio-pci"), Some(5));
    fs::write(pf2.join("sriov_totalvfs"), "7\n").unwrap();
    assert!(check_device(&f.p, bdf("0000:05:00.0")).is_ok());
    // No SR-IOV (sriov_totalvfs 0): the usual binding hint.
    let nic = f.add("0000:06:00.0", Some("e1000e"), Some(6));
    fs::write(nic.join("sriov_totalvfs"), "0\n").unwrap();
    assert_matches!(f.err("0000:06:00.0"), HostError::NotBoundToVfio { .. });
}

#[test]
fn guest_memory_against_what_the_host_can_provide() {
    let f = fake();
    let gib = 1u64 << 30;
    let meminfo = f.p.proc.join("meminfo");
    fs::write(
        &meminfo,
        "MemTotal:        3000000 kB\nMemAvailable:    2097152 kB\n",
    )
    .unwrap();
    crate::host::guest_memory::check_host_memory(&f.p, 2 * gib, false).unwrap();
    let err = assert_matches!(
        crate::host::guest_memory::check_host_memory(&f.p, 8 * gib, false).unwrap_err(),
        HostError::MemoryShort { available, .. } if *available == 2 * gib
    );
    assert_eq!(
        err.to_string(),
        "guest memory is 8192 MiB but the host has only 2048 MiB available (MemAvailable): VFIO pins all of guest RAM, so give the guest less --memory or free host memory"
    );
    // Kernels without MemAvailable pass; an unreadable meminfo does not.
    fs::write(&meminfo, "MemTotal: 3000000 kB\n").unwrap();
    crate::host::guest_memory::check_host_memory(&f.p, 8 * gib, false).unwrap();
    fs::remove_file(&meminfo).unwrap();
    assert_matches!(
        crate::host::guest_memory::check_host_memory(&f.p, gib, false).unwrap_err(),
        HostError::Sysfs { .. }
    );
    // Huge pages: the free 2 MiB pages count, not MemAvailable.
    f.write(
        "kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "511\n",
    );
    let err = assert_matches!(
        crate::host::guest_memory::check_host_memory(&f.p, gib, true).unwrap_err(),
        HostError::HugePagesShort { free: 511, .. }
    );
    assert!(err.to_string().contains("reserve 1 more"), "{err}");
    f.write(
        "kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "512\n",
    );
    crate::host::guest_memory::check_host_memory(&f.p, gib, true).unwrap();
}
