//! Host pre-flight checks, run before touching KVM: is each device bound to
//! vfio-pci in a viable, IOMMU-backed group with its `/dev/vfio` node, is
//! `/dev/kvm` usable, is RLIMIT_MEMLOCK high enough, and does the IOMMU
//! remap interrupts. All paths are rooted at [`HostPaths`] so tests can use
//! a fake sysfs tree.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{format_size, VmConfig};
use crate::pci_addr::Bdf;

/// The driver a passed-through device must be bound to.
const VFIO_PCI: &str = "vfio-pci";
/// Drivers that may hold other devices of the same IOMMU group.
const GROUP_SAFE_DRIVERS: [&str; 3] = [VFIO_PCI, "pci-stub", "pcieport"];
/// Capability number of CAP_IPC_LOCK.
const CAP_IPC_LOCK: u32 = 14;
/// The vfio_iommu_type1 module parameter that permits missing interrupt remapping.
const UNSAFE_IRQ_PARAM: &str = "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts";

/// Roots of the host file systems the checks read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// A device that passed [`check_device`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The device address.
    pub bdf: Bdf,
    /// `<sys>/bus/pci/devices/<bdf>` (not canonicalized).
    pub sysfs: PathBuf,
    /// IOMMU group number.
    pub group: u32,
    /// `<dev>/vfio/<group>`.
    pub group_path: PathBuf,
    /// Whether the device is an SR-IOV virtual function (has a `physfn` link).
    pub is_vf: bool,
}

/// Whether the host IOMMU remaps interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqRemap {
    /// Interrupt remapping is on.
    Enabled,
    /// It is off, but vfio_iommu_type1 `allow_unsafe_interrupts` is set.
    UnsafeAllowed,
    /// It is off and VFIO will refuse devices.
    Missing,
}

impl IrqRemap {
    /// The warning to log when running with this state, if any.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            IrqRemap::Enabled => None,
            IrqRemap::UnsafeAllowed => Some("host IOMMU has no interrupt remapping: continuing because of --allow-unsafe-interrupts; a device could inject arbitrary interrupts"),
            IrqRemap::Missing => Some("host IOMMU has no interrupt remapping and vfio_iommu_type1 allow_unsafe_interrupts is not set, so VFIO will likely refuse the device: `echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts`"),
        }
    }
}

