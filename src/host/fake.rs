//! A fake host for tests: sysfs, /dev, /proc, /boot and /run trees under a
//! temp dir, builders for the shapes of real hosts (SR-IOV PFs with their
//! VFs and IOMMU groups, an Intel IOMMU, VFIO loaded), and [`FakeKernel`],
//! which acts on sysfs writes the way the kernel does for binding.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::bdf::Bdf;
use super::bind::SysfsWrite;
use super::checks::{check_device, HostError, HostPaths};

/// A fake host; the trees live as long as this does.
pub struct Fake {
    _dir: tempfile::TempDir,
    /// Its roots.
    pub p: HostPaths,
}

/// Parses a BDF.
pub fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

/// A host with /dev/kvm, /dev/vfio/vfio and no devices.
pub fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let p = HostPaths {
        sys: root.join("s"),
        dev: root.join("d"),
        proc: root.join("p"),
        boot: root.join("b"),
        run: root.join("r"),
    };
    fs::create_dir_all(p.sys.join("bus/pci/devices")).unwrap();
    fs::create_dir_all(p.dev.join("vfio")).unwrap();
    fs::create_dir_all(&p.proc).unwrap();
    fs::write(p.dev.join("kvm"), "").unwrap();
    fs::write(p.dev.join("vfio/vfio"), "").unwrap();
    // 16 GiB available.
    fs::write(
        p.proc.join("meminfo"),
        "MemTotal:       32768000 kB\nMemFree:         1000000 kB\nMemAvailable:   16777216 kB\n",
    )
    .unwrap();
    Fake { _dir: dir, p }
}

/// One PF and its VFs, for [`Fake::sriov`].
pub struct Pf<'a> {
    /// The PF's address.
    pub addr: &'a str,
    /// `vendor:device` in hex.
    pub id: (&'a str, &'a str),
    /// The PF's driver.
    pub driver: &'a str,
    /// Its netdev.
    pub netdev: &'a str,
    /// `sriov_totalvfs`.
    pub total: u32,
    /// The VFs created, in VF order.
    pub vfs: &'a [&'a str],
    /// The VFs' driver.
    pub vf_driver: Option<&'a str>,
    /// IOMMU group of the first VF (the next ones follow), or none.
    pub first_group: Option<u32>,
}

impl Fake {
    /// Adds a device with an optional driver and IOMMU group (and its /dev node).
    pub fn add(&self, addr: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let dev = self.p.sys.join("bus/pci/devices").join(addr);
        fs::create_dir_all(&dev).unwrap();
        if let Some(driver) = driver {
            fs::create_dir_all(self.p.sys.join("bus/pci/drivers").join(driver)).unwrap();
            symlink(format!("../../drivers/{driver}"), dev.join("driver")).unwrap();
        }
        if let Some(group) = group {
            let g = self.p.sys.join(format!("kernel/iommu_groups/{group}"));
            fs::create_dir_all(g.join("devices")).unwrap();
            symlink(&g, dev.join("iommu_group")).unwrap();
            symlink(&dev, g.join("devices").join(addr)).unwrap();
            fs::write(self.p.dev.join(format!("vfio/{group}")), "").unwrap();
        }
        dev
    }

    /// Writes a file under the sysfs root.
    pub fn write(&self, rel: &str, text: &str) {
        write(&self.p.sys.join(rel), text);
    }

    /// Writes a file under the procfs root.
    pub fn proc(&self, rel: &str, text: &str) {
        write(&self.p.proc.join(rel), text);
    }

    /// The error `check_device` gives for `addr`.
    pub fn err(&self, addr: &str) -> HostError {
        check_device(&self.p, bdf(addr)).unwrap_err()
    }

    /// A CPU with these flags.
    pub fn cpu(&self, flags: &str) {
        self.proc(
            "cpuinfo",
            &format!("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu {flags} sse2\n\nprocessor\t: 1\nflags\t\t: fpu\n"),
        );
    }

    /// An Intel IOMMU the firmware describes and the kernel runs, with
    /// interrupt remapping or without, and this command line.
    pub fn intel_iommu(&self, remap: bool, cmdline: &str) {
        self.write("firmware/acpi/tables/DMAR", "DMAR");
        fs::create_dir_all(self.p.sys.join("class/iommu/dmar0")).unwrap();
        self.proc("cmdline", &format!("{cmdline}\n"));
        let chip = if remap {
            "IR-PCI-MSIX-0000:02:00.0"
        } else {
            "PCI-MSIX-0000:02:00.0"
        };
        self.write("kernel/irq/30/chip_name", &format!("{chip}\n"));
    }

