//! A fake host for tests: sysfs, /dev and /proc trees under a temp dir.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::bdf::Bdf;
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
    let (sys, dev, proc) = (root.join("s"), root.join("d"), root.join("p"));
    fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
    fs::create_dir_all(dev.join("vfio")).unwrap();
    fs::create_dir_all(&proc).unwrap();
    let p = HostPaths { sys, dev, proc };
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

impl Fake {
    /// Adds a device with an optional driver and IOMMU group (and its /dev node).
    pub fn add(&self, addr: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
        let dev = self.p.sys.join("bus/pci/devices").join(addr);
        fs::create_dir_all(&dev).unwrap();
        if let Some(driver) = driver {
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

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.p.sys.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// The error `check_device` gives for `addr`.
    pub fn err(&self, addr: &str) -> HostError {
        check_device(&self.p, bdf(addr)).unwrap_err()
    }
}