/// Host problems that prevent passthrough; each says what to do.
#[derive(Debug, Error)]
pub enum HostError {
    /// The same device is listed twice.
    #[error("PCI device {bdf} is listed twice: list each device once")]
    DuplicateDevice {
        /// The device.
        bdf: Bdf,
    },
    /// No such device in sysfs.
    #[error("PCI device {bdf} not found: check the address with `lspci -D`")]
    DeviceNotFound {
        /// The device.
        bdf: Bdf,
    },
    /// The device is not bound to vfio-pci.
    #[error("{}", not_bound_msg(.bdf, .driver.as_deref()))]
    NotBoundToVfio {
        /// The device.
        bdf: Bdf,
        /// Its current driver, if any.
        driver: Option<String>,
    },
    /// The device has no IOMMU group.
    #[error("PCI device {bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the host kernel command line)")]
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
    },
    /// The `iommu_group` link does not end in a group number.
    #[error("IOMMU group link of {bdf} points to {target}, which is not a group number")]
    BadIommuGroup {
        /// The device.
        bdf: Bdf,
        /// The link target.
        target: PathBuf,
    },
    /// The group is a VFIO no-IOMMU group.
    #[error("PCI device {bdf} is in VFIO no-IOMMU group {group}: there is no DMA isolation, so it is refused; enable the IOMMU and unset vfio enable_unsafe_noiommu_mode")]
    NoIommuMode {
        /// The device.
        bdf: Bdf,
        /// The group.
        group: u32,
    },
    /// Another device in the group is bound to a host driver.
    #[error("IOMMU group {group} of {bdf} is not viable: {}; unbind them or bind them to vfio-pci too (a group is passed through as a whole)", offenders(.others))]
    GroupNotViable {
        /// The device.
        bdf: Bdf,
        /// The group.
        group: u32,
        /// (address, driver) of each offending device.
        others: Vec<(String, String)>,
    },
    /// `/dev/vfio/<group>` is missing.
    #[error("{} for {bdf} is missing: load vfio-pci (`modprobe vfio-pci`); in a pod, check that the device plugin mounts /dev/vfio/{group}", .path.display())]
    GroupNodeMissing {
        /// The device.
        bdf: Bdf,
        /// The group.
        group: u32,
        /// The missing node.
        path: PathBuf,
    },
    /// `/dev/vfio/vfio` is missing.
    #[error("{} is missing: load vfio-pci (`modprobe vfio-pci`); in a pod, check that /dev/vfio/vfio is mounted", .path.display())]
    ContainerNodeMissing {
        /// The missing node.
        path: PathBuf,
    },
    /// A VFIO node exists but is not readable and writable.
    #[error("no read-write access to {}: run as root or grant this user access to the VFIO nodes", .path.display())]
    NodeNoAccess {
        /// The node.
        path: PathBuf,
    },
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open {}: {reason}", .path.display())]
    KvmUnavailable {
        /// The KVM node.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// RLIMIT_MEMLOCK is below guest memory and CAP_IPC_LOCK is missing.
    #[error("RLIMIT_MEMLOCK is {} but VFIO must lock {} of guest memory: raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit, or the pod's memlock ulimit) or grant CAP_IPC_LOCK", format_size(*.limit), format_size(*.need))]
    MemlockTooLow {
        /// Current soft limit in bytes.
        limit: u64,
        /// Bytes needed.
        need: u64,
    },
    /// getrlimit failed.
    #[error("cannot read RLIMIT_MEMLOCK")]
    Memlock(#[source] io::Error),
    /// No interrupt remapping and unsafe interrupts not allowed.
    #[error("{}", no_remap_msg(*.module_param))]
    NoInterruptRemapping {
        /// Whether vfio_iommu_type1 allow_unsafe_interrupts is set on the host.
        module_param: bool,
    },
    /// A sysfs file could not be read.
    #[error("cannot read {}", .path.display())]
    Sysfs {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

fn not_bound_msg(bdf: &Bdf, driver: Option<&str>) -> String {
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    let (state, unbind) = match driver {
        Some(d) => (
            format!("is bound to {d}"),
            format!(" echo {bdf} > {dev}/driver/unbind;"),
        ),
        None => ("has no driver".to_string(), String::new()),
    };
    format!("PCI device {bdf} {state}, not vfio-pci: run `modprobe vfio-pci; echo vfio-pci > {dev}/driver_override;{unbind} echo {bdf} > /sys/bus/pci/drivers_probe`")
}

fn offenders(others: &[(String, String)]) -> String {
    let list: Vec<String> = others
        .iter()
        .map(|(bdf, driver)| format!("{bdf} is bound to {driver}"))
        .collect();
    list.join(", ")
}

fn no_remap_msg(module_param: bool) -> &'static str {
    if module_param {
        "host IOMMU has no interrupt remapping (the host set vfio_iommu_type1 allow_unsafe_interrupts): a VF could inject arbitrary interrupts; pass --allow-unsafe-interrupts to accept that"
    } else {
        "host IOMMU has no interrupt remapping: a VF could inject arbitrary interrupts; enable it (intremap=on / amd_iommu) or pass --allow-unsafe-interrupts (also needs vfio_iommu_type1 allow_unsafe_interrupts=1)"
    }
}

/// The last component of a symlink's target, e.g. the driver name.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// Whether this process may open `path` read-write (effective IDs).
fn can_read_write(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the
    // call; faccessat only reads it and touches no other memory.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::R_OK | libc::W_OK,
            libc::AT_EACCESS,
        )
    };
    rc == 0
}

