//! The host checks, each on its own: is a device bound to vfio-pci in a
//! viable, IOMMU-backed group with its `/dev/vfio` node, is `/dev/kvm`
//! usable, can the host provide guest RAM (available memory or free huge
//! pages), is RLIMIT_MEMLOCK high enough, and does the IOMMU remap
//! interrupts. [`super::preflight`] runs them in one order for `run` and
//! `check`. All paths are rooted at [`HostPaths`] so tests can use a fake
//! sysfs tree.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::bdf::Bdf;
use crate::bounded::{read_text, Kind, ReadError, PROCFS_MAX, SYSFS_MAX};
use crate::config::format_size;

/// The driver a passed-through device must be bound to.
pub(crate) const VFIO_PCI: &str = "vfio-pci";
/// Drivers that may hold other devices of the same IOMMU group.
pub(crate) const GROUP_SAFE_DRIVERS: [&str; 3] = [VFIO_PCI, "pci-stub", "pcieport"];
/// Capability number of CAP_IPC_LOCK.
pub(crate) const CAP_IPC_LOCK: u32 = 14;
/// The vfio_iommu_type1 module parameter that permits missing interrupt remapping.
pub(crate) const UNSAFE_IRQ_PARAM: &str =
    "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts";
/// One 2 MiB huge page.
pub(crate) const HUGEPAGE_2M: u64 = 2 << 20;

/// Roots of the host file systems the checks read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// Kernel images and their configs (`config-<release>`), normally `/boot`.
    pub boot: PathBuf,
    /// Run-time state (`vflaunch/bind.json` of `vflaunch bind`), normally `/run`.
    pub run: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
            boot: PathBuf::from("/boot"),
            run: PathBuf::from("/run"),
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
    /// Whether the device is an SR-IOV virtual function (has a `physfn` link).
    pub is_vf: bool,
    /// Its vfio cdev, when the VM uses iommufd (set by the backend selection).
    pub cdev: Option<super::backend::Cdev>,
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

