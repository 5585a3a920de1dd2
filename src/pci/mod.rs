//! PCI: the configuration-space model, the host bridge and config port,
//! BAR bookkeeping and MSI-X table emulation.

pub mod bar;
pub mod msi;
pub mod msix;
pub mod root;

/// Offsets in the type-0 configuration header (PCI Local Bus spec 3.0, 6.1).
pub mod regs {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: usize = 0x00;
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
    /// Command bit: bus master.
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

/// A device on the emulated PCI bus, addressed by 32-bit configuration registers.
pub trait PciDevice: Send {
    /// Reads configuration register `reg` (dword index 0..1024; 64 and up is
    /// extended space, reachable through ECAM only).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within register `reg`.
    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]);
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

/// Byte mask of the bytes a write touches within a register.
pub fn write_mask(offset: usize, len: usize) -> u32 {
    let mut m = 0u32;
    for i in offset..(offset + len).min(4) {
        m |= 0xff << (i * 8);
    }
    m
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
        assert_eq!(write_mask(2, 2), 0xffff_0000);
        assert_eq!(write_mask(0, 4), 0xffff_ffff);
    }
}
