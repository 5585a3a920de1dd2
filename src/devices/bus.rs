//! An address-range bus for port I/O and MMIO: devices register a range,
//! vCPU exits are dispatched to the device that owns the address.
//!
//! Ranges can be added and removed while vCPUs run (a guest moving a BAR);
//! the range table is locked only to look a device up, never while the
//! device runs, so a device may change the bus from inside an access.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::sync::lock;

/// A device that answers reads and writes at offsets within its range.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the start of the range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the start of the range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors registering devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps an existing one.
    #[error("bus range {0:#x}+{1:#x} overlaps an existing device")]
    Overlap(u64, u64),
    /// Zero-length range.
    #[error("bus range at {0:#x} has zero length")]
    Empty(u64),
}

/// Shared handle to a bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// The port-I/O and MMIO buses the vCPUs dispatch to.
#[derive(Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O (shared with the PCI root, which moves BAR traps).
    pub mmio: Arc<Bus>,
}

/// A set of non-overlapping ranges, each owned by a device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, (u64, SharedDevice)>>,
}

impl Bus {
    /// Registers `dev` for `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, dev: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap(base, len))?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if let Some((b, (l, _))) = ranges.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap(base, len));
            }
        }
        ranges.insert(base, (len, dev));
        Ok(())
    }

    /// Removes every range (at tear-down: drops the bus's device references).
    pub fn clear(&self) {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Removes the range that starts at `base`; returns its device.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        self.ranges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&base)
            .map(|(_, d)| d)
    }

    /// The registered ranges as (base, length), in address order.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges.iter().map(|(b, (l, _))| (*b, *l)).collect()
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, (len, dev)) = ranges.range(..=addr).next_back()?;
        let off = addr - base;
        (off + size as u64 <= *len).then(|| (off, dev.clone()))
    }

    /// Dispatches a read; returns false when no device owns the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                lock(&dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                lock(&dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let bus = Bus::default();
        let a = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        let mut d = [0u8; 2];
        assert!(bus.read(0x104, &mut d));
        assert_eq!(d, [4, 4]);
        assert!(bus.write(0x10e, &[1, 2]));
        assert_eq!(a.lock().unwrap().last, vec![(0xe, vec![1, 2])]);
        // Straddling the end or outside: not dispatched.
        assert!(!bus.read(0x10f, &mut d));
        assert!(!bus.read(0xff, &mut [0u8]));
        assert!(!bus.write(0x110, &[0]));
        // Removed ranges stop dispatching and free the space.
        assert!(bus.remove(0x100).is_some());
        assert!(!bus.read(0x104, &mut d));
        assert!(bus.remove(0x100).is_none());
        bus.insert(0x100, 0x10, a).unwrap();
    }

    /// A device that moves itself on the bus from inside an access.
    struct Mover(Arc<Bus>, Arc<Mutex<Option<SharedDevice>>>);
    impl BusDevice for Mover {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(1);
        }
        fn write(&mut self, _o: u64, _d: &[u8]) {
            let me = self.1.lock().unwrap().clone().unwrap();
            self.0.remove(0x1000);
            self.0.insert(0x2000, 0x10, me).unwrap();
        }
    }

    #[test]
    fn a_device_can_move_itself_during_an_access() {
        let bus = Arc::new(Bus::default());
        let slot = Arc::new(Mutex::new(None));
        let dev: SharedDevice = Arc::new(Mutex::new(Mover(bus.clone(), slot.clone())));
        *slot.lock().unwrap() = Some(dev.clone());
        bus.insert(0x1000, 0x10, dev).unwrap();
        assert!(bus.write(0x1000, &[0]), "no deadlock");
        let mut d = [0u8];
        assert!(!bus.read(0x1000, &mut d));
        assert!(bus.read(0x2004, &mut d));
        assert_eq!(d, [1]);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let bus = Bus::default();
        let a: SharedDevice = Arc::new(Mutex::new(Reg::default()));
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        assert_eq!(
            bus.insert(0x10f, 1, a.clone()),
            Err(BusError::Overlap(0x10f, 1))
        );
        assert_eq!(
            bus.insert(0xf0, 0x11, a.clone()),
            Err(BusError::Overlap(0xf0, 0x11))
        );
        assert_eq!(bus.insert(0x50, 0, a.clone()), Err(BusError::Empty(0x50)));
        bus.insert(0x110, 1, a.clone()).unwrap();
        bus.insert(0xf0, 0x10, a).unwrap();
        assert_eq!(
            bus.insert(u64::MAX, 2, Arc::new(Mutex::new(Reg::default()))),
            Err(BusError::Overlap(u64::MAX, 2))
        );
    }
}
