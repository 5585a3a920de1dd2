//! The iommufd backend: one iommufd and one IOAS for the VM, each device's
//! vfio cdev bound to the iommufd and attached to the IOAS, guest RAM
//! mapped into the IOAS (IOVA = guest physical), every cdev registered with
//! KVM's VFIO device. The iommufd and the cdevs may come pre-opened from a
//! privileged launcher, so that vflaunch needs no access to `/dev/iommu`
//! or `/dev/vfio` at all.

use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioDevice, VfioIommufd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::container::{errno, kvm_vfio_device, ContainerError, DmaSpace};
use crate::host::backend::Cdev;
use crate::host::checks::HostDevice;

/// The VM's iommufd and IOAS.
pub struct IommufdSpace {
    inner: Arc<VfioIommufd>,
    mapped: Vec<(u64, usize)>,
}

/// Takes ownership of an inherited descriptor.
fn adopt(fd: RawFd) -> File {
    // SAFETY: the launcher handed `fd` to vflaunch for this one use, and
    // pre-flight checked that it is open; nothing else in the process
    // owns it, so the File becomes its only owner.
    unsafe { File::from_raw_fd(fd) }
}

impl IommufdSpace {
    /// Opens `/dev/iommu` (or adopts `iommufd`), allocates the IOAS and
    /// registers with KVM's VFIO device.
    pub fn new(vm: &VmFd, iommufd: Option<RawFd>) -> Result<Self, ContainerError> {
        let handle = kvm_vfio_device(vm)?;
        let fd = match iommufd {
            Some(fd) => IommuFd::new_from_fd(adopt(fd)),
            None => IommuFd::new().map_err(ContainerError::Iommufd)?,
        };
        let inner =
            VfioIommufd::new(Arc::new(fd), None, Some(handle)).map_err(ContainerError::Ioas)?;
        log::info!("vfio backend: iommufd, IOAS {}", inner.ioas().id());
        Ok(IommufdSpace {
            inner: Arc::new(inner),
            mapped: Vec::new(),
        })
    }
}

impl DmaSpace for IommufdSpace {
    fn open(&self, d: &HostDevice) -> Result<VfioDevice, ContainerError> {
        let name = d.bdf.to_string();
        let file = match &d.cdev {
            Some(Cdev::Fd(fd)) => adopt(*fd),
            Some(Cdev::Path(p)) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| ContainerError::Cdev {
                    name: name.clone(),
                    errno: e.raw_os_error(),
                    source: e,
                })?,
            None => VfioDevice::open_cdev(&d.sysfs).map_err(|source| ContainerError::Device {
                name: name.clone(),
                errno: errno(&source),
                source,
            })?,
        };
        VfioDevice::new_from_fd(file, self.inner.clone(), true).map_err(|source| {
            ContainerError::Device {
                errno: errno(&source),
                name,
                source,
            }
        })
    }

    fn map_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<(), ContainerError> {
        for r in mem.iter() {
            let (iova, len) = (r.start_addr().0, r.len() as usize);
            // SAFETY: the region is a live host mapping owned by the VMM for
            // the whole life of the VM; `Vmm::shutdown`, which every path runs,
            // unmaps it here before guest memory is dropped.
            unsafe { self.inner.vfio_dma_map(iova, len, r.as_ptr()) }
                .map_err(ContainerError::DmaMap)?;
            self.mapped.push((iova, len));
        }
        Ok(())
    }

    fn unmap_guest_memory(&mut self, _mem: &GuestMemoryMmap) {
        for (iova, len) in self.mapped.drain(..) {
            if let Err(e) = self.inner.vfio_dma_unmap(iova, len) {
                log::warn!("unmapping guest memory from the IOAS: {e}");
            }
        }
    }

    fn backend(&self) -> &'static str {
        "iommufd"
    }
}
