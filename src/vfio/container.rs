//! The VFIO container (one IOMMU domain for the VM), the KVM-VFIO pseudo
//! device, opening devices and DMA-mapping guest RAM (IOVA = guest physical).

use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioOps};
use vm_memory::GuestMemoryMmap;

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
    #[error("Cannot open VFIO device {0}: {1}. If it says 'Operation not permitted', the host may lack interrupt remapping (see --allow-unsafe-interrupts) or the group is in use by another process")]
    Device(String, String),
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
            .map_err(|e| ContainerError::Device(name.to_string(), error_chain(&e)))
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