    /// VFIO, vfio-pci and the type1 backend loaded.
    pub fn vfio_loaded(&self) {
        for m in [
            "module/vfio",
            "module/vfio_iommu_type1",
            "bus/pci/drivers/vfio-pci",
        ] {
            fs::create_dir_all(self.p.sys.join(m)).unwrap();
        }
    }

    /// A PF with `sriov_totalvfs`, its netdev and its VFs (each in its own group).
    pub fn sriov(&self, pf: &Pf) {
        let dev = self.add(pf.addr, Some(pf.driver), None);
        fs::write(dev.join("vendor"), format!("0x{}\n", pf.id.0)).unwrap();
        fs::write(dev.join("device"), format!("0x{}\n", pf.id.1)).unwrap();
        fs::write(dev.join("sriov_totalvfs"), format!("{}\n", pf.total)).unwrap();
        fs::write(dev.join("sriov_numvfs"), format!("{}\n", pf.vfs.len())).unwrap();
        fs::create_dir_all(dev.join("net").join(pf.netdev)).unwrap();
        for (n, vf) in pf.vfs.iter().enumerate() {
            let group = pf.first_group.map(|g| g + n as u32);
            let vdev = self.add(vf, pf.vf_driver, group);
            symlink(format!("../{}", pf.addr), vdev.join("physfn")).unwrap();
            symlink(format!("../{vf}"), dev.join(format!("virtfn{n}"))).unwrap();
        }
    }

    /// Puts device `addr` (already added) into IOMMU group `group`, with a PCI `class`.
    pub fn join_group(&self, addr: &str, group: u32, class: &str) {
        let dev = self.p.sys.join("bus/pci/devices").join(addr);
        fs::write(dev.join("class"), format!("{class}\n")).unwrap();
        let g = self
            .p
            .sys
            .join(format!("kernel/iommu_groups/{group}/devices"));
        symlink(&dev, g.join(addr)).unwrap();
    }

    /// The kernel log.
    pub fn kmsg(&self, text: &str) {
        write(&self.p.dev.join("kmsg"), text);
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Does what the kernel does on the binding attributes of a fake sysfs:
/// `driver/unbind` drops the driver link, `drivers_probe` binds the
/// override driver (or the device's native one), `drivers/<d>/bind` binds
/// `d`. Each write also lands in the file and in [`FakeKernel::writes`].
pub struct FakeKernel {
    sys: PathBuf,
    /// The driver each device gets when probed without an override.
    pub native: BTreeMap<String, String>,
    /// Drivers whose probe fails.
    pub refuse: Vec<String>,
    /// (path under sysfs, value) of every write, in order.
    pub writes: RefCell<Vec<(String, String)>>,
}

impl FakeKernel {
    /// A kernel acting on the fake host's sysfs.
    pub fn new(f: &Fake) -> Self {
        FakeKernel {
            sys: f.p.sys.clone(),
            native: BTreeMap::new(),
            refuse: Vec::new(),
            writes: RefCell::new(Vec::new()),
        }
    }

    fn attach(&self, addr: &str, driver: &str) {
        let dev = self.sys.join("bus/pci/devices").join(addr);
        if !self.refuse.iter().any(|r| r == driver)
            && self.sys.join("bus/pci/drivers").join(driver).is_dir()
            && fs::symlink_metadata(dev.join("driver")).is_err()
        {
            symlink(format!("../../drivers/{driver}"), dev.join("driver")).unwrap();
        }
    }
}

impl SysfsWrite for FakeKernel {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        fs::write(path, value)?;
        let rel = path
            .strip_prefix(&self.sys)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let v = value.trim().to_string();
        self.writes.borrow_mut().push((rel.clone(), v.clone()));
        if rel.ends_with("/driver/unbind") {
            let dev = path.parent().and_then(Path::parent).unwrap();
            fs::remove_file(dev.join("driver"))?;
        } else if rel == "bus/pci/drivers_probe" {
            let dev = self.sys.join("bus/pci/devices").join(&v);
            let over = fs::read_to_string(dev.join("driver_override")).unwrap_or_default();
            let over = over.trim();
            let driver = if over.is_empty() {
                self.native.get(&v).cloned()
            } else {
                Some(over.to_string())
            };
            if let Some(d) = driver {
                self.attach(&v, &d);
            }
        } else if let Some(d) = rel
            .strip_prefix("bus/pci/drivers/")
            .and_then(|r| r.strip_suffix("/bind"))
        {
            self.attach(&v, d);
        }
        Ok(())
    }
}
