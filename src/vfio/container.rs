//! The VFIO container (one IOMMU domain for the VM), the KVM-VFIO pseudo
//! device, opening devices and DMA-mapping guest RAM (IOVA = guest physical).

use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioOps};
use vm_memory::GuestMemoryMmap;

use crate::error_chain;

/// Errors opening VFIO devices and mapping memory.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The KVM-VFIO device could not be created.
    #[error("Cannot create the KVM-VFIO device (is the kvm module built with VFIO support?)")]
    KvmVfioDevice(#[source] kvm_ioctls::Error),
    /// /dev/vfio/vfio could not be opened or lacks type1v2.
    #[error("Cannot open the VFIO container /dev/vfio/vfio: {0}")]
    Container(String),
    /// The device could not be opened.
    #[error("Cannot open VFIO device {0}: {1}{hint}", hint = open_hint(*.2))]
    Device(String, String, Option<i32>),
    /// DMA mapping failed.
    #[error("Cannot DMA-map guest memory for the device: {0}. Check RLIMIT_MEMLOCK (ulimit -l) and free memory")]
    DmaMap(String),
}

/// The VM's VFIO container.
pub struct Container {
    inner: Arc<VfioContainer>,
    mapped: bool,
}

impl Container {
    /// Opens the container and registers it with KVM's VFIO device.
    pub fn new(vm: &VmFd) -> Result<Self, ContainerError> {
        let mut cd = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .create_device(&mut cd)
            .map_err(ContainerError::KvmVfioDevice)?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio));
        let inner = VfioContainer::new(Some(handle))
            .map_err(|e| ContainerError::Container(e.to_string()))?;
        Ok(Container {
            inner: Arc::new(inner),
            mapped: false,
        })
    }

    /// Opens the device at `sysfs` (attaching its group to this container).
    pub fn open_device(&self, name: &str, sysfs: &Path) -> Result<VfioDevice, ContainerError> {
        VfioDevice::new(sysfs, self.inner.clone() as Arc<dyn VfioOps>, false)
            .map_err(|e| ContainerError::Device(name.to_string(), error_chain(&e), errno(&e)))
    }

    /// Maps all of guest RAM for device DMA (pins it).
    pub fn map_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), ContainerError> {
        // SAFETY: every region of `mem` is a live host mapping owned by the
        // VMM for the whole life of the VM; the container is dropped (and the
        // mappings with it) before guest memory is.
        unsafe { self.inner.vfio_map_guest_memory(mem) }
            .map_err(|e| ContainerError::DmaMap(error_chain(&e)))?;
        self.mapped = true;
        Ok(())
    }

    /// Unmaps guest RAM (done before exit so pins are released promptly).
    pub fn unmap_guest_memory(&mut self, mem: &GuestMemoryMmap) {
        if self.mapped {
            if let Err(e) = self.inner.vfio_unmap_guest_memory(mem) {
                log::warn!("unmapping guest memory from the IOMMU: {e}");
            }
            self.mapped = false;
        }
    }
}

/// The OS error number somewhere in the chain, if any.
fn errno(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
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
pub fn open_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EBUSY) => " (its IOMMU group is held by another process, most likely another VM: stop it or pick another VF)",
        Some(libc::EPERM) => " (the host refused the group: without interrupt remapping VFIO needs --allow-unsafe-interrupts and vfio_iommu_type1 allow_unsafe_interrupts=1)",
        Some(libc::EACCES) => " (no permission on /dev/vfio/<group>: run as root or give this user the group device)",
        Some(libc::ENOENT) | Some(libc::ENODEV) => " (the device or its group node is gone: check that it is still bound to vfio-pci)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failed to open group: {}", self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn busy_group_gets_one_clear_line() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(errno(&e), Some(libc::EBUSY));
        let line =
            ContainerError::Device("0000:03:02.1".into(), error_chain(&e), errno(&e)).to_string();
        assert_eq!(line.matches("Device or resource busy").count(), 1, "{line}");
        assert!(line.contains("held by another process"), "{line}");
        assert_eq!(open_hint(None), "");
        assert!(open_hint(Some(libc::EPERM)).contains("--allow-unsafe-interrupts"));
    }
}
