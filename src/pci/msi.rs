//! MSI emulation: a shadow of the MSI capability (address, data, enable,
//! multiple-message enable, per-vector mask) that the guest programs. The
//! device model turns the live vectors into routes.

use crate::interrupts::MsiMessage;

/// Message Control: MSI enable.
const CTL_ENABLE: u16 = 1;
/// Message Control: Multiple Message Capable (log2), bits 3:1.
const CTL_MMC_SHIFT: u16 = 1;
/// Message Control: Multiple Message Enable (log2), bits 6:4.
const CTL_MME_SHIFT: u16 = 4;
const CTL_MM_MASK: u16 = 0x7;
/// Message Control: 64-bit address capable.
const CTL_64BIT: u16 = 1 << 7;
/// Message Control: per-vector masking capable.
const CTL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Most vectors MSI can give one function.
const MAX_LOG2_VECTORS: u16 = 5;

/// Layout of one MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCap {
    /// Offset of the capability in configuration space.
    pub cap_offset: usize,
    /// 64-bit message address.
    pub is_64: bool,
    /// Per-vector mask and pending registers present.
    pub per_vector_mask: bool,
    /// log2 of the vectors the function can request.
    pub mmc: u16,
}

impl MsiCap {
    /// Parses Message Control.
    pub fn parse(cap_offset: usize, ctl: u16) -> Self {
        MsiCap {
            cap_offset,
            is_64: ctl & CTL_64BIT != 0,
            per_vector_mask: ctl & CTL_PER_VECTOR_MASK != 0,
            mmc: ((ctl >> CTL_MMC_SHIFT) & CTL_MM_MASK).min(MAX_LOG2_VECTORS),
        }
    }

    /// Most vectors the function can use.
    pub fn max_vectors(&self) -> u32 {
        1 << self.mmc
    }

    fn data_offset(&self) -> usize {
        if self.is_64 {
            0xc
        } else {
            0x8
        }
    }

    fn mask_offset(&self) -> Option<usize> {
        self.per_vector_mask.then(|| self.data_offset() + 4)
    }

    /// Length of the capability in bytes.
    pub fn len(&self) -> usize {
        match self.mask_offset() {
            Some(m) => m + 8,
            None => self.data_offset() + 4,
        }
    }
}

/// Guest-visible state of the MSI capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsiState {
    cap: MsiCap,
    regs: [u8; 24],
}

