//! The guest's PCI bus: the configuration-space model, the host bridge and
//! its config ports, BAR bookkeeping and where BARs live in the guest
//! ([`bar_space`]), and MSI/MSI-X capability emulation.

pub mod bar;
pub mod bar_space;
pub mod msi;
pub mod msix;
pub mod root;

use crate::vm::{GuestMapper, VmError};

/// Offsets in the type-0 configuration header (PCI Local Bus spec 3.0, 6.1).
pub mod regs {
    /// Command register (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status register (16 bits).
    pub const STATUS: usize = 0x06;
    /// Header type (8 bits).
    pub const HEADER_TYPE: usize = 0x0e;
    /// First BAR.
    pub const BAR0: usize = 0x10;
    /// Expansion ROM base address.
    pub const ROM_BAR: usize = 0x30;
    /// Capabilities pointer (8 bits).
    pub const CAP_PTR: usize = 0x34;
    /// Interrupt line (8 bits).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (8 bits).
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// Status bit: capabilities list present.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Header type bit: multi-function device.
    pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
    /// Command bit: memory space decode.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command bit: bus master (the device may DMA and send MSIs).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Capability ID: MSI.
    pub const CAP_ID_MSI: u8 = 0x05;
    /// Capability ID: MSI-X.
    pub const CAP_ID_MSIX: u8 = 0x11;
    /// Size of the conventional configuration space.
    pub const CONFIG_SPACE_SIZE: usize = 256;
    /// Size of the PCI Express (extended) configuration space.
    pub const EXT_CONFIG_SPACE_SIZE: usize = 4096;
}

/// A BAR the guest moved: the device reports it, the owner of the address
/// space ([`bar_space::BarSpace`]) checks and applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR register index (0..6).
    pub bar: usize,
    /// Guest address the BAR is at now.
    pub from: u64,
    /// Guest address the guest programmed.
    pub to: u64,
    /// BAR size in bytes.
    pub size: u64,
}

/// One range of a BAR that traps to its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapRange {
    /// BAR register index (0..6).
    pub bar: usize,
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What a configuration write changed on the bus, for the bus owner to apply.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWriteResult {
    /// BARs the guest moved (with memory decoding on).
    pub bar_moves: Vec<BarMove>,
}

/// A device on the emulated PCI bus, addressed by 32-bit configuration
/// registers. Devices never hold the VM or the bus: BAR changes come back
/// from [`PciDevice::write_config`] as data.
pub trait PciDevice: Send {
    /// A short name for log lines (the host BDF of a passed-through function).
    fn name(&self) -> &str;
    /// Reads configuration register `reg` (dword index 0..1024; 64 and up is
    /// extended space, reachable through ECAM only).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within register `reg`.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> ConfigWriteResult;
    /// Guest read of a trapped BAR range at guest address `addr`.
    fn read_bar(&mut self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    /// Guest write to a trapped BAR range at guest address `addr`.
    fn write_bar(&mut self, _addr: u64, _data: &[u8]) {}
    /// The ranges of the BARs that trap to this device, at their current addresses.
    fn trapped_ranges(&self) -> Vec<TrapRange> {
        Vec::new()
    }
    /// Moves what the device maps straight into the guest (memory slots) for
    /// `mv`, and takes the new address; the caller moves the traps.
    fn move_bar(&mut self, _mv: &BarMove, _mapper: &dyn GuestMapper) -> Result<(), VmError> {
        Ok(())
    }
}

/// Shared handle to a PCI device (the root's slots and the BAR traps hold it).
pub type SharedPciDevice = std::sync::Arc<std::sync::Mutex<dyn PciDevice>>;

/// Copies `bytes[offset..]` into `data`; bytes past the end read as 0xff.
pub fn read_bytes(bytes: &[u8], offset: usize, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(offset + i).copied().unwrap_or(0xff);
    }
}

/// Merges a 1/2/4-byte write at `offset` into a 32-bit register value.
pub fn merge_write(old: u32, offset: usize, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(offset + i) {
            *slot = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_partial_writes() {
        assert_eq!(merge_write(0x1122_3344, 0, &[0xaa]), 0x1122_33aa);
        assert_eq!(merge_write(0x1122_3344, 2, &[0xaa, 0xbb]), 0xbbaa_3344);
        assert_eq!(
            merge_write(0x1122_3344, 0, &0xdead_beefu32.to_le_bytes()),
            0xdead_beef
        );
        assert_eq!(
            merge_write(0, 3, &[1, 2]),
            0x0100_0000,
            "bytes past the register are dropped"
        );
        let mut d = [0u8; 3];
        read_bytes(&[1, 2, 3, 4], 2, &mut d);
        assert_eq!(d, [3, 4, 0xff], "bytes past the end float high");
    }
}
