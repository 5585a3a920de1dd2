//! The PCI host bridge (00:00.0) and the two ways to reach configuration
//! space: mechanism #1 on ports 0xcf8/0xcfc (256 bytes per function) and
//! ECAM (4 KiB per function, memory-mapped). Both forward to the device in
//! the addressed slot, and the BAR moves a write reports are applied here,
//! by the owner of the [`BarSpace`]. Only bus 0, function 0 of each slot exists.

use std::sync::{Arc, Mutex};

use super::bar_space::BarSpace;
use super::{merge_write, read_bytes, ConfigWriteResult, PciDevice, SharedPciDevice};
use crate::devices::bus::{BusDevice, BusError};
use crate::sync::lock;

/// Red Hat's vendor ID and its generic "PCIe host bridge" device ID: a
/// virtual ID with no driver quirks attached.
const HOST_BRIDGE_VENDOR: u32 = 0x1b36;
const HOST_BRIDGE_DEVICE: u32 = 0x0008;
const CLASS_BRIDGE_HOST: u32 = 0x0600_0000;
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Number of device slots on a bus.
pub const SLOTS: usize = 32;

/// Errors adding PCI devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// All slots are taken.
    #[error("no free PCI slot")]
    NoSlot,
    /// The device's trapped BAR ranges could not be registered.
    #[error("cannot trap the device's BAR ranges")]
    Traps(#[source] BusError),
}

/// The host bridge: read-only identification, writable command register.
pub struct HostBridge {
    command: u32,
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "host bridge"
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        match reg {
            0 => (HOST_BRIDGE_DEVICE << 16) | HOST_BRIDGE_VENDOR,
            1 => self.command,
            2 => CLASS_BRIDGE_HOST,
            _ => 0,
        }
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> ConfigWriteResult {
        if reg == 1 && offset < 2 {
            self.command = merge_write(self.command, offset, data) & 0xffff;
        }
        ConfigWriteResult::default()
    }
}

/// Bus 0, its configuration ports and its BAR space.
pub struct PciRoot {
    config_address: u32,
    slots: Vec<Option<SharedPciDevice>>,
    space: BarSpace,
}

impl PciRoot {
    /// A bus with the host bridge in slot 0, placing BARs in `space`.
    pub fn new(space: BarSpace) -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge { command: 0 })));
        PciRoot {
            config_address: 0,
            slots,
            space,
        }
    }

    /// The BAR space, for devices that map BAR areas when they are built.
    pub fn space(&self) -> &BarSpace {
        &self.space
    }

    /// Puts `dev` in the first free slot and registers its trapped BAR
    /// ranges; returns the slot number.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::NoSlot)?;
        self.space.attach(&dev).map_err(PciError::Traps)?;
        self.slots[slot] = Some(dev);
        Ok(slot as u8)
    }

    fn slot_device(&self, slot: usize, function: u32) -> Option<&SharedPciDevice> {
        if function != 0 {
            return None;
        }
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The device addressed by CONFIG_ADDRESS and the register index.
    fn target(&self) -> Option<(&SharedPciDevice, usize)> {
        let a = self.config_address;
        if a & CONFIG_ADDRESS_ENABLE == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let slot = ((a >> 11) & 0x1f) as usize;
        let reg = ((a >> 2) & 0x3f) as usize;
        self.slot_device(slot, (a >> 8) & 0x7).map(|d| (d, reg))
    }

    fn read_reg(dev: Option<&SharedPciDevice>, reg: usize, byte: usize, data: &mut [u8]) {
        let value = match dev {
            Some(d) if byte + data.len() <= 4 => lock(d).read_config(reg),
            _ => 0xffff_ffff,
        };
        read_bytes(&value.to_le_bytes(), byte, data);
    }

    fn write_reg(&self, dev: Option<&SharedPciDevice>, reg: usize, byte: usize, data: &[u8]) {
        let Some(dev) = dev else { return };
        if byte + data.len() > 4 {
            return;
        }
        let mut d = lock(dev);
        let result = d.write_config(reg, byte, data);
        if !result.bar_moves.is_empty() {
            self.space.apply(dev, &mut *d, &result.bar_moves);
        }
    }

    /// ECAM read at `offset` from the start of the bus-0 window.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        let (slot, function, reg, byte) = decode_ecam(offset);
        Self::read_reg(self.slot_device(slot, function), reg, byte, data);
    }

    /// ECAM write at `offset` from the start of the bus-0 window.
    pub fn ecam_write(&self, offset: u64, data: &[u8]) {
        let (slot, function, reg, byte) = decode_ecam(offset);
        self.write_reg(self.slot_device(slot, function), reg, byte, data);
    }
}

