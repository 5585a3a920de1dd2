//! VFIO passthrough: the container and DMA mapping (`container`) and the
//! guest-visible PCI device (`pci_device`), which coordinates its
//! configuration space (`config_space`), interrupt vectors (`vectors`) and
//! BAR mappings (`bar_map`).
//!
//! All access to a real device goes through [`VfioBackend`], a narrow seam
//! implemented for `vfio_ioctls::VfioDevice` and, in tests, by a mock.

pub mod bar_map;
pub mod config_space;
pub mod container;
pub mod iommufd;
pub mod pci_device;
pub mod vectors;

use std::os::fd::AsRawFd;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

/// Errors from the VFIO backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// An ioctl on the device failed.
    #[error("vfio device operation failed")]
    Vfio(#[source] vfio_ioctls::VfioError),
    /// mmap of a BAR failed.
    #[error("cannot mmap BAR region {0} at offset {1:#x}")]
    Mmap(u32, u64, #[source] std::io::Error),
}

/// What the host says about one VFIO region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: absent).
    pub size: u64,
    /// The region can be mmapped.
    pub mmap: bool,
    /// Sparse-mmap areas (offset, size), when the host restricts mmap.
    pub sparse: Option<Vec<(u64, u64)>>,
    /// The host allows mmapping over the MSI-X table.
    pub msix_mappable: bool,
}

/// A host mapping of part of a BAR. Unmapped on drop.
pub struct MmapArea {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain device memory owned by this value; it is only
// handed to KVM as a memslot and unmapped on drop, never aliased mutably.
unsafe impl Send for MmapArea {}
// SAFETY: as above; no interior mutability is exposed through &MmapArea.
unsafe impl Sync for MmapArea {}

impl MmapArea {
    /// Maps `len` bytes of `fd` at `offset` shared.
    pub fn map(fd: i32, offset: u64, len: usize, writable: bool) -> std::io::Result<Self> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping at a kernel-chosen address; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(MmapArea { ptr, len })
    }

    /// Host address of the mapping.
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for MmapArea {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The operations the PCI device model needs from a host VFIO device.
pub trait VfioBackend: Send + Sync {
    /// Reads the device's configuration space (as virtualized by vfio-pci).
    fn config_read(&self, offset: u64, buf: &mut [u8]);
    /// Writes the device's configuration space.
    fn config_write(&self, offset: u64, buf: &[u8]);
    /// Describes region `index` (BARs 0..6).
    fn region(&self, index: u32) -> RegionInfo;
    /// Reads a region through the device file (trapped accesses).
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]);
    /// Writes a region through the device file.
    fn region_write(&self, index: u32, offset: u64, buf: &[u8]);
    /// Maps part of a region.
    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea, BackendError>;
    /// Number of MSI-X vectors the host exposes.
    fn msix_vectors(&self) -> u32;
    /// Enables MSI-X with one eventfd per vector.
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), BackendError>;
    /// Disables MSI-X.
    fn disable_msix(&self) -> Result<(), BackendError>;
    /// Enables MSI with one eventfd per vector.
    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), BackendError>;
    /// Disables MSI.
    fn disable_msi(&self) -> Result<(), BackendError>;
    /// Resets the function (FLR or whatever vfio-pci uses).
    fn reset(&self);
}

impl VfioBackend for VfioDevice {
    fn config_read(&self, offset: u64, buf: &mut [u8]) {
        self.region_read(VFIO_PCI_CONFIG_REGION_INDEX, buf, offset);
    }

    fn config_write(&self, offset: u64, buf: &[u8]) {
        VfioDevice::region_write(self, VFIO_PCI_CONFIG_REGION_INDEX, buf, offset);
    }

    fn region(&self, index: u32) -> RegionInfo {
        let flags = self.get_region_flags(index);
        let caps = self.get_region_caps(index);
        let sparse = caps.iter().find_map(|c| match c {
            VfioRegionInfoCap::SparseMmap(s) => {
                Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
            }
            _ => None,
        });
        RegionInfo {
            size: self.get_region_size(index),
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
            sparse,
            msix_mappable: caps.contains(&VfioRegionInfoCap::MsixMappable),
        }
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) {
        VfioDevice::region_read(self, index, buf, offset);
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) {
        VfioDevice::region_write(self, index, buf, offset);
    }

    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea, BackendError> {
        let writable = self.get_region_flags(index) & VFIO_REGION_INFO_FLAG_WRITE != 0;
        MmapArea::map(
            self.as_raw_fd(),
            self.get_region_offset(index) + offset,
            len as usize,
            writable,
        )
        .map_err(|e| BackendError::Mmap(index, offset, e))
    }

    fn msix_vectors(&self) -> u32 {
        self.get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count)
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), BackendError> {
        VfioDevice::enable_msix(self, fds.to_vec()).map_err(BackendError::Vfio)
    }

    fn disable_msix(&self) -> Result<(), BackendError> {
        VfioDevice::disable_msix(self).map_err(BackendError::Vfio)
    }

    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), BackendError> {
        VfioDevice::enable_msi(self, fds.to_vec()).map_err(BackendError::Vfio)
    }

    fn disable_msi(&self) -> Result<(), BackendError> {
        VfioDevice::disable_msi(self).map_err(BackendError::Vfio)
    }

    fn reset(&self) {
        VfioDevice::reset(self);
    }
}