/// Host problems that prevent passthrough; each message says what to do.
#[derive(Debug, Error)]
pub enum HostError {
    /// No such device in sysfs.
    #[error("PCI device {0} not found: check the address with `lspci -D`")]
    DeviceNotFound(Bdf),
    /// An SR-IOV physical function (not bound to vfio-pci) was named.
    #[error("PCI device {bdf} is an SR-IOV physical function{}: pass one of its VFs instead ({}), bound to vfio-pci (`vflaunch bind <VF>`)", .driver.as_deref().map(|d| format!(" bound to {d}")).unwrap_or_default(), vf_hint(.bdf, .vfs))]
    PhysicalFunction {
        /// The PF.
        bdf: Bdf,
        /// Its driver, if any.
        driver: Option<String>,
        /// Its VFs, in VF order.
        vfs: Vec<String>,
    },
    /// The device is not bound to vfio-pci.
    #[error("{}", not_bound_msg(.bdf, .driver.as_deref()))]
    NotBoundToVfio {
        /// The device.
        bdf: Bdf,
        /// Its current driver, if any.
        driver: Option<String>,
    },
    /// The device has no (usable) IOMMU group.
    #[error("PCI device {0} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the host kernel command line)")]
    NoIommuGroup(Bdf),
    /// The group is a VFIO no-IOMMU group.
    #[error("PCI device {bdf} is in VFIO no-IOMMU group {group}: there is no DMA isolation, so it is refused; enable the IOMMU and unset vfio enable_unsafe_noiommu_mode")]
    NoIommuMode {
        /// The device.
        bdf: Bdf,
        /// The group.
        group: u32,
    },
    /// Another device in the group is bound to a host driver.
    #[error("IOMMU group {group} of {bdf} is not viable: {}; unbind them or bind them to vfio-pci too, e.g. `vflaunch bind` with every address (a group is passed through as a whole)", offenders(.others))]
    GroupNotViable {
        /// The device.
        bdf: Bdf,
        /// The group.
        group: u32,
        /// (address, driver) of each offending device, sorted.
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
    /// `/dev/iommu` is missing.
    #[error("{} is missing: the host kernel has no iommufd (CONFIG_IOMMUFD; try `modprobe iommufd`), so use --vfio-backend group, or pass --iommufd-fd", .0.display())]
    NoIommufd(PathBuf),
    /// The device has no vfio cdev.
    #[error("PCI device {0} has no vfio cdev (no vfio-dev/ in sysfs): the host kernel lacks CONFIG_VFIO_DEVICE_CDEV, so use --vfio-backend group")]
    NoCdev(Bdf),
    /// The cdev node is missing.
    #[error("{} for {bdf} is missing: in a pod, mount /dev/vfio/devices/ (or pass the opened cdev as --device {bdf},fd=N)", .path.display())]
    CdevNodeMissing {
        /// The device.
        bdf: Bdf,
        /// The missing node.
        path: PathBuf,
    },
    /// A passed-in descriptor is not usable.
    #[error("{what}={fd} cannot be used: {why}; pass the descriptor of the opened device node")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// Which flag gave it.
        what: String,
        /// What is wrong.
        why: &'static str,
    },
    /// Descriptors were passed but the group backend was asked for.
    #[error("pre-opened descriptors (--iommufd-fd, --device BDF,fd=N) need the iommufd backend: drop --vfio-backend group")]
    FdsNeedIommufd,
    /// `/dev/vfio/vfio` is missing.
    #[error("{} is missing: load vfio-pci (`modprobe vfio-pci`); in a pod, check that /dev/vfio/vfio is mounted", .0.display())]
    ContainerNodeMissing(PathBuf),
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
    /// Guest RAM (in 4 KiB pages) is more than the host has available; VFIO
    /// would pin it until the OOM killer ends the run.
    #[error("guest memory is {} MiB but the host has only {} MiB available (MemAvailable): VFIO pins all of guest RAM, so give the guest less --memory or free host memory", .need >> 20, .available >> 20)]
    MemoryShort {
        /// Bytes of guest RAM.
        need: u64,
        /// MemAvailable in bytes.
        available: u64,
    },
    /// Not enough free 2 MiB huge pages for guest RAM.
    #[error("guest memory is {} MiB but only {free} 2 MiB huge pages are free: reserve {} more (echo <total> > /proc/sys/vm/nr_hugepages) or give the guest less --memory", .need >> 20, .need.div_ceil(HUGEPAGE_2M).saturating_sub(*.free))]
    HugePagesShort {
        /// Bytes of guest RAM.
        need: u64,
        /// Free 2 MiB huge pages.
        free: u64,
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
    /// A sysfs or procfs entry could not be read.
    #[error("cannot read {}", .path.display())]
    Sysfs {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: ReadError,
    },
}

fn vf_hint(pf: &Bdf, vfs: &[String]) -> String {
    if vfs.is_empty() {
        format!(
            "it has none yet: create them with `echo 1 > /sys/bus/pci/devices/{pf}/sriov_numvfs`"
        )
    } else {
        vfs.join(", ")
    }
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
    format!("PCI device {bdf} {state}, not vfio-pci: run `modprobe vfio-pci; echo vfio-pci > {dev}/driver_override;{unbind} echo {bdf} > /sys/bus/pci/drivers_probe` (or `vflaunch bind {bdf}`, which records the driver to give it back to)")
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

/// A sysfs attribute as text (capped), if it can be read.
pub(crate) fn sys_text(path: &Path) -> Option<String> {
    read_text(path, SYSFS_MAX, Kind::Pseudo).ok()
}

/// The VFs of `sysfs` (its `virtfnN` links, in N order) if it is an
/// SR-IOV physical function, `None` otherwise.
fn sriov_vfs(sysfs: &Path) -> Option<Vec<String>> {
    let total: u32 = sys_text(&sysfs.join("sriov_totalvfs"))?
        .trim()
        .parse()
        .ok()?;
    if total == 0 {
        return None;
    }
    let mut vfs: Vec<(u32, String)> = fs::read_dir(sysfs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_str()?
                .strip_prefix("virtfn")?
                .parse()
                .ok()?;
            Some((n, link_name(&e.path())?))
        })
        .collect();
    vfs.sort();
    Some(vfs.into_iter().map(|(_, bdf)| bdf).collect())
}

/// The last component of a symlink's target, e.g. the driver name.
pub(crate) fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    Some(target.file_name()?.to_str()?.to_string())
}

