//! The common configuration structure (virtio 1.2, 4.1.4.3): feature
//! negotiation, device status, MSI-X vector numbers and the per-queue
//! registers. Status changes that need the device (DRIVER_OK, reset) come
//! back as a [`StatusChange`] for the transport to act on.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};

use super::NO_VECTOR;

/// Register offsets in the common configuration structure.
pub mod off {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Length of the structure (without the 1.2 notification-data fields).
    pub const LEN: u64 = 0x38;
}

/// DEVICE_NEEDS_RESET in device_status.
pub const STATUS_NEEDS_RESET: u8 = 0x40;

/// What a status write asks of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusChange {
    /// Nothing beyond the register.
    None,
    /// DRIVER_OK was set: start the device.
    DriverOk,
    /// 0 was written: stop the device and reset everything.
    Reset,
}

/// The common configuration registers of one device.
pub struct CommonConfig {
    /// Features the device offers (with VERSION_1).
    pub device_features: u64,
    /// Features the driver accepted.
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    /// MSI-X vector for configuration changes.
    pub config_vector: u16,
    /// device_status, without NEEDS_RESET (the transport ORs that in).
    pub status: u8,
    queue_select: u16,
    /// The queues.
    pub queues: Vec<Queue>,
    /// The MSI-X vector of each queue.
    pub queue_vectors: Vec<u16>,
    /// Queues whose last size write was invalid.
    pub bad_size: Vec<bool>,
}

fn set_half(v: &mut u64, high: bool, value: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(value);
    }
}

impl CommonConfig {
    /// Registers for a device with `features` and queues of `max_sizes`.
    /// Fails for a maximum that is zero, over 32768 or not a power of two.
    pub fn new(features: u64, max_sizes: &[u16]) -> Result<Self, virtio_queue::Error> {
        let features = (features | (1 << VIRTIO_F_VERSION_1)) & !(1 << VIRTIO_F_ACCESS_PLATFORM);
        let queues = max_sizes
            .iter()
            .map(|&m| Queue::new(m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CommonConfig {
            device_features: features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queue_vectors: vec![NO_VECTOR; queues.len()],
            bad_size: vec![false; queues.len()],
            queues,
        })
    }

    /// Back to the state after power-on (the queues keep their maximum size).
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.bad_size.fill(false);
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// True once the driver set DRIVER_OK: queue registers are frozen.
    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 != 0
    }