/// Splits an ECAM offset into (slot, function, dword register, byte in register).
fn decode_ecam(offset: u64) -> (usize, u32, usize, usize) {
    let slot = ((offset >> 15) & 0x1f) as usize;
    let function = ((offset >> 12) & 0x7) as u32;
    let reg = ((offset & 0xfff) >> 2) as usize;
    (slot, function, reg, (offset & 3) as usize)
}

/// The ECAM window as a bus device over the shared root.
pub struct PciEcam(pub Arc<Mutex<PciRoot>>);

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).ecam_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).ecam_write(offset, data);
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => read_bytes(&self.config_address.to_le_bytes(), offset as usize, data),
            4..=7 => {
                let target = self.target();
                let (dev, reg) = (target.map(|t| t.0), target.map_or(0, |t| t.1));
                Self::read_reg(dev, reg, offset as usize - 4, data);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0..=3 => self.config_address = merge_write(self.config_address, offset as usize, data),
            4..=7 => {
                if let Some((dev, reg)) = self.target() {
                    self.write_reg(Some(dev), reg, offset as usize - 4, data);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_root() -> PciRoot {
        let space = crate::testing::bar_space(&Arc::new(crate::devices::bus::Bus::default()));
        PciRoot::new(space)
    }

    fn addr(slot: u32, reg: u32) -> [u8; 4] {
        (CONFIG_ADDRESS_ENABLE | (slot << 11) | (reg << 2)).to_le_bytes()
    }

    fn read32(root: &mut PciRoot, slot: u32, reg: u32) -> u32 {
        root.write(0, &addr(slot, reg));
        let mut d = [0u8; 4];
        root.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn host_bridge_is_visible_and_empty_slots_float() {
        let mut root = test_root();
        assert_eq!(read32(&mut root, 0, 0), 0x0008_1b36);
        assert_eq!(read32(&mut root, 0, 2) >> 16, 0x0600);
        assert_eq!(read32(&mut root, 5, 0), 0xffff_ffff);
        // Disabled CONFIG_ADDRESS reads float.
        root.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        root.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn sub_dword_access_and_address_readback() {
        let mut root = test_root();
        root.write(0, &addr(0, 0));
        let mut w = [0u8; 2];
        root.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        let mut a = [0u8; 4];
        root.read(0, &mut a);
        assert_eq!(a, addr(0, 0));
        // Command register write through 0xcfc, then read back.
        root.write(0, &addr(0, 1));
        root.write(4, &[0x06, 0x00]);
        assert_eq!(read32(&mut root, 0, 1), 0x6);
    }

    #[test]
    fn ecam_reaches_the_same_devices_with_4k_space() {
        let mut root = test_root();
        let dev: SharedPciDevice = Arc::new(Mutex::new(HostBridge { command: 0 }));
        root.add_device(dev).unwrap();
        let mut d = [0u8; 4];
        root.ecam_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
        // Slot 1, register 0x04 (command), written and read back through ECAM.
        root.ecam_write((1 << 15) | 0x4, &[0x2, 0x0]);
        let mut w = [0u8; 2];
        root.ecam_read((1 << 15) | 0x4, &mut w);
        assert_eq!(u16::from_le_bytes(w), 2);
        // Extended space of the host bridge ends the capability list (reads 0).
        root.ecam_read(0x100, &mut d);
        assert_eq!(d, [0; 4]);
        // Empty slot, non-zero function, straddling access: all ones.
        root.ecam_read(5 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.ecam_read((1 << 15) | (1 << 12), &mut d);
        assert_eq!(d, [0xff; 4]);
        root.ecam_read(3, &mut w);
        assert_eq!(w, [0xff; 2]);
        // The shared-root bus device forwards the same way.
        let shared = Arc::new(Mutex::new(root));
        let mut ecam = PciEcam(shared);
        ecam.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0008_1b36);
    }

    #[test]
    fn devices_fill_free_slots() {
        let mut root = test_root();
        let dev: SharedPciDevice = Arc::new(Mutex::new(HostBridge { command: 0 }));
        assert_eq!(root.add_device(dev.clone()), Ok(1));
        assert_eq!(root.add_device(dev.clone()), Ok(2));
        for _ in 3..SLOTS {
            root.add_device(dev.clone()).unwrap();
        }
        assert_eq!(root.add_device(dev), Err(PciError::NoSlot));
        // Functions other than 0 do not exist.
        root.write(
            0,
            &(CONFIG_ADDRESS_ENABLE | (1 << 11) | (1 << 8)).to_le_bytes(),
        );
        let mut d = [0u8; 4];
        root.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
    }
}
