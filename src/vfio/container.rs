//! The VFIO container (one IOMMU domain for the VM), the KVM-VFIO pseudo
//! device, opening devices and DMA-mapping guest RAM (IOVA = guest physical).

use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioOps};
use vm_memory::GuestMemoryMmap;

use crate::host::checks::HostDevice;

use vfio_ioctls::VfioError;

/// Errors opening VFIO devices and mapping memory.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The KVM-VFIO device could not be created.
    #[error("cannot create the KVM-VFIO device (is the kvm module built with VFIO support?)")]
    KvmVfioDevice(#[source] kvm_ioctls::Error),
    /// /dev/vfio/vfio could not be opened or lacks type1v2.
    #[error("cannot open the VFIO container /dev/vfio/vfio")]
    Container(#[source] VfioError),
    /// The device could not be opened; the hint says what to do about it.
    #[error("cannot open VFIO device {name}{hint}", hint = open_hint(*.errno))]
    Device {
        /// The device.
        name: String,
        /// The OS error number in the cause chain, if any.
        errno: Option<i32>,
        /// Why.
        #[source]
        source: VfioError,
    },
    /// The thread opening a device panicked.
    #[error("the thread opening a VFIO device failed")]
    OpenPanicked,
    /// DMA mapping failed.
    #[error("cannot DMA-map guest memory for the device (check RLIMIT_MEMLOCK with `ulimit -l`, and free memory)")]
    DmaMap(#[source] VfioError),
    /// /dev/iommu could not be opened.
    #[error("cannot open /dev/iommu (use --vfio-backend group, or pass --iommufd-fd)")]
    Iommufd(#[source] iommufd_ioctls::IommufdError),
    /// The IOAS could not be set up.
    #[error("cannot set up the iommufd IO address space")]
    Ioas(#[source] VfioError),
    /// The device's cdev could not be opened.
    #[error("cannot open the vfio cdev of {name}{hint}", hint = open_hint(*.errno))]
    Cdev {
        /// The device.
        name: String,
        /// The OS error number.
        errno: Option<i32>,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How a VM's devices reach the IOMMU: groups in a container, or iommufd.
pub trait DmaSpace: Send + Sync {
    /// Opens `d` in this space (callable from several threads at once: the
    /// devices of a VM are opened side by side).
    fn open(&self, d: &HostDevice) -> Result<VfioDevice, ContainerError>;
    /// Pins and maps all of guest RAM for device DMA (IOVA = guest physical).
    fn map_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), ContainerError>;
    /// Unmaps guest RAM (done before exit so pins are released promptly).
    fn unmap_guest_memory(&mut self, mem: &GuestMemoryMmap);
    /// The backend's name for logs and events.
    fn backend(&self) -> &'static str;
}

/// The VM's VFIO container.
pub struct Container {
    inner: Arc<VfioContainer>,
    mapped: bool,
}

/// KVM's VFIO pseudo device, which both backends register their groups or
/// cdevs with (KVM needs it for coherent DMA and interrupt bypass).
pub(super) fn kvm_vfio_device(vm: &VmFd) -> Result<Arc<VfioDeviceFd>, ContainerError> {
    let mut cd = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let kvm_vfio = vm
        .create_device(&mut cd)
        .map_err(ContainerError::KvmVfioDevice)?;
    Ok(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio)))
}

impl Container {
    /// Opens the container and registers it with KVM's VFIO device.
    pub fn new(vm: &VmFd) -> Result<Self, ContainerError> {
        let handle = kvm_vfio_device(vm)?;
        let inner = VfioContainer::new(Some(handle)).map_err(ContainerError::Container)?;
        Ok(Container {
            inner: Arc::new(inner),
            mapped: false,
        })
    }
}

impl DmaSpace for Container {
    /// Opens the device (attaching its group to this container).
    fn open(&self, d: &HostDevice) -> Result<VfioDevice, ContainerError> {
        VfioDevice::new(&d.sysfs, self.inner.clone() as Arc<dyn VfioOps>, false).map_err(|source| {
            ContainerError::Device {
                name: d.bdf.to_string(),
                errno: errno(&source),
                source,
            }
        })
    }

    fn backend(&self) -> &'static str {
        "vfio-group"
    }

    fn map_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), ContainerError> {
        // SAFETY: every region of `mem` is a live host mapping owned by the
        // VMM for the whole life of the VM; `Vmm::shutdown`, which every path
        // runs (its Drop included), unmaps and drops the container before
        // guest memory is dropped.
        unsafe { self.inner.vfio_map_guest_memory(mem) }.map_err(ContainerError::DmaMap)?;
        self.mapped = true;
        Ok(())
    }

    fn unmap_guest_memory(&mut self, mem: &GuestMemoryMmap) {
        if self.mapped {
            if let Err(e) = self.inner.vfio_unmap_guest_memory(mem) {
                log::warn!("unmapping guest memory from the IOMMU: {e}");
            }
            self.mapped = false;
        }
    }
}

/// The OS error number somewhere in the chain, if any.
pub(super) fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = c.source();
    }
    None
}

/// What to do about a failed device open, by errno.
fn open_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EBUSY) => ": its IOMMU group is held by another process, most likely another VM: stop it or pick another VF",
        Some(libc::EPERM) => ": the host refused the group: without interrupt remapping VFIO needs --allow-unsafe-interrupts and vfio_iommu_type1 allow_unsafe_interrupts=1",
        Some(libc::EACCES) => ": no permission on /dev/vfio/<group>: run as root or give this user the group device",
        Some(libc::ENOENT) | Some(libc::ENODEV) => ": the device or its group node is gone: check that it is still bound to vfio-pci",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_chain;

    #[test]
    fn busy_group_gets_one_clear_line() {
        let io = std::io::Error::from_raw_os_error(libc::EBUSY);
        let source = VfioError::OpenGroup(io, "12".into());
        let e = ContainerError::Device {
            name: "0000:03:02.1".into(),
            errno: errno(&source),
            source,
        };
        let line = error_chain(&e);
        assert_eq!(line.matches("Device or resource busy").count(), 1, "{line}");
        assert!(
            line.starts_with(
                "cannot open VFIO device 0000:03:02.1: its IOMMU group is held by another process"
            ),
            "{line}"
        );
        assert_eq!(open_hint(None), "");
        assert!(open_hint(Some(libc::EPERM)).contains("--allow-unsafe-interrupts"));
    }
}
