//! The doctor's kernel-side checks on fake hosts: no IOMMU, the kernel
//! log, the kernel config, memory, and `--device`.

use std::io::Write as _;

use flate2::write::GzEncoder;

use super::tests::{assert_line, eth0, host, run, run_with, MIB};
use super::*;
use crate::host::fake::{bdf, fake};

#[test]
fn no_iommu_at_all() {
    let f = fake();
    f.cpu("svm");
    f.proc("cmdline", "root=/dev/vda\n");
    let lines = run(&f);
    assert_line(
        &lines,
        "CPU virtualization",
        Status::Ok,
        "svm (AMD-V)",
        None,
    );
    assert_line(
        &lines,
        "firmware IOMMU table",
        Status::Failed,
        "no ACPI DMAR or IVRS table",
        Some("intel-iommu,intremap=on"),
    );
    assert_line(
        &lines,
        "IOMMU active",
        Status::Failed,
        "no IOMMU groups",
        Some("enable VT-d"),
    );
    assert_line(
        &lines,
        "interrupt remapping",
        Status::Failed,
        "off",
        Some("enable the IOMMU first"),
    );
    assert_line(
        &lines,
        "SR-IOV devices",
        Status::Warn,
        "no device with sriov_totalvfs > 0",
        Some("enable SR-IOV"),
    );
    // DMAR present, IOMMU not on: the kernel parameter is the fix.
    f.write("firmware/acpi/tables/DMAR", "DMAR");
    let lines = run(&f);
    assert_line(
        &lines,
        "IOMMU active",
        Status::Failed,
        "no IOMMU groups (nothing in /sys/class/iommu)",
        Some("add intel_iommu=on to the kernel command line"),
    );
    assert_line(
        &lines,
        "kernel command line",
        Status::Failed,
        "no intel_iommu=on",
        Some("add intel_iommu=on"),
    );
    f.proc("cmdline", "intel_iommu=off\n");
    let lines = run(&f);
    assert_line(
        &lines,
        "kernel command line",
        Status::Failed,
        "has intel_iommu=off",
        Some("remove intel_iommu=off"),
    );
    // No CPU flag and no /dev/kvm.
    f.cpu("sse4_2");
    std::fs::remove_file(f.p.dev.join("kvm")).unwrap();
    let lines = run(&f);
    assert_line(
        &lines,
        "CPU virtualization",
        Status::Failed,
        "no vmx or svm flag",
        Some("enable Intel VT-x or AMD-V"),
    );
    assert_line(
        &lines,
        "/dev/kvm",
        Status::Failed,
        "does not exist",
        Some("modprobe kvm_intel"),
    );
}

#[test]
fn kernel_log_with_sriov_failures() {
    let f = host();
    f.kmsg(concat!(
        "3,410,2100000,-;pci 0000:02:00.0: can't enable 8 VFs (bus 02 out of range of [bus 01])\n",
        " SUBSYSTEM=pci\n",
        "[    3.100000] pci 0000:03:00.0: not enough MMIO resources for SR-IOV\n",
        "[    9.000000] DMAR: [DMA Read NO_PASID] Request device [02:10.0] fault addr 0x7f000 [fault reason 0x06] PTE Read access is not set\n",
    ));
    let lines = run(&f);
    assert_line(
        &lines,
        "kernel log: SR-IOV bus numbers",
        Status::Failed,
        "VFs could not be created: the firmware left no bus numbers for them (1 lines, last: \"pci 0000:02:00.0: can't enable 8 VFs (bus 02 out of range of [bus 01])\")",
        Some("add pci=assign-busses to the kernel command line"),
    );
    assert_line(
        &lines,
        "kernel log: SR-IOV BAR space",
        Status::Failed,
        "not enough MMIO resources for SR-IOV",
        Some("add pci=realloc to the kernel command line"),
    );
    assert_line(
        &lines,
        "kernel log: IOMMU faults",
        Status::Warn,
        "Request device [02:10.0] fault addr",
        Some("find the device"),
    );
    assert!(!lines.iter().any(|l| l.check == "kernel log"), "{lines:#?}");
    assert_eq!(exit_code_of(&lines), exit_code::HOST);
    std::fs::remove_file(f.p.dev.join("kmsg")).unwrap();
    assert_line(
        &run(&f),
        "kernel log",
        Status::Warn,
        "cannot read",
        Some("dmesg_restrict"),
    );
}