/// Checks that a VFIO node exists (else `missing`) and is read-write accessible.
fn check_node(path: &Path, missing: impl FnOnce() -> HostError) -> Result<(), HostError> {
    if !path.exists() {
        return Err(missing());
    }
    if !can_read_write(path) {
        return Err(HostError::NodeNoAccess {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Checks that `bdf` can be passed through: present, bound to vfio-pci,
/// in a real (not no-IOMMU), viable IOMMU group whose `/dev/vfio` nodes exist.
pub fn check_device(p: &HostPaths, bdf: Bdf) -> Result<HostDevice, HostError> {
    let sysfs = p.sys.join("bus/pci/devices").join(bdf.to_string());
    if !sysfs.exists() {
        return Err(HostError::DeviceNotFound { bdf });
    }
    let driver = link_name(&sysfs.join("driver"));
    if driver.as_deref() != Some(VFIO_PCI) {
        return Err(HostError::NotBoundToVfio { bdf, driver });
    }
    let group_link = sysfs.join("iommu_group");
    let target = match fs::read_link(&group_link) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(HostError::NoIommuGroup { bdf })
        }
        Err(source) => {
            return Err(HostError::Sysfs {
                path: group_link,
                source,
            })
        }
    };
    let group: u32 = target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| HostError::BadIommuGroup {
            bdf,
            target: target.clone(),
        })?;

    let group_dir = p.sys.join("kernel/iommu_groups").join(group.to_string());
    let name = fs::read_to_string(group_dir.join("name")).unwrap_or_default();
    if name.contains("vfio-noiommu") || p.dev.join(format!("vfio/noiommu-{group}")).exists() {
        return Err(HostError::NoIommuMode { bdf, group });
    }

    let mut members = group_dir.join("devices");
    if !members.is_dir() {
        members = group_link.join("devices");
    }
    let sysfs_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HostError::Sysfs { path, source }
    };
    let mut others = Vec::new();
    for entry in fs::read_dir(&members).map_err(sysfs_err(&members))? {
        let entry = entry.map_err(sysfs_err(&members))?;
        if let Some(driver) = link_name(&entry.path().join("driver")) {
            if !GROUP_SAFE_DRIVERS.contains(&driver.as_str()) {
                others.push((entry.file_name().to_string_lossy().into_owned(), driver));
            }
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(HostError::GroupNotViable { bdf, group, others });
    }

    let group_path = p.dev.join("vfio").join(group.to_string());
    check_node(&group_path, || HostError::GroupNodeMissing {
        bdf,
        group,
        path: group_path.clone(),
    })?;
    let container = p.dev.join("vfio/vfio");
    check_node(&container, || HostError::ContainerNodeMissing {
        path: container.clone(),
    })?;
    let is_vf = fs::symlink_metadata(sysfs.join("physfn")).is_ok();
    Ok(HostDevice {
        bdf,
        sysfs,
        group,
        group_path,
        is_vf,
    })
}

/// Checks that `<dev>/kvm` can be opened read-write.
pub fn check_kvm(p: &HostPaths) -> Result<(), HostError> {
    let path = p.dev.join("kvm");
    let err = match fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(_) => return Ok(()),
        Err(err) => err,
    };
    let reason = match err.kind() {
        io::ErrorKind::NotFound => "it does not exist: enable VT-x/AMD-V in the firmware and load kvm_intel or kvm_amd (in a pod, request devices.kubevirt.io/kvm)".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied: add the user to group kvm or run as root".to_string(),
        _ => err.to_string(),
    };
    Err(HostError::KvmUnavailable { path, reason })
}

/// Parses the CapEff bit mask from `/proc/<pid>/status` text.
fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Whether `need` bytes can be locked with this limit (`u64::MAX` = unlimited).
fn memlock_sufficient(limit: u64, cap_ipc_lock: bool, need: u64) -> bool {
    cap_ipc_lock || limit >= need
}

/// Checks that this process may lock `guest_memory` bytes for VFIO DMA.
pub fn check_memlock(guest_memory: u64) -> Result<(), HostError> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit that getrlimit fills in; it
    // touches no other memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return Err(HostError::Memlock(io::Error::last_os_error()));
    }
    let limit = if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    };
    let cap_ipc_lock = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
    if memlock_sufficient(limit, cap_ipc_lock, guest_memory) {
        Ok(())
    } else {
        Err(HostError::MemlockTooLow {
            limit,
            need: guest_memory,
        })
    }
}