impl MsiState {
    /// The reset state: `header` is the capability's first dword (ID, next, control).
    pub fn new(cap: MsiCap, header: u32) -> Self {
        let mut regs = [0u8; 24];
        // Keep ID, next pointer and the read-only control bits; clear enable and MME.
        let ctl = (header >> 16) as u16 & !(CTL_ENABLE | (CTL_MM_MASK << CTL_MME_SHIFT));
        regs[0..2].copy_from_slice(&(header as u16).to_le_bytes());
        regs[2..4].copy_from_slice(&ctl.to_le_bytes());
        MsiState { cap, regs }
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.regs[off], self.regs[off + 1]])
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.regs[off],
            self.regs[off + 1],
            self.regs[off + 2],
            self.regs[off + 3],
        ])
    }

    fn control(&self) -> u16 {
        self.u16_at(2)
    }

    /// Clears MSI Enable (at shutdown).
    pub fn disable(&mut self) {
        let ctl = self.control() & !CTL_ENABLE;
        self.regs[2..4].copy_from_slice(&ctl.to_le_bytes());
    }

    /// MSI Enable.
    pub fn enabled(&self) -> bool {
        self.control() & CTL_ENABLE != 0
    }

    /// Vectors enabled by the guest (2^MME).
    pub fn vectors(&self) -> u32 {
        1 << ((self.control() >> CTL_MME_SHIFT) & CTL_MM_MASK)
    }

    /// Reads `data.len()` bytes at `offset` within the capability.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.regs.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Whether byte `offset` of the capability can be written, and its mask.
    fn writable(&self, offset: usize) -> u8 {
        let data = self.cap.data_offset();
        match offset {
            // Control: enable (bit 0) and MME (bits 6:4).
            2 => 0x71,
            4 => 0xfc,
            5..=7 => 0xff,
            8..=11 if self.cap.is_64 => 0xff,
            o if o == data || o == data + 1 => 0xff,
            o if self
                .cap
                .mask_offset()
                .is_some_and(|m| (m..m + 4).contains(&o)) =>
            {
                0xff
            }
            _ => 0,
        }
    }

    /// Applies a guest write; returns true if anything changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let before = self.regs;
        for (i, b) in data.iter().enumerate() {
            let o = offset + i;
            if o >= self.cap.len() {
                break;
            }
            let m = self.writable(o);
            self.regs[o] = (self.regs[o] & !m) | (b & m);
        }
        // MME cannot exceed MMC.
        let ctl = self.control();
        let mme = ((ctl >> CTL_MME_SHIFT) & CTL_MM_MASK).min(self.cap.mmc);
        let ctl = (ctl & !(CTL_MM_MASK << CTL_MME_SHIFT)) | (mme << CTL_MME_SHIFT);
        self.regs[2..4].copy_from_slice(&ctl.to_le_bytes());
        self.regs != before
    }

    /// True if vector `i` should deliver interrupts.
    pub fn vector_live(&self, i: u32) -> bool {
        let masked = self
            .cap
            .mask_offset()
            .is_some_and(|m| self.u32_at(m) & (1 << i) != 0);
        self.enabled() && i < self.vectors() && !masked
    }

    /// The message vector `i` sends: the data's low bits carry the vector number.
    pub fn message(&self, i: u32) -> MsiMessage {
        let data = u32::from(self.u16_at(self.cap.data_offset()));
        let n = self.vectors();
        MsiMessage {
            addr_lo: self.u32_at(4),
            addr_hi: if self.cap.is_64 { self.u32_at(8) } else { 0 },
            data: (data & !(n - 1)) | (i & (n - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ctl: u16) -> u32 {
        (u32::from(ctl) << 16) | 0x0005
    }

    #[test]
    fn parses_layouts() {
        let c = MsiCap::parse(0x50, CTL_64BIT | CTL_PER_VECTOR_MASK | (3 << 1));
        assert!(c.is_64 && c.per_vector_mask);
        assert_eq!(c.max_vectors(), 8);
        assert_eq!(c.len(), 0x18);
        assert_eq!(MsiCap::parse(0, 0).len(), 0xc);
        assert_eq!(MsiCap::parse(0, CTL_64BIT).len(), 0x10);
        assert_eq!(MsiCap::parse(0, 7 << 1).mmc, MAX_LOG2_VECTORS);
    }

    #[test]
    fn programs_single_vector_64bit() {
        let cap = MsiCap::parse(0x50, CTL_64BIT);
        let mut s = MsiState::new(cap, header(CTL_64BIT | CTL_ENABLE));
        assert!(!s.enabled(), "reset state is disabled");
        s.write(4, &0xfee0_1003u32.to_le_bytes());
        s.write(8, &0x1u32.to_le_bytes());
        s.write(0xc, &0x4061u16.to_le_bytes());
        assert!(!s.vector_live(0));
        assert!(s.write(2, &(CTL_64BIT | CTL_ENABLE | (3 << 4)).to_le_bytes()));
        assert!(s.enabled());
        assert_eq!(s.vectors(), 1, "MME clamped to MMC = 0");
        assert!(s.vector_live(0) && !s.vector_live(1));
        assert_eq!(
            s.message(0),
            MsiMessage {
                addr_lo: 0xfee0_1000,
                addr_hi: 1,
                data: 0x4061
            }
        );
        let mut ctl = [0u8; 2];
        s.read(2, &mut ctl);
        assert_eq!(
            u16::from_le_bytes(ctl),
            CTL_64BIT | CTL_ENABLE,
            "64-bit bit is read-only"
        );
        assert!(
            !s.write(2, &(CTL_64BIT | CTL_ENABLE).to_le_bytes()),
            "no change"
        );
    }

    #[test]
    fn multiple_messages_and_masking() {
        let cap = MsiCap::parse(0x50, CTL_PER_VECTOR_MASK | (2 << 1));
        let mut s = MsiState::new(cap, header(CTL_PER_VECTOR_MASK | (2 << 1)));
        s.write(4, &0xfee0_0000u32.to_le_bytes());
        s.write(8, &0x4060u16.to_le_bytes());
        s.write(2, &(CTL_ENABLE | (2 << 4)).to_le_bytes());
        assert_eq!(s.vectors(), 4);
        assert_eq!(s.message(3).data, 0x4063);
        s.write(0xc, &0b0100u32.to_le_bytes());
        assert!(s.vector_live(1) && !s.vector_live(2) && !s.vector_live(4));
        // Pending bits are read-only.
        s.write(0x10, &0xffu32.to_le_bytes());
        let mut p = [0u8; 4];
        s.read(0x10, &mut p);
        assert_eq!(p, [0; 4]);
    }
}