    /// Reads the register at `offset` (`data` is 1, 2, 4 or 8 bytes).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let q = self.queue();
        let v: u64 = match offset {
            off::DEVICE_FEATURE_SELECT => u64::from(self.device_feature_select),
            off::DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            off::DRIVER_FEATURE_SELECT => u64::from(self.driver_feature_select),
            off::DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            off::CONFIG_MSIX_VECTOR => u64::from(self.config_vector),
            off::NUM_QUEUES => self.queues.len() as u64,
            off::DEVICE_STATUS => u64::from(self.status),
            off::CONFIG_GENERATION => 0,
            off::QUEUE_SELECT => u64::from(self.queue_select),
            off::QUEUE_SIZE => q.map_or(0, |q| u64::from(q.size())),
            off::QUEUE_MSIX_VECTOR => self
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(u64::from(NO_VECTOR), |v| u64::from(*v)),
            off::QUEUE_ENABLE => q.map_or(0, |q| u64::from(q.ready())),
            off::QUEUE_NOTIFY_OFF => u64::from(self.queue_select),
            off::QUEUE_DESC => q.map_or(0, |q| q.desc_table()),
            o if o == off::QUEUE_DESC + 4 => q.map_or(0, |q| q.desc_table() >> 32),
            off::QUEUE_DRIVER => q.map_or(0, |q| q.avail_ring()),
            o if o == off::QUEUE_DRIVER + 4 => q.map_or(0, |q| q.avail_ring() >> 32),
            off::QUEUE_DEVICE => q.map_or(0, |q| q.used_ring()),
            o if o == off::QUEUE_DEVICE + 4 => q.map_or(0, |q| q.used_ring() >> 32),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// Writes the register at `offset`; `max_vector` bounds vector numbers.
    pub fn write(&mut self, offset: u64, data: &[u8], max_vector: u16) -> StatusChange {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let (v32, v16) = (v as u32, v as u16);
        let vector = |x: u16| if x < max_vector { x } else { NO_VECTOR };
        let frozen = self.driver_ok();
        let sel = usize::from(self.queue_select);
        match offset {
            off::DEVICE_FEATURE_SELECT => self.device_feature_select = v32,
            off::DRIVER_FEATURE_SELECT => self.driver_feature_select = v32,
            off::DRIVER_FEATURE if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 == 0 => {
                match self.driver_feature_select {
                    0 => set_half(&mut self.driver_features, false, v32),
                    1 => set_half(&mut self.driver_features, true, v32),
                    _ => {}
                }
            }
            off::CONFIG_MSIX_VECTOR => self.config_vector = vector(v16),
            off::DEVICE_STATUS => return self.write_status(v as u8),
            off::QUEUE_SELECT => self.queue_select = v16,
            _ if frozen => {
                log::debug!("virtio: queue register {offset:#x} written after DRIVER_OK")
            }
            off::QUEUE_SIZE => {
                if let Some(q) = self.queues.get_mut(sel) {
                    let bad = q.try_set_size(v16).is_err();
                    if bad {
                        log::warn!(
                            "virtio: queue {sel}: bad size {v16}; the device will refuse to start"
                        );
                    }
                    if let Some(b) = self.bad_size.get_mut(sel) {
                        *b = bad;
                    }
                }
            }
            off::QUEUE_MSIX_VECTOR => {
                if let Some(qv) = self.queue_vectors.get_mut(sel) {
                    *qv = vector(v16);
                }
            }
            off::QUEUE_ENABLE => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.set_ready(v16 == 1);
                }
            }
            o @ (off::QUEUE_DESC..=0x37) => self.write_queue_addr(sel, o, data.len(), v),
            _ => log::debug!("virtio: ignored write at common config {offset:#x}"),
        }
        StatusChange::None
    }

    fn write_queue_addr(&mut self, sel: usize, o: u64, len: usize, v: u64) {
        let Some(q) = self.queues.get_mut(sel) else {
            return;
        };
        let (base, high) = match o {
            off::QUEUE_DESC | off::QUEUE_DRIVER | off::QUEUE_DEVICE => (o, false),
            _ if o % 8 == 4 => (o - 4, true),
            _ => return,
        };
        let (lo, hi) = match (len, high) {
            (8, false) => (Some(v as u32), Some((v >> 32) as u32)),
            (4, false) => (Some(v as u32), None),
            (4, true) => (None, Some(v as u32)),
            _ => return,
        };
        match base {
            off::QUEUE_DESC => q.set_desc_table_address(lo, hi),
            off::QUEUE_DRIVER => q.set_avail_ring_address(lo, hi),
            _ => q.set_used_ring_address(lo, hi),
        }
    }

    fn write_status(&mut self, new: u8) -> StatusChange {
        if new == 0 {
            return StatusChange::Reset;
        }
        let mut new = new & !STATUS_NEEDS_RESET;
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        if new & features_ok != 0 && self.status & features_ok == 0 {
            let extra = self.driver_features & !self.device_features;
            let v1 = self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if extra != 0 || !v1 {
                log::warn!(
                    "virtio: driver features {:#x} refused (offered {:#x}; VERSION_1 required)",
                    self.driver_features,
                    self.device_features
                );
                new &= !features_ok;
            }
        }
        let was_ok = self.driver_ok();
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        if new & driver_ok != 0 && new & features_ok == 0 {
            log::warn!("virtio: DRIVER_OK without FEATURES_OK; ignored");
            new &= !driver_ok;
        }
        if new & VIRTIO_CONFIG_S_FAILED as u8 != 0 {
            log::warn!("virtio: the driver gave up on the device (FAILED)");
        }
        self.status = new;
        if !was_ok && self.driver_ok() {
            StatusChange::DriverOk
        } else {
            StatusChange::None
        }
    }
}