fn is_ir_chip(name: &str) -> bool {
    ["IR-", "INTEL-IR", "AMD-IR"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Detects interrupt remapping from `<sys>/kernel/irq/*/chip_name` and
/// `<proc>/interrupts`, then the vfio_iommu_type1 unsafe-interrupts parameter.
pub fn interrupt_remapping(p: &HostPaths) -> IrqRemap {
    let in_sys = fs::read_dir(p.sys.join("kernel/irq"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            fs::read_to_string(e.path().join("chip_name")).is_ok_and(|n| is_ir_chip(n.trim()))
        });
    let in_proc = || {
        fs::read_to_string(p.proc.join("interrupts"))
            .is_ok_and(|s| s.split_whitespace().any(is_ir_chip))
    };
    if in_sys || in_proc() {
        return IrqRemap::Enabled;
    }
    let param = fs::read_to_string(p.sys.join(UNSAFE_IRQ_PARAM)).unwrap_or_default();
    match param.trim() {
        "Y" | "y" | "1" => IrqRemap::UnsafeAllowed,
        _ => IrqRemap::Missing,
    }
}

/// Fails without interrupt remapping unless `allow_unsafe`. With
/// `allow_unsafe` it returns the state; the caller should log
/// [`IrqRemap::warning`].
pub fn check_interrupt_remapping(p: &HostPaths, allow_unsafe: bool) -> Result<IrqRemap, HostError> {
    let state = interrupt_remapping(p);
    match state {
        IrqRemap::Enabled => Ok(state),
        _ if allow_unsafe => Ok(state),
        _ => Err(HostError::NoInterruptRemapping {
            module_param: state == IrqRemap::UnsafeAllowed,
        }),
    }
}

/// All checks for `cfg`: duplicates, KVM, and, when there are devices,
/// memlock, interrupt remapping (logging a warning if unsafe) and each device.
pub fn preflight(p: &HostPaths, cfg: &VmConfig) -> Result<Vec<HostDevice>, HostError> {
    preflight_with(p, cfg, check_memlock)
}

fn preflight_with(
    p: &HostPaths,
    cfg: &VmConfig,
    memlock: impl Fn(u64) -> Result<(), HostError>,
) -> Result<Vec<HostDevice>, HostError> {
    for (i, bdf) in cfg.devices.iter().enumerate() {
        if cfg.devices[..i].contains(bdf) {
            return Err(HostError::DuplicateDevice { bdf: *bdf });
        }
    }
    check_kvm(p)?;
    if cfg.devices.is_empty() {
        return Ok(Vec::new());
    }
    memlock(cfg.memory)?;
    if let Some(warning) = check_interrupt_remapping(p, cfg.allow_unsafe_interrupts)?.warning() {
        log::warn!("{warning}");
    }
    cfg.devices
        .iter()
        .map(|&bdf| check_device(p, bdf))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    struct Fake {
        _dir: tempfile::TempDir,
        p: HostPaths,
    }

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// A host with /dev/kvm, /dev/vfio/vfio and no devices.
    fn fake() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let p = HostPaths {
            sys: dir.path().join("sys"),
            dev: dir.path().join("dev"),
            proc: dir.path().join("proc"),
        };
        for d in [
            p.sys.join("bus/pci/devices"),
            p.dev.join("vfio"),
            p.proc.clone(),
        ] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(p.dev.join("kvm"), "").unwrap();
        fs::write(p.dev.join("vfio/vfio"), "").unwrap();
        Fake { _dir: dir, p }
    }

    impl Fake {
        /// Adds a device with an optional driver and IOMMU group (and its /dev node).
        fn add(&self, addr: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let dev = self.p.sys.join("bus/pci/devices").join(addr);
            fs::create_dir_all(&dev).unwrap();
            if let Some(driver) = driver {
                symlink(
                    format!("../../../bus/pci/drivers/{driver}"),
                    dev.join("driver"),
                )
                .unwrap();
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

        fn write(&self, rel: &str, text: &str) {
            let path = self.p.sys.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn good_vf_passes() {
        let f = fake();
        let dev = f.add("0000:03:02.1", Some("vfio-pci"), Some(42));
        symlink("../0000:03:00.0", dev.join("physfn")).unwrap();
        let got = check_device(&f.p, bdf("03:02.1")).unwrap();
        assert_eq!(
            got,
            HostDevice {
                bdf: bdf("0000:03:02.1"),
                sysfs: dev,
                group: 42,
                group_path: f.p.dev.join("vfio/42"),
                is_vf: true,
            }
        );
        f.add("0000:04:00.0", Some("vfio-pci"), Some(7));
        assert!(!check_device(&f.p, bdf("0000:04:00.0")).unwrap().is_vf);
    }

    #[test]
    fn missing_device() {
        let f = fake();
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::DeviceNotFound { .. }));
        assert!(err.to_string().contains("lspci -D"));
    }

    #[test]
    fn wrong_or_no_driver_gives_fix_commands() {
        let f = fake();
        f.add("0000:03:02.1", Some("ixgbevf"), Some(1));
        f.add("0000:03:02.2", None, Some(2));
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(
            matches!(&err, HostError::NotBoundToVfio { driver: Some(d), .. } if d == "ixgbevf")
        );
        let msg = err.to_string();
        for needle in [
            "bound to ixgbevf",
            "echo vfio-pci > /sys/bus/pci/devices/0000:03:02.1/driver_override",
            "echo 0000:03:02.1 > /sys/bus/pci/devices/0000:03:02.1/driver/unbind",
            "echo 0000:03:02.1 > /sys/bus/pci/drivers_probe",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        let err = check_device(&f.p, bdf("0000:03:02.2")).unwrap_err();
        assert!(matches!(
            err,
            HostError::NotBoundToVfio { driver: None, .. }
        ));
        assert!(!err.to_string().contains("unbind"), "{err}");
    }

    #[test]
    fn no_iommu_group_or_bad_link() {
        let f = fake();
        f.add("0000:03:02.1", Some("vfio-pci"), None);
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::NoIommuGroup { .. }));
        assert!(err.to_string().contains("intel_iommu=on"));
        let dev = f.add("0000:03:02.2", Some("vfio-pci"), None);
        symlink("../../kernel/iommu_groups/x", dev.join("iommu_group")).unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.2")).unwrap_err();
        assert!(matches!(err, HostError::BadIommuGroup { .. }));
    }

    #[test]
    fn no_iommu_mode_is_refused() {
        let f = fake();
        f.add("0000:03:02.1", Some("vfio-pci"), Some(5));
        f.write("kernel/iommu_groups/5/name", "vfio-noiommu\n");
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::NoIommuMode { group: 5, .. }));
        f.add("0000:03:02.2", Some("vfio-pci"), Some(6));
        fs::write(f.p.dev.join("vfio/noiommu-6"), "").unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.2")).unwrap_err();
        assert!(matches!(err, HostError::NoIommuMode { group: 6, .. }));
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
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        let HostError::GroupNotViable { group, others, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(*group, 9);
        let ixgbe = |a: &str| (a.to_string(), "ixgbe".to_string());
        assert_eq!(others, &[ixgbe("0000:03:00.0"), ixgbe("0000:03:00.1")]);
        let msg = err.to_string();
        assert!(
            msg.contains("0000:03:00.0 is bound to ixgbe, 0000:03:00.1"),
            "{msg}"
        );
    }

    #[test]
    fn group_members_fall_back_to_device_link() {
        let f = fake();
        let dev = f.add("0000:03:02.1", Some("vfio-pci"), None);
        let g = f.p.sys.join("elsewhere/12");
        fs::create_dir_all(g.join("devices/0000:03:02.0")).unwrap();
        symlink(
            "/x/drivers/mlx5_core",
            g.join("devices/0000:03:02.0/driver"),
        )
        .unwrap();
        symlink(&g, dev.join("iommu_group")).unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(
            matches!(err, HostError::GroupNotViable { group: 12, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn vfio_nodes_must_exist() {
        let f = fake();
        f.add("0000:03:02.1", Some("vfio-pci"), Some(3));
        fs::remove_file(f.p.dev.join("vfio/3")).unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::GroupNodeMissing { group: 3, .. }));
        assert!(err.to_string().contains("/dev/vfio/3"), "{err}");
        fs::write(f.p.dev.join("vfio/3"), "").unwrap();
        fs::remove_file(f.p.dev.join("vfio/vfio")).unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::ContainerNodeMissing { .. }));
    }

    /// Whether permission bits are enforced for us (not root / CAP_DAC_OVERRIDE).
    fn permissions_enforced(dir: &Path) -> bool {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join("probe");
        fs::write(&probe, "").unwrap();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o000)).unwrap();
        fs::File::open(&probe).is_err()
    }

    #[test]
    fn unreadable_nodes_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let f = fake();
        if !permissions_enforced(&f.p.proc) {
            println!("SKIPPED: running with permission override (root)");
            return;
        }
        f.add("0000:03:02.1", Some("vfio-pci"), Some(3));
        let node = f.p.dev.join("vfio/3");
        fs::set_permissions(&node, fs::Permissions::from_mode(0o400)).unwrap();
        let err = check_device(&f.p, bdf("0000:03:02.1")).unwrap_err();
        assert!(matches!(err, HostError::NodeNoAccess { path } if path == node));
        fs::set_permissions(f.p.dev.join("kvm"), fs::Permissions::from_mode(0o400)).unwrap();
        let err = check_kvm(&f.p).unwrap_err().to_string();
        assert!(err.contains("group kvm"), "{err}");
    }

    #[test]
    fn kvm_node() {
        let f = fake();
        check_kvm(&f.p).unwrap();
        fs::remove_file(f.p.dev.join("kvm")).unwrap();
        let err = check_kvm(&f.p).unwrap_err();
        assert!(
            matches!(&err, HostError::KvmUnavailable { reason, .. } if reason.contains("kvm_intel"))
        );
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
        // The real limit is whatever the test runner has; a zero-byte need always fits.
        check_memlock(0).unwrap();
        let msg = HostError::MemlockTooLow {
            limit: 8 << 20,
            need,
        }
        .to_string();
        assert!(msg.contains("8 MiB") && msg.contains("512 MiB") && msg.contains("ulimit -l"));
    }

    #[test]
    fn interrupt_remapping_detection() {
        let f = fake();
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::Missing);
        f.write(UNSAFE_IRQ_PARAM, "Y\n");
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::UnsafeAllowed);
        f.write("kernel/irq/24/chip_name", "PCI-MSI-0000:00:1f.6\n");
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::UnsafeAllowed);
        f.write("kernel/irq/25/chip_name", "IR-PCI-MSIX-0000:03:00.0\n");
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::Enabled);

        let f = fake();
        let interrupts = "           CPU0\n  0:  44  IR-IO-APIC    2-edge      timer\n";
        fs::write(f.p.proc.join("interrupts"), interrupts).unwrap();
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::Enabled);
        fs::write(
            f.p.proc.join("interrupts"),
            "  0:  44  IO-APIC  2-edge  timer\n",
        )
        .unwrap();
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::Missing);
        f.write("kernel/irq/3/chip_name", "AMD-IR-0\n");
        assert_eq!(interrupt_remapping(&f.p), IrqRemap::Enabled);
    }

    #[test]
    fn interrupt_remapping_policy() {
        let f = fake();
        let err = check_interrupt_remapping(&f.p, false).unwrap_err();
        assert!(matches!(
            err,
            HostError::NoInterruptRemapping {
                module_param: false
            }
        ));
        assert!(err.to_string().contains("--allow-unsafe-interrupts"));
        let state = check_interrupt_remapping(&f.p, true).unwrap();
        assert_eq!(state, IrqRemap::Missing);
        assert!(state.warning().unwrap().contains("allow_unsafe_interrupts"));
        f.write(UNSAFE_IRQ_PARAM, "1");
        let err = check_interrupt_remapping(&f.p, false).unwrap_err();
        assert!(matches!(
            err,
            HostError::NoInterruptRemapping { module_param: true }
        ));
        assert_eq!(
            check_interrupt_remapping(&f.p, true).unwrap(),
            IrqRemap::UnsafeAllowed
        );
        f.write("kernel/irq/1/chip_name", "INTEL-IR-0");
        assert_eq!(
            check_interrupt_remapping(&f.p, false).unwrap(),
            IrqRemap::Enabled
        );
        assert_eq!(IrqRemap::Enabled.warning(), None);
    }

    #[test]
    fn preflight_runs_checks_in_order() {
        let f = fake();
        let mut cfg = VmConfig::new("/k");
        let ok = |_: u64| Ok(());
        assert!(preflight_with(&f.p, &cfg, ok).unwrap().is_empty());
        cfg.devices = vec![bdf("0000:03:02.1"), bdf("0000:03:02.2")];
        let err = preflight_with(&f.p, &cfg, ok).unwrap_err();
        assert!(
            matches!(err, HostError::NoInterruptRemapping { .. }),
            "{err:?}"
        );
        cfg.allow_unsafe_interrupts = true;
        let low = |need| Err(HostError::MemlockTooLow { limit: 0, need });
        let err = preflight_with(&f.p, &cfg, low).unwrap_err();
        assert!(matches!(err, HostError::MemlockTooLow { need, .. } if need == cfg.memory));
        f.add("0000:03:02.1", Some("vfio-pci"), Some(1));
        f.add("0000:03:02.2", Some("vfio-pci"), Some(1));
        let devices = preflight_with(&f.p, &cfg, ok).unwrap();
        assert_eq!(devices.iter().map(|d| d.group).collect::<Vec<_>>(), [1, 1]);
        cfg.devices.push(bdf("03:02.1"));
        let err = preflight_with(&f.p, &cfg, ok).unwrap_err();
        assert!(matches!(err, HostError::DuplicateDevice { .. }));
        fs::remove_file(f.p.dev.join("kvm")).unwrap();
        cfg.devices.clear();
        assert!(matches!(
            preflight_with(&f.p, &cfg, ok),
            Err(HostError::KvmUnavailable { .. })
        ));
        assert_eq!(HostPaths::default().sys, PathBuf::from("/sys"));
    }
}
