//! The doctor on fake hosts shaped like real ones: each test asserts the
//! exact verdict of the lines it is about and that the fix is named.

use super::netlink::{LinkState, NetlinkError, VfLink};
use super::*;
use crate::host::fake::{fake, Fake, Pf};

pub(super) const MIB: u64 = 1 << 20;
const I350_VFS: [&str; 4] = [
    "0000:02:10.0",
    "0000:02:10.4",
    "0000:02:11.0",
    "0000:02:11.4",
];

/// A host set up as the README says, with an I350 PF and 4 VFs on vfio-pci.
pub(super) fn host() -> Fake {
    let f = fake();
    f.cpu("vmx");
    f.intel_iommu(
        true,
        "BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt",
    );
    f.vfio_loaded();
    f.sriov(&Pf {
        addr: "0000:02:00.0",
        id: ("8086", "1521"),
        driver: "igb",
        netdev: "eth0",
        total: 7,
        vfs: &I350_VFS,
        vf_driver: Some("vfio-pci"),
        first_group: Some(20),
    });
    f.write("kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "300\n");
    f.write(
        "kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "260\n",
    );
    f.proc(
        "mounts",
        "sysfs /sys sysfs rw 0 0\nhugetlbfs /dev/hugepages hugetlbfs rw 0 0\n",
    );
    f.proc("self/limits", "Limit  Soft Limit  Hard Limit  Units\nMax locked memory         unlimited            unlimited            bytes\n");
    f.proc(
        "self/status",
        "Name:\tvflaunch\nCapEff:\t0000000000000000\n",
    );
    f.kmsg(
        "6,1,0,-;Linux version 6.12\n6,2,5,-;igb 0000:02:00.0: 4 VFs allocated\n SUBSYSTEM=pci\n",
    );
    f
}

pub(super) fn mac(s: &str) -> [u8; 6] {
    let mut out = [0; 6];
    for (o, b) in out.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(b, 16).unwrap();
    }
    out
}

/// What eth0 reports: VF 0 with a MAC, the others without.
pub(super) fn eth0(ifname: &str) -> Result<Vec<VfLink>, NetlinkError> {
    assert_eq!(ifname, "eth0");
    Ok((0..4)
        .map(|vf| VfLink {
            vf,
            mac: if vf == 0 {
                mac("52:54:00:12:34:56")
            } else {
                [0; 6]
            },
            spoof_check: Some(true),
            trust: Some(false),
            link_state: Some(LinkState::Auto),
            ..VfLink::default()
        })
        .collect())
}

pub(super) fn run_with(
    f: &Fake,
    devices: &[Bdf],
    links: &dyn Fn(&str) -> Result<Vec<VfLink>, NetlinkError>,
) -> Vec<Line> {
    let probes = Probes {
        memlock: &|_| Ok(()),
        vf_links: links,
    };
    diagnose(
        &f.p,
        &Request {
            devices,
            memory: 512 * MIB,
        },
        &probes,
    )
}

pub(super) fn run(f: &Fake) -> Vec<Line> {
    run_with(f, &[], &eth0)
}

pub(super) fn line<'a>(lines: &'a [Line], check: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.check == check)
        .unwrap_or_else(|| panic!("no line {check:?} in {lines:#?}"))
}

pub(super) fn assert_line(
    lines: &[Line],
    check: &str,
    status: Status,
    saw: &str,
    fix: Option<&str>,
) {
    let l = line(lines, check);
    assert_eq!(l.status, status, "{l}");
    assert!(l.saw.contains(saw), "{l}");
    match fix {
        Some(fix) => assert!(l.fix.as_deref().is_some_and(|f| f.contains(fix)), "{l}"),
        None => assert_eq!(l.fix, None, "{l}"),
    }
}