/// Checks that `bdf` can be passed through: present, bound to vfio-pci,
/// in a real (not no-IOMMU), viable IOMMU group. The `/dev` nodes depend on
/// the backend: [`check_group_nodes`] for the group interface.
pub fn check_device(p: &HostPaths, bdf: Bdf) -> Result<HostDevice, HostError> {
    let sysfs = p.sys.join("bus/pci/devices").join(bdf.to_string());
    if !sysfs.exists() {
        return Err(HostError::DeviceNotFound(bdf));
    }
    let driver = link_name(&sysfs.join("driver"));
    if driver.as_deref() != Some(VFIO_PCI) {
        // A PF bound to vfio-pci may be passed through whole; one that is
        // not was most likely named instead of one of its VFs.
        if let Some(vfs) = sriov_vfs(&sysfs) {
            return Err(HostError::PhysicalFunction { bdf, driver, vfs });
        }
        return Err(HostError::NotBoundToVfio { bdf, driver });
    }
    let group_link = sysfs.join("iommu_group");
    let group: u32 = link_name(&group_link)
        .and_then(|name| name.parse().ok())
        .ok_or(HostError::NoIommuGroup(bdf))?;

    let group_dir = p.sys.join("kernel/iommu_groups").join(group.to_string());
    let name = sys_text(&group_dir.join("name")).unwrap_or_default();
    if name.contains("vfio-noiommu") || p.dev.join(format!("vfio/noiommu-{group}")).exists() {
        return Err(HostError::NoIommuMode { bdf, group });
    }

    let mut members = group_dir.join("devices");
    if !members.is_dir() {
        members = group_link.join("devices");
    }
    let mut others = Vec::new();
    let entries = fs::read_dir(&members).and_then(|dir| dir.collect::<Result<Vec<_>, _>>());
    let entries = entries.map_err(|e| HostError::Sysfs {
        path: members,
        source: ReadError::Io(e),
    })?;
    for entry in entries {
        match link_name(&entry.path().join("driver")) {
            Some(driver) if !GROUP_SAFE_DRIVERS.contains(&driver.as_str()) => {
                others.push((entry.file_name().to_string_lossy().into_owned(), driver));
            }
            _ => {}
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(HostError::GroupNotViable { bdf, group, others });
    }

    let is_vf = fs::symlink_metadata(sysfs.join("physfn")).is_ok();
    Ok(HostDevice {
        bdf,
        sysfs,
        group,
        is_vf,
        cdev: None,
    })
}

/// Checks the group interface's nodes for `d`: `/dev/vfio/<group>` and `/dev/vfio/vfio`.
pub fn check_group_nodes(p: &HostPaths, d: &HostDevice) -> Result<(), HostError> {
    let (bdf, group) = (d.bdf, d.group);
    let path = p.dev.join("vfio").join(group.to_string());
    if !path.exists() {
        return Err(HostError::GroupNodeMissing { bdf, group, path });
    }
    let container = p.dev.join("vfio/vfio");
    if !container.exists() {
        return Err(HostError::ContainerNodeMissing(container));
    }
    Ok(())
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
pub(crate) fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

/// Whether `need` bytes can be locked with this limit (`u64::MAX` = unlimited).
pub(crate) fn memlock_sufficient(limit: u64, cap_ipc_lock: bool, need: u64) -> bool {
    cap_ipc_lock || limit >= need
}

/// This process's RLIMIT_MEMLOCK, soft and hard.
pub(crate) fn memlock_rlimit() -> io::Result<libc::rlimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit that getrlimit fills in; it
    // touches no other memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rl)
}

/// Checks that this process may lock `guest_memory` bytes for VFIO DMA.
pub fn check_memlock(guest_memory: u64) -> Result<(), HostError> {
    let rl = memlock_rlimit().map_err(HostError::Memlock)?;
    let limit = if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    };
    let cap_ipc_lock = read_text(Path::new("/proc/self/status"), PROCFS_MAX, Kind::Pseudo)
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

pub(crate) fn is_ir_chip(name: &str) -> bool {
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
        .any(|e| sys_text(&e.path().join("chip_name")).is_some_and(|n| is_ir_chip(n.trim())));
    let in_proc = || {
        read_text(&p.proc.join("interrupts"), PROCFS_MAX, Kind::Pseudo)
            .is_ok_and(|s| s.split_whitespace().any(is_ir_chip))
    };
    if in_sys || in_proc() {
        return IrqRemap::Enabled;
    }
    let param = sys_text(&p.sys.join(UNSAFE_IRQ_PARAM)).unwrap_or_default();
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

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
