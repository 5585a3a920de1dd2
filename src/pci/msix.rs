//! MSI-X emulation: the capability's Message Control bits and the vector
//! table the guest programs. Which vectors are live is derived here; the
//! device model turns that into routes.

use crate::interrupts::MsiMessage;

/// Size of one table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message Control: MSI-X enable.
pub const CTL_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
pub const CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Message Control: table size minus one.
const CTL_TABLE_SIZE_MASK: u16 = 0x7ff;
/// Vector Control: per-vector mask.
const VECTOR_MASKED: u32 = 1;
/// Table/PBA offset registers: BIR in the low 3 bits.
const BIR_MASK: u32 = 0x7;

/// Location of the MSI-X structures, parsed from the capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset of the capability in configuration space.
    pub cap_offset: usize,
    /// Number of vectors.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: usize,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
}

impl MsixCap {
    /// Parses the capability registers: Message Control, Table and PBA offset/BIR.
    pub fn parse(cap_offset: usize, msg_ctl: u16, table: u32, pba: u32) -> Self {
        MsixCap {
            cap_offset,
            table_size: (msg_ctl & CTL_TABLE_SIZE_MASK) + 1,
            table_bar: (table & BIR_MASK) as usize,
            table_offset: u64::from(table & !BIR_MASK),
            pba_bar: (pba & BIR_MASK) as usize,
            pba_offset: u64::from(pba & !BIR_MASK),
        }
    }

    /// Table length in bytes.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * ENTRY_SIZE
    }

    /// PBA length in bytes (one bit per vector, in qwords).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// One table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address low.
    pub addr_lo: u32,
    /// Message address high.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control.
    pub ctrl: u32,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        MsixEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_MASKED,
        }
    }
}

impl MsixEntry {
    /// True if the per-vector mask is set.
    pub fn masked(&self) -> bool {
        self.ctrl & VECTOR_MASKED != 0
    }

    /// The message this entry sends.
    pub fn message(&self) -> MsiMessage {
        MsiMessage {
            addr_lo: self.addr_lo,
            addr_hi: self.addr_hi,
            data: self.data,
        }
    }
}

/// The guest-visible MSI-X state of one function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsixState {
    /// The vector table.
    pub entries: Vec<MsixEntry>,
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask.
    pub function_masked: bool,
}

impl MsixState {
    /// Reset state with `n` vectors.
    pub fn new(n: u16) -> Self {
        MsixState {
            entries: vec![MsixEntry::default(); usize::from(n)],
            enabled: false,
            function_masked: false,
        }
    }

    /// The control bits to merge into Message Control on reads.
    pub fn control_bits(&self) -> u16 {
        (if self.enabled { CTL_ENABLE } else { 0 })
            | (if self.function_masked {
                CTL_FUNCTION_MASK
            } else {
                0
            })
    }

    /// Applies a Message Control write; returns true if enable or mask changed.
    pub fn write_control(&mut self, ctl: u16) -> bool {
        let (en, fm) = (ctl & CTL_ENABLE != 0, ctl & CTL_FUNCTION_MASK != 0);
        let changed = en != self.enabled || fm != self.function_masked;
        self.enabled = en;
        self.function_masked = fm;
        changed
    }

    /// True if vector `i` should deliver interrupts.
    pub fn vector_live(&self, i: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(i).is_some_and(|e| !e.masked())
    }

    fn field(&mut self, offset: u64) -> Option<&mut u32> {
        let e = self.entries.get_mut((offset / ENTRY_SIZE) as usize)?;
        Some(match offset % ENTRY_SIZE {
            0 => &mut e.addr_lo,
            4 => &mut e.addr_hi,
            8 => &mut e.data,
            12 => &mut e.ctrl,
            _ => return None,
        })
    }

