//! The layout of a virtio-pci function: BAR0's regions, the configuration
//! header with its capability list, and the seam to KVM's ioeventfds.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::pci::regs;

/// Layout of BAR0.
pub mod bar {
    /// BAR size.
    pub const SIZE: u64 = 0x8000;
    /// Common configuration.
    pub const COMMON: u64 = 0x0000;
    /// ISR status (one byte, read to clear).
    pub const ISR: u64 = 0x1000;
    /// Device configuration.
    pub const DEVICE: u64 = 0x2000;
    /// Device configuration length.
    pub const DEVICE_LEN: u64 = 0x1000;
    /// Queue notifications: queue `n` at `NOTIFY + 4 * n`.
    pub const NOTIFY: u64 = 0x3000;
    /// Notify offset multiplier.
    pub const NOTIFY_MULTIPLIER: u64 = 4;
    /// MSI-X table.
    pub const MSIX_TABLE: u64 = 0x4000;
    /// MSI-X pending bit array.
    pub const MSIX_PBA: u64 = 0x6000;
}

/// Red Hat's virtio vendor ID; modern device IDs are 0x1040 + type.
pub const VENDOR: u16 = 0x1af4;
pub const DEVICE_BASE: u16 = 0x1040;
/// The capability layout in configuration space.
pub const CAP_MSIX: usize = 0x40;
pub const CAP_COMMON: usize = 0x4c;
pub const CAP_NOTIFY: usize = 0x5c;
pub const CAP_ISR: usize = 0x70;
pub const CAP_DEVICE: usize = 0x80;
/// Vendor-specific capability ID and the virtio cfg_type values.
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CFG_COMMON: u8 = 1;
pub const CFG_NOTIFY: u8 = 2;
pub const CFG_ISR: u8 = 3;
pub const CFG_DEVICE: u8 = 4;
/// At most this many MSI-X vectors per function.
pub const MAX_VECTORS: usize = 64;

/// Registers the queue notification addresses with KVM (a seam for tests).
pub trait IoEvents: Send + Sync {
    /// Signals `fd` on any guest write to `addr`.
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error>;
    /// Undoes [`IoEvents::register`].
    fn unregister(&self, fd: &EventFd, addr: u64);
}

/// [`IoEvents`] on a KVM VM.
pub struct KvmIoEvents(pub Arc<kvm_ioctls::VmFd>);

impl IoEvents for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        let a = kvm_ioctls::IoEventAddress::Mmio(addr);
        self.0.register_ioevent(fd, &a, kvm_ioctls::NoDatamatch)
    }

    fn unregister(&self, fd: &EventFd, addr: u64) {
        let a = kvm_ioctls::IoEventAddress::Mmio(addr);
        if let Err(e) = self.0.unregister_ioevent(fd, &a, kvm_ioctls::NoDatamatch) {
            log::warn!("virtio: cannot unregister the ioeventfd at {addr:#x}: {e}");
        }
    }
}

fn put(h: &mut [u8], at: usize, bytes: &[u8]) {
    h[at..at + bytes.len()].copy_from_slice(bytes);
}

fn virtio_cap(h: &mut [u8], at: usize, next: usize, cfg: u8, offset: u64, len: u64, extra: &[u8]) {
    let cap_len = 16 + extra.len();
    put(
        h,
        at,
        &[CAP_ID_VENDOR, next as u8, cap_len as u8, cfg, 0, 0, 0, 0],
    );
    put(h, at + 8, &(offset as u32).to_le_bytes());
    put(h, at + 12, &(len as u32).to_le_bytes());
    put(h, at + 16, extra);
}

/// The type-0 header and capabilities of a function of `device_type`
/// with `nq` queues and `nvec` MSI-X vectors.
pub fn header(device_type: u16, nq: usize, nvec: usize) -> [u8; regs::CONFIG_SPACE_SIZE] {
    let mut h = [0u8; regs::CONFIG_SPACE_SIZE];
    put(&mut h, 0, &VENDOR.to_le_bytes());
    put(&mut h, 2, &(DEVICE_BASE + device_type).to_le_bytes());
    put(&mut h, regs::STATUS, &regs::STATUS_CAP_LIST.to_le_bytes());
    let class: u32 = match device_type {
        1 => 0x02_00_00, // network controller, Ethernet
        2 => 0x01_80_00, // mass storage, other
        _ => 0xff_00_00, // unassigned class
    };
    put(&mut h, 8, &((class << 8) | 1).to_le_bytes()); // revision 1: modern
    put(&mut h, 0x2c, &VENDOR.to_le_bytes());
    put(&mut h, 0x2e, &0x1100u16.to_le_bytes());
    h[regs::CAP_PTR] = CAP_MSIX as u8;
    h[regs::INTERRUPT_PIN] = 0; // MSI-X only
    put(&mut h, CAP_MSIX, &[regs::CAP_ID_MSIX, CAP_COMMON as u8]);
    put(&mut h, CAP_MSIX + 2, &((nvec - 1) as u16).to_le_bytes());
    put(
        &mut h,
        CAP_MSIX + 4,
        &(bar::MSIX_TABLE as u32).to_le_bytes(),
    );
    put(&mut h, CAP_MSIX + 8, &(bar::MSIX_PBA as u32).to_le_bytes());
    let common_len = super::common::off::LEN;
    virtio_cap(
        &mut h,
        CAP_COMMON,
        CAP_NOTIFY,
        CFG_COMMON,
        bar::COMMON,
        common_len,
        &[],
    );
    let notify_len = (nq as u64).max(1) * bar::NOTIFY_MULTIPLIER;
    let mult = (bar::NOTIFY_MULTIPLIER as u32).to_le_bytes();
    virtio_cap(
        &mut h,
        CAP_NOTIFY,
        CAP_ISR,
        CFG_NOTIFY,
        bar::NOTIFY,
        notify_len,
        &mult,
    );
    virtio_cap(&mut h, CAP_ISR, CAP_DEVICE, CFG_ISR, bar::ISR, 1, &[]);
    virtio_cap(
        &mut h,
        CAP_DEVICE,
        0,
        CFG_DEVICE,
        bar::DEVICE,
        bar::DEVICE_LEN,
        &[],
    );
    h
}