#[test]
fn i350_host_with_four_vfs() {
    let f = host();
    let lines = run(&f);
    let order: Vec<&str> = lines.iter().map(|l| l.check.as_str()).collect();
    assert_eq!(
        order[..13],
        [
            "CPU virtualization",
            "/dev/kvm",
            "firmware IOMMU table",
            "IOMMU active",
            "kernel command line",
            "interrupt remapping",
            "kernel: VFIO",
            "kernel: vfio-pci",
            "kernel: VFIO type1 IOMMU",
            "kernel: iommufd / VFIO cdev",
            "VFIO no-IOMMU mode",
            "VFIO unsafe interrupts",
            "SR-IOV PF 0000:02:00.0",
        ]
    );
    for l in &lines[..13] {
        assert_eq!(l.status, Status::Ok, "{l}");
    }
    assert_line(
        &lines,
        "kernel command line",
        Status::Ok,
        "intel_iommu=on; iommu=pt",
        None,
    );
    assert_line(
        &lines,
        "SR-IOV PF 0000:02:00.0",
        Status::Ok,
        "8086:1521, driver igb, netdev eth0: 4 of 7 VFs created",
        None,
    );
    for (n, vf) in I350_VFS.iter().enumerate() {
        assert_line(
            &lines,
            &format!("VF {vf} driver"),
            Status::Ok,
            &format!("vfio-pci (PF 0000:02:00.0 vf {n})"),
            None,
        );
        assert_line(
            &lines,
            &format!("VF {vf} IOMMU group"),
            Status::Ok,
            &format!("{}, alone (isolated)", 20 + n),
            None,
        );
    }
    assert_line(
        &lines,
        "VF 0000:02:10.0 admin settings",
        Status::Ok,
        "eth0 vf 0: mac 52:54:00:12:34:56, no VLAN, spoof check on, trust off, link state auto",
        None,
    );
    assert_line(
        &lines,
        "VF 0000:02:10.4 admin settings",
        Status::Warn,
        "mac 00:00:00:00:00:00, no VLAN, spoof check on, trust off, link state auto: no administrative MAC, so the guest's VF driver picks a random one on every boot",
        Some("ip link set eth0 vf 1 mac 02:00:00:02:10:04"),
    );
    assert_line(
        &lines,
        "VF 0000:02:11.4 admin settings",
        Status::Warn,
        "",
        Some("ip link set eth0 vf 3 mac 02:00:00:02:11:04"),
    );
    assert_line(
        &lines,
        "kernel log",
        Status::Ok,
        "no SR-IOV or IOMMU fault messages in 2 lines",
        None,
    );
    assert_line(
        &lines,
        "huge pages 2 MiB",
        Status::Ok,
        "300 reserved, 260 free; hugetlbfs mounted at /dev/hugepages",
        None,
    );
    assert_line(
        &lines,
        "locked memory",
        Status::Ok,
        "RLIMIT_MEMLOCK unlimited",
        None,
    );
    assert_eq!(exit_code_of(&lines), exit_code::OK);
    // Warnings are shown with their fix; the whole report as JSON.
    let mut text = Vec::new();
    let probes = Probes {
        memlock: &|_| Ok(()),
        vf_links: &eth0,
    };
    let req = Request {
        devices: &[],
        memory: 512 * MIB,
    };
    assert_eq!(report(&f.p, &req, &probes, false, &mut text), 0);
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("\nWARN    VF 0000:02:10.4 admin settings: eth0 vf 1: mac 00:00:00:00:00:00"),
        "{text}"
    );
    assert!(
        text.contains("; fix: ip link set eth0 vf 1 mac 02:00:00:02:10:04\n"),
        "{text}"
    );
    assert!(
        text.starts_with("ok      CPU virtualization: vmx (Intel VT-x)\n"),
        "{text}"
    );
    let mut json = Vec::new();
    assert_eq!(report(&f.p, &req, &probes, true, &mut json), 0);
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["failed"], 0);
    assert_eq!(doc["warnings"], 3);
    let checks = doc["checks"].as_array().unwrap();
    assert_eq!(checks.len(), lines.len());
    let w = checks
        .iter()
        .find(|c| c["check"] == "VF 0000:02:10.4 admin settings")
        .unwrap();
    assert_eq!(w["status"], "warn");
    assert_eq!(w["fix"], "ip link set eth0 vf 1 mac 02:00:00:02:10:04");
    assert_eq!(checks[0]["status"], "ok");
    assert!(checks[0].get("fix").is_none());
}

#[test]
fn vfs_on_host_drivers_and_netlink_errors() {
    let f = host();
    std::fs::remove_file(f.p.sys.join("bus/pci/devices/0000:02:10.4/driver")).unwrap();
    let dev = f.add("0000:02:11.0", None, None);
    std::fs::remove_file(dev.join("driver")).unwrap();
    f.add("0000:02:11.0", Some("igbvf"), None);
    let lines = run_with(&f, &[], &|_| Err(NetlinkError::NoLink("eth0".into())));
    assert_line(
        &lines,
        "VF 0000:02:10.4 driver",
        Status::Warn,
        "no driver (PF 0000:02:00.0 vf 1), not vfio-pci",
        Some("vflaunch bind 0000:02:10.4"),
    );
    assert_line(
        &lines,
        "VF 0000:02:11.0 driver",
        Status::Warn,
        "igbvf (PF 0000:02:00.0 vf 2), not vfio-pci",
        Some("vflaunch bind 0000:02:11.0"),
    );
    assert_line(
        &lines,
        "VF 0000:02:10.0 admin settings",
        Status::Warn,
        "cannot read them from eth0 over rtnetlink: rtnetlink sent no link message for eth0",
        Some("ip link show eth0"),
    );
    assert_eq!(exit_code_of(&lines), exit_code::OK);
}