#[test]
fn kernel_config_from_boot_or_proc() {
    let f = host();
    // Only the sysfs view: everything loaded.
    assert_eq!(kconfig::config_path(&f.p), None);
    assert_line(
        &run(&f),
        "kernel: vfio-pci",
        Status::Ok,
        "present (no kernel config readable",
        None,
    );
    f.proc("sys/kernel/osrelease", "6.12.0-1-amd64\n");
    let boot = f.p.boot.join("config-6.12.0-1-amd64");
    std::fs::create_dir_all(&f.p.boot).unwrap();
    std::fs::write(&boot, "CONFIG_VFIO=m\nCONFIG_VFIO_PCI=m\n# CONFIG_VFIO_IOMMU_TYPE1 is not set\nCONFIG_VFIO_NOIOMMU=y\n").unwrap();
    std::fs::remove_dir(f.p.sys.join("bus/pci/drivers/vfio-pci")).unwrap();
    let lines = run(&f);
    assert_eq!(kconfig::config_path(&f.p), Some(boot));
    assert_line(
        &lines,
        "kernel: VFIO",
        Status::Ok,
        "module, loaded (CONFIG_VFIO=m in",
        None,
    );
    assert_line(
        &lines,
        "kernel: vfio-pci",
        Status::Warn,
        "module, not loaded",
        Some("modprobe vfio-pci"),
    );
    assert_line(
        &lines,
        "kernel: VFIO type1 IOMMU",
        Status::Failed,
        "CONFIG_VFIO_IOMMU_TYPE1 is not set",
        Some("CONFIG_VFIO_IOMMU_TYPE1=y or =m"),
    );
    assert_line(
        &lines,
        "VFIO no-IOMMU mode",
        Status::Ok,
        "off (the kernel has CONFIG_VFIO_NOIOMMU, not enabled)",
        None,
    );
    // /proc/config.gz wins.
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"CONFIG_VFIO=y\nCONFIG_VFIO_PCI=y\nCONFIG_VFIO_IOMMU_TYPE1=y\nCONFIG_IOMMUFD=y\nCONFIG_VFIO_DEVICE_CDEV=y\n").unwrap();
    std::fs::write(f.p.proc.join("config.gz"), gz.finish().unwrap()).unwrap();
    let lines = run(&f);
    assert_line(
        &lines,
        "kernel: vfio-pci",
        Status::Ok,
        "built in (CONFIG_VFIO_PCI=y in",
        None,
    );
    assert_line(
        &lines,
        "kernel: VFIO type1 IOMMU",
        Status::Ok,
        "built in",
        None,
    );
    assert_line(
        &lines,
        "kernel: iommufd / VFIO cdev",
        Status::Ok,
        "available",
        None,
    );
    // Nothing loaded and no config: a warning with the command.
    let f = host();
    for m in [
        "module/vfio",
        "module/vfio_iommu_type1",
        "bus/pci/drivers/vfio-pci",
    ] {
        std::fs::remove_dir(f.p.sys.join(m)).unwrap();
    }
    std::fs::remove_file(f.p.dev.join("vfio/vfio")).unwrap();
    assert_line(
        &run(&f),
        "kernel: VFIO",
        Status::Warn,
        "not loaded, and no kernel config",
        Some("modprobe vfio-pci"),
    );
}

#[test]
fn huge_pages_and_locked_memory() {
    let f = host();
    f.write(
        "kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
        "10\n",
    );
    f.write(
        "kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
        "0\n",
    );
    f.write(
        "kernel/mm/hugepages/hugepages-1048576kB/free_hugepages",
        "0\n",
    );
    f.proc("mounts", "sysfs /sys sysfs rw 0 0\n");
    f.proc(
        "self/limits",
        "Max locked memory         8388608              8388608              bytes\n",
    );
    let lines = run(&f);
    assert_line(
        &lines,
        "huge pages 2 MiB",
        Status::Warn,
        "300 reserved, 10 free; hugetlbfs not mounted (vflaunch does not need it): --hugepages with 512 MiB needs 256 free",
        Some("echo 546 > /proc/sys/vm/nr_hugepages"),
    );
    assert_line(
        &lines,
        "huge pages 1 GiB",
        Status::Ok,
        "0 reserved, 0 free",
        None,
    );
    assert_line(
        &lines,
        "locked memory",
        Status::Failed,
        "RLIMIT_MEMLOCK 8 MiB, no CAP_IPC_LOCK: VFIO must pin 512 MiB of guest RAM",
        Some("ulimit -l unlimited"),
    );
    f.proc("self/status", "CapEff:\t0000000000004000\n");
    assert_line(
        &run(&f),
        "locked memory",
        Status::Ok,
        "RLIMIT_MEMLOCK 8 MiB, CAP_IPC_LOCK: VFIO can pin 512 MiB",
        None,
    );
    assert_eq!(
        memory::parse_memlock_limit("Max locked memory  unlimited unlimited bytes"),
        Some(u64::MAX)
    );
    assert_eq!(
        memory::parse_memlock_limit("Max open files 1024 4096 files"),
        None
    );
}

#[test]
fn with_devices_every_check_of_check() {
    let f = host();
    let devices = [bdf("0000:02:10.0"), bdf("0000:02:00.0")];
    let lines = run_with(&f, &devices, &eth0);
    let tail: Vec<String> = lines
        .iter()
        .skip_while(|l| !l.check.starts_with("check "))
        .map(|l| l.to_string())
        .collect();
    let (want, _) = preflight::run_checks(
        &f.p,
        &preflight::Request::new(&devices, 512 * MIB, false),
        |_| Ok(()),
    );
    assert_eq!(tail.len(), want.len(), "{tail:#?}");
    assert_eq!(tail[0], "ok      check 0000:02:10.0: passes");
    assert!(
        tail[1].starts_with(
            "FAILED  check 0000:02:00.0: PCI device 0000:02:00.0 is an SR-IOV physical function bound to igb: pass one of its VFs instead (0000:02:10.0, "
        ),
        "{}",
        tail[1]
    );
    assert!(
        tail[1].contains("bound to vfio-pci (`vflaunch bind <VF>`)"),
        "{}",
        tail[1]
    );
    assert!(
        tail[2].starts_with("ok      check vfio backend: vfio-group (auto: the group interface"),
        "{}",
        tail[2]
    );
    assert_eq!(
        &tail[3..],
        [
            "ok      check /dev/kvm: passes",
            "ok      check guest memory: passes",
            "ok      check locked memory: passes",
            "ok      check interrupt remapping: passes"
        ]
    );
    assert_eq!(exit_code_of(&lines), exit_code::HOST);
}
