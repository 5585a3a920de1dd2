//! Where BARs live in the guest: the PCI windows, the memory slots of BAR
//! areas mapped straight through (through [`GuestMapper`]) and the MMIO bus
//! on which trapped BAR ranges are registered. The PCI root owns this and
//! applies the BAR moves that devices report; devices only report them.

use std::sync::{Arc, Mutex, Weak};

use super::{BarMove, PciDevice, SharedPciDevice, TrapRange};
use crate::arch::x86_64::layout::PciWindows;
use crate::devices::bus::{Bus, BusDevice, BusError};
use crate::sync::lock;
use crate::vm::GuestMapper;

/// Sends guest accesses to one trapped BAR range to its device.
struct BarTrap {
    dev: SharedPciDevice,
    base: u64,
}

impl BusDevice for BarTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).read_bar(self.base + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).write_bar(self.base + offset, data);
    }
}

/// The BAR part of the guest physical address space.
pub struct BarSpace {
    windows: PciWindows,
    mapper: Arc<dyn GuestMapper>,
    // Weak: the MMIO bus holds the ECAM window, which holds the PCI root,
    // which holds this.
    mmio: Weak<Bus>,
}

impl BarSpace {
    /// BARs in `windows`, direct mappings through `mapper`, traps on `mmio`.
    pub fn new(windows: PciWindows, mapper: Arc<dyn GuestMapper>, mmio: &Arc<Bus>) -> Self {
        BarSpace {
            windows,
            mapper,
            mmio: Arc::downgrade(mmio),
        }
    }

    /// The memory-slot side, for devices that map BAR areas when they are built.
    pub fn mapper(&self) -> &dyn GuestMapper {
        &*self.mapper
    }

    /// Registers the trapped ranges of `dev` on the MMIO bus.
    pub fn attach(&self, dev: &SharedPciDevice) -> Result<(), BusError> {
        let ranges = lock(dev).trapped_ranges();
        self.add_traps(dev, &ranges)
    }

    /// Registers `ranges` for `dev`, all or none.
    fn add_traps(&self, dev: &SharedPciDevice, ranges: &[TrapRange]) -> Result<(), BusError> {
        self.insert_traps(&|| lock(dev).name().to_string(), dev, ranges)
    }

    fn insert_traps(
        &self,
        name: &dyn Fn() -> String,
        dev: &SharedPciDevice,
        ranges: &[TrapRange],
    ) -> Result<(), BusError> {
        let Some(bus) = self.mmio.upgrade() else {
            return Ok(()); // the VM is being torn down
        };
        for (
            n,
            &TrapRange {
                addr: base, len, ..
            },
        ) in ranges.iter().enumerate()
        {
            let trap: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(BarTrap {
                dev: dev.clone(),
                base,
            }));
            if let Err(e) = bus.insert(base, len, trap) {
                for t in &ranges[..n] {
                    bus.remove(t.addr);
                }
                return Err(e);
            }
            log::debug!("{}: trapping {base:#x}+{len:#x}", name());
        }
        Ok(())
    }

    fn remove_traps(&self, ranges: &[TrapRange]) {
        if let Some(bus) = self.mmio.upgrade() {
            for t in ranges {
                bus.remove(t.addr);
            }
        }
    }

    /// Applies the BAR moves `d` (the locked `dev`) reported: a move inside
    /// the PCI windows takes the device's memory slots and traps along; any
    /// other move is refused and the BAR stays where it was. A move is all
    /// or nothing: when KVM refuses a slot or the bus a trap, the BAR keeps
    /// its old mapping and traps, and the refusal is logged.
    pub fn apply(&self, dev: &SharedPciDevice, d: &mut dyn PciDevice, moves: &[BarMove]) {
        for mv in moves {
            if !self.windows.contains(mv.to, mv.size) {
                log::error!(
                    "{}: guest moved BAR{} to {:#x}, outside the PCI windows; it stays at {:#x}",
                    d.name(),
                    mv.bar,
                    mv.to,
                    mv.from
                );
                continue;
            }
            match self.move_one(dev, d, mv) {
                Ok(()) => log::info!(
                    "{}: BAR{} moved from {:#x} to {:#x}",
                    d.name(),
                    mv.bar,
                    mv.from,
                    mv.to
                ),
                Err(why) => log::error!(
                    "{}: moving BAR{} to {:#x} failed ({why}); it stays at {:#x}",
                    d.name(),
                    mv.bar,
                    mv.to,
                    mv.from
                ),
            }
        }
    }

    /// Moves one BAR's slots and traps, or leaves both as they were.
    fn move_one(
        &self,
        dev: &SharedPciDevice,
        d: &mut dyn PciDevice,
        mv: &BarMove,
    ) -> Result<(), String> {
        let of_bar = |d: &dyn PciDevice| -> Vec<TrapRange> {
            let mut r = d.trapped_ranges();
            r.retain(|t| t.bar == mv.bar);
            r
        };
        let name = d.name().to_string();
        let name = || name.clone();
        let old = of_bar(d);
        self.remove_traps(&old);
        let restore_traps = |why: String| {
            if let Err(e) = self.insert_traps(&name, dev, &old) {
                log::error!("{}: BAR{} traps could not be restored: {e}", name(), mv.bar);
            }
            why
        };
        d.move_bar(mv, &*self.mapper)
            .map_err(|e| restore_traps(crate::error::error_chain(&e)))?;
        let new = of_bar(d);
        if let Err(e) = self.insert_traps(&name, dev, &new) {
            let back = BarMove {
                from: mv.to,
                to: mv.from,
                ..*mv
            };
            if let Err(b) = d.move_bar(&back, &*self.mapper) {
                log::error!(
                    "{}: BAR{} slots could not go back: {}",
                    name(),
                    mv.bar,
                    crate::error::error_chain(&b)
                );
            }
            return Err(restore_traps(e.to_string()));
        }
        Ok(())
    }
}