    /// Reads the table at `offset` (dword or qword accesses).
    pub fn read_table(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut off = offset;
        for chunk in data.chunks_mut(4) {
            if let Some(v) = self.field(off) {
                let bytes = v.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            off += 4;
        }
    }

    /// Writes the table at `offset` (an aligned dword, or a qword that may
    /// straddle two entries); returns the vectors whose entry changed, so
    /// that each of them is re-routed. Parts past the table are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<usize> {
        if offset % 4 != 0 || (data.len() != 4 && data.len() != 8) {
            log::debug!(
                "msix: ignored {}-byte table write at {offset:#x}",
                data.len()
            );
            return Vec::new();
        }
        let mut touched: Vec<usize> = Vec::new();
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let off = offset + 4 * i as u64;
            let mut dword = [0u8; 4];
            dword.copy_from_slice(chunk);
            if let Some(field) = self.field(off) {
                *field = u32::from_le_bytes(dword);
                let v = (off / ENTRY_SIZE) as usize;
                if !touched.contains(&v) {
                    touched.push(v);
                }
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capability() {
        let c = MsixCap::parse(0x70, 0x0002, 0x0000_0003, 0x0000_2003);
        assert_eq!(c.table_size, 3);
        assert_eq!((c.table_bar, c.table_offset), (3, 0));
        assert_eq!((c.pba_bar, c.pba_offset), (3, 0x2000));
        assert_eq!(c.table_len(), 48);
        assert_eq!(c.pba_len(), 8);
        assert_eq!(MsixCap::parse(0, 0x7ff, 0, 0).pba_len(), 256);
    }

    #[test]
    fn vectors_go_live_only_when_enabled_unmasked() {
        let mut s = MsixState::new(2);
        assert!(!s.vector_live(0));
        assert_eq!(s.write_table(0, &0xfee0_0000u32.to_le_bytes()), [0]);
        s.write_table(8, &0x4041u32.to_le_bytes());
        s.write_table(12, &0u32.to_le_bytes());
        assert!(!s.vector_live(0), "MSI-X still disabled");
        assert!(s.write_control(CTL_ENABLE | CTL_FUNCTION_MASK));
        assert!(!s.vector_live(0), "function masked");
        assert!(s.write_control(CTL_ENABLE));
        assert!(!s.write_control(CTL_ENABLE), "no change");
        assert!(s.vector_live(0));
        assert!(!s.vector_live(1), "vector 1 is still masked from reset");
        assert!(!s.vector_live(7), "out of range");
        assert_eq!(
            s.entries[0].message(),
            MsiMessage {
                addr_lo: 0xfee0_0000,
                addr_hi: 0,
                data: 0x4041
            }
        );
        assert_eq!(s.control_bits(), CTL_ENABLE);
    }

    #[test]
    fn qword_access_and_readback() {
        let mut s = MsixState::new(2);
        let v: u64 = 0x0000_0001_fee0_1000;
        assert_eq!(s.write_table(16, &v.to_le_bytes()), [1]);
        assert_eq!(
            (s.entries[1].addr_lo, s.entries[1].addr_hi),
            (0xfee0_1000, 1)
        );
        let mut d = [0u8; 8];
        s.read_table(16, &mut d);
        assert_eq!(u64::from_le_bytes(d), v);
        let mut c = [0u8; 4];
        s.read_table(12, &mut c);
        assert_eq!(u32::from_le_bytes(c), VECTOR_MASKED);
        // Out of range and unaligned accesses are ignored, reads give zero.
        assert!(s.write_table(64, &[0; 4]).is_empty());
        assert!(s.write_table(2, &[0; 4]).is_empty());
        assert!(s.write_table(0, &[0; 2]).is_empty());
        s.read_table(64, &mut c);
        assert_eq!(c, [0; 4]);
    }

    #[test]
    fn a_qword_straddling_two_entries_touches_both() {
        let mut s = MsixState::new(2);
        // Vector 0's control (unmask) and vector 1's address low, in one write.
        let v: u64 = 0xfee0_3000_0000_0000;
        assert_eq!(s.write_table(12, &v.to_le_bytes()), [0, 1]);
        assert!(!s.entries[0].masked());
        assert_eq!(s.entries[1].addr_lo, 0xfee0_3000);
        // The last entry's control plus a dword past the table: the part
        // inside still counts.
        assert_eq!(s.write_table(28, &0u64.to_le_bytes()), [1]);
        assert!(!s.entries[1].masked());
    }
}
