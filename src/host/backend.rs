//! Which VFIO interface a VM uses: the legacy group/container (type1) one,
//! or iommufd with per-device cdevs (`/dev/iommu`, `/dev/vfio/devices/vfioN`),
//! and the descriptors a privileged launcher may have opened for us.

use std::fs;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use super::bdf::Bdf;
use super::checks::{HostDevice, HostError, HostPaths};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// iommufd when the host has it for every device, else the group interface.
    #[default]
    Auto,
    /// VFIO groups in a type1 container.
    Group,
    /// iommufd and vfio cdevs.
    Iommufd,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "group" => Ok(BackendChoice::Group),
            "iommufd" => Ok(BackendChoice::Iommufd),
            _ => Err(format!("{s:?}: use auto, group or iommufd")),
        }
    }
}

/// The interface a VM uses, decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Groups in a container.
    Group,
    /// iommufd.
    Iommufd,
}

impl Backend {
    /// The name used in logs and events.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Group => "vfio-group",
            Backend::Iommufd => "iommufd",
        }
    }
}

/// Where a device's cdev comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cdev {
    /// Opened by vflaunch: `/dev/vfio/devices/vfioN`.
    Path(PathBuf),
    /// Opened by the launcher and inherited.
    Fd(RawFd),
}

/// The descriptors handed to vflaunch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preopened {
    /// `/dev/iommu`.
    pub iommufd: Option<RawFd>,
    /// Each device's cdev.
    pub devices: Vec<(Bdf, RawFd)>,
}

impl Preopened {
    fn device(&self, bdf: Bdf) -> Option<RawFd> {
        self.devices
            .iter()
            .find(|(b, _)| *b == bdf)
            .map(|(_, fd)| *fd)
    }
}

/// The cdev name of `dev` from sysfs (`vfio-dev/vfioN`), if the kernel made one.
pub fn cdev_name(dev: &HostDevice) -> Option<String> {
    let entries = fs::read_dir(dev.sysfs.join("vfio-dev")).ok()?;
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("vfio"))
        .collect();
    (names.len() == 1).then(|| names[0].clone())
}

/// Checks that `fd` is an open character device; `what` names it in errors.
pub fn check_fd(fd: RawFd, what: &str) -> Result<(), HostError> {
    let link = fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| HostError::BadFd {
        fd,
        what: what.to_string(),
        why: "it is not open",
    })?;
    let meta = fs::metadata(&link).ok();
    let is_char = meta.is_some_and(|m| m.file_type().is_char_device());
    if !is_char {
        let why = "it is not a character device";
        return Err(HostError::BadFd {
            fd,
            what: what.to_string(),
            why,
        });
    }
    Ok(())
}

/// Decides the backend for `devices` and, for iommufd, where each cdev comes
/// from; returns the decision and why (for the log and `check`).
pub fn select(
    p: &HostPaths,
    choice: BackendChoice,
    devices: &mut [HostDevice],
    pre: &Preopened,
) -> Result<(Backend, String), HostError> {
    if pre.iommufd.is_some() || !pre.devices.is_empty() {
        if choice == BackendChoice::Group {
            return Err(HostError::FdsNeedIommufd);
        }
        if let Some(fd) = pre.iommufd {
            check_fd(fd, "--iommufd-fd")?;
        }
    }
    let has_iommu = pre.iommufd.is_some() || p.dev.join("iommu").exists();
    let mut missing = Vec::new();
    for d in devices.iter() {
        if pre.device(d.bdf).is_none() && cdev_name(d).is_none() {
            missing.push(d.bdf);
        }
    }
    let usable = has_iommu && missing.is_empty();
    let backend = match choice {
        BackendChoice::Group => {
            return Ok((Backend::Group, "asked for with --vfio-backend group".into()))
        }
        BackendChoice::Auto if !usable && pre.devices.is_empty() && pre.iommufd.is_none() => {
            let why = if !has_iommu {
                format!(
                    "{} is missing (kernel without CONFIG_IOMMUFD)",
                    p.dev.join("iommu").display()
                )
            } else {
                format!("{} has no vfio cdev", missing[0])
            };
            return Ok((
                Backend::Group,
                format!("auto: the group interface, because {why}"),
            ));
        }
        _ => Backend::Iommufd,
    };
    if !has_iommu {
        return Err(HostError::NoIommufd(p.dev.join("iommu")));
    }
    for d in devices.iter_mut() {
        d.cdev = Some(match pre.device(d.bdf) {
            Some(fd) => {
                check_fd(fd, &format!("the cdev fd of {}", d.bdf))?;
                Cdev::Fd(fd)
            }
            None => {
                let name = cdev_name(d).ok_or(HostError::NoCdev(d.bdf))?;
                let node = p.dev.join("vfio/devices").join(&name);
                if !node.exists() {
                    return Err(HostError::CdevNodeMissing {
                        bdf: d.bdf,
                        path: node,
                    });
                }
                Cdev::Path(node)
            }
        });
    }
    let why = match choice {
        BackendChoice::Iommufd => "asked for with --vfio-backend iommufd".to_string(),
        _ if pre.iommufd.is_some() => {
            "auto: iommufd, because its descriptors were passed in".to_string()
        }
        _ => {
            "auto: iommufd, because /dev/iommu exists and every device has a vfio cdev".to_string()
        }
    };
    Ok((backend, why))
}

vmm_sys_util::ioctl_io_nr!(
    IOMMU_OPTION,
    iommufd_bindings::iommufd::IOMMUFD_TYPE as u32,
    iommufd_bindings::iommufd::IOMMUFD_CMD_OPTION
);

/// How iommufd charges pinned memory (`IOMMU_OPTION_RLIMIT_MODE`), as the
/// note `check` shows; `None` when it cannot be asked.
pub fn iommufd_accounting(p: &HostPaths, pre: &Preopened) -> Option<&'static str> {
    use iommufd_bindings::iommufd::{
        iommu_option, iommufd_option_IOMMU_OPTION_RLIMIT_MODE,
        iommufd_option_ops_IOMMU_OPTION_OP_GET,
    };
    use std::os::fd::AsRawFd;
    let opened;
    let fd = match pre.iommufd {
        Some(fd) => fd,
        None => {
            opened = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p.dev.join("iommu"))
                .ok()?;
            opened.as_raw_fd()
        }
    };
    let mut opt = iommu_option {
        size: std::mem::size_of::<iommu_option>() as u32,
        option_id: iommufd_option_IOMMU_OPTION_RLIMIT_MODE,
        op: iommufd_option_ops_IOMMU_OPTION_OP_GET as u16,
        ..Default::default()
    };
    // SAFETY: IOMMU_OPTION reads and writes only the `iommu_option` passed,
    // which lives for the call; `fd` is an open iommufd (or the call fails).
    let r =
        unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&RawFdRef(fd), IOMMU_OPTION(), &mut opt) };
    if r < 0 {
        return None;
    }
    Some(match opt.val64 {
        0 => "iommufd charges pinned memory to the user: RLIMIT_MEMLOCK must cover all of this user's VMs together (or have root switch iommufd to per-process accounting)",
        _ => "iommufd charges pinned memory to this process",
    })
}

/// A borrowed raw descriptor for the ioctl helpers.
struct RawFdRef(RawFd);

impl std::os::fd::AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