#[test]
fn x540_with_no_vfs_created() {
    let f = host();
    f.sriov(&Pf {
        addr: "0000:03:00.0",
        id: ("8086", "1528"),
        driver: "ixgbe",
        netdev: "eth2",
        total: 63,
        vfs: &[],
        vf_driver: None,
        first_group: None,
    });
    let lines = run(&f);
    assert_line(
        &lines,
        "SR-IOV PF 0000:03:00.0",
        Status::Warn,
        "8086:1528, driver ixgbe, netdev eth2: 0 of 63 VFs created",
        Some("echo 63 > /sys/bus/pci/devices/0000:03:00.0/sriov_numvfs"),
    );
    assert!(
        !lines.iter().any(|l| l.check.starts_with("VF 0000:03")),
        "{lines:#?}"
    );
    assert_eq!(exit_code_of(&lines), exit_code::OK);
}

#[test]
fn nic_in_a_group_with_a_pcie_bridge() {
    let f = host();
    f.add("0000:00:1c.0", Some("pcieport"), None);
    f.join_group("0000:00:1c.0", 20, "0x060400");
    let lines = run(&f);
    assert_line(
        &lines,
        "VF 0000:02:10.0 IOMMU group",
        Status::Warn,
        "20, not isolated: also holds 0000:00:1c.0 (pcieport, PCI bridge); the IOMMU cannot tell these devices apart because the PCIe port above them (or the device itself) has no ACS (Access Control Services)",
        Some("move the NIC to a slot whose upstream PCIe port supports ACS"),
    );
    // The PF, on its host driver, in the same group: the group cannot be passed through.
    f.join_group("0000:02:00.0", 21, "0x020000");
    let lines = run(&f);
    assert_line(
        &lines,
        "VF 0000:02:10.4 IOMMU group",
        Status::Failed,
        "21, not isolated: also holds 0000:02:00.0 (igb), and those bound to host drivers keep the group from being passed through",
        Some("`vflaunch bind 0000:02:10.4 0000:02:00.0`"),
    );
    assert_eq!(exit_code_of(&lines), exit_code::HOST);
}

#[test]
fn no_iommu_group_and_mode() {
    let f = host();
    f.write("kernel/iommu_groups/22/name", "vfio-noiommu\n");
    f.write("module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n");
    let lines = run(&f);
    let l = line(&lines, "VFIO no-IOMMU mode");
    assert_eq!(l.status, Status::Failed, "{l}");
    assert!(
        l.saw
            .starts_with("enabled (no-IOMMU groups: 22): a no-IOMMU device can DMA anywhere"),
        "{l}"
    );
    assert!(
        l.saw.contains("a VM needs a real or virtual IOMMU")
            && l.saw.contains("intel-iommu,intremap=on"),
        "{l}"
    );
    assert!(
        l.fix
            .as_deref()
            .unwrap()
            .starts_with("echo N > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode"),
        "{l}"
    );
    assert_line(
        &lines,
        "VF 0000:02:11.0 IOMMU group",
        Status::Failed,
        "22 is a VFIO no-IOMMU group",
        Some("enable_unsafe_noiommu_mode"),
    );
    assert_eq!(exit_code_of(&lines), exit_code::HOST);
}

#[test]
fn groups_but_no_interrupt_remapping() {
    let f = host();
    f.intel_iommu(false, "intel_iommu=on");
    std::fs::remove_file(f.p.sys.join("kernel/irq/30/chip_name")).unwrap();
    f.write("kernel/irq/31/chip_name", "PCI-MSIX-0000:02:00.0\n");
    let lines = run(&f);
    assert_line(
        &lines,
        "IOMMU active",
        Status::Ok,
        "dmar0, 4 IOMMU groups",
        None,
    );
    assert_line(
        &lines,
        "interrupt remapping",
        Status::Failed,
        "off: VFIO refuses devices",
        Some("-device intel-iommu,intremap=on"),
    );
    assert_eq!(exit_code_of(&lines), exit_code::HOST);
    // Turned off on the command line: the fix is to remove it.
    f.proc("cmdline", "intel_iommu=on intremap=off\n");
    let lines = run(&f);
    assert_line(
        &lines,
        "interrupt remapping",
        Status::Failed,
        "off",
        Some("remove intremap=off from the kernel command line"),
    );
    // Allowed unsafely: a warning, and its own warning line.
    f.write(
        "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
        "Y\n",
    );
    let lines = run(&f);
    assert_line(
        &lines,
        "interrupt remapping",
        Status::Warn,
        "allow_unsafe_interrupts=Y",
        Some("remove intremap=off"),
    );
    assert_line(
        &lines,
        "VFIO unsafe interrupts",
        Status::Warn,
        "MSI writes",
        Some("echo N > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts"),
    );
}
