//! BAR bookkeeping: guest-address allocation from the PCI windows and the
//! shadow BAR registers the guest sees (with the sizing protocol).

use crate::arch::x86_64::layout::PciWindows;

/// Type bits of a memory BAR: 64-bit.
const BAR_MEM_64: u32 = 0b10 << 1;
/// Prefetchable bit of a memory BAR.
const BAR_PREFETCH: u32 = 1 << 3;
/// Low bits of a memory BAR that are flags, not address.
const BAR_MEM_FLAGS_MASK: u32 = 0xf;
/// BARs up to this size go to the 32-bit window when it has room: 32-bit
/// guests and drivers that cannot use 64-bit addresses still reach them.
const MAX_BAR_IN_MMIO32: u64 = 256 << 20;

/// One memory BAR as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR register index (0..6); a 64-bit BAR also uses `index + 1`.
    pub index: usize,
    /// Size in bytes (a power of two, >= 16).
    pub size: u64,
    /// 64-bit BAR.
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
    /// Guest-physical address assigned by the VMM.
    pub addr: u64,
}

impl BarInfo {
    fn flags(&self) -> u32 {
        (if self.is_64 { BAR_MEM_64 } else { 0 })
            | (if self.prefetchable { BAR_PREFETCH } else { 0 })
    }

    /// True if `addr` falls inside this BAR.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
}

/// Decodes the type bits of a memory BAR register value: (is_64, prefetchable),
/// or `None` for an I/O BAR.
pub fn decode_bar_type(reg: u32) -> Option<(bool, bool)> {
    if reg & 1 != 0 {
        return None;
    }
    Some((reg & (0b11 << 1) == BAR_MEM_64, reg & BAR_PREFETCH != 0))
}

/// The six BAR registers as the guest sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarShadow {
    regs: [u32; 6],
    masks: [u32; 6],
    flags: [u32; 6],
}

impl BarShadow {
    /// Shadow registers for `bars`; unlisted registers read as 0 and ignore writes.
    pub fn new(bars: &[BarInfo]) -> Self {
        let mut s = BarShadow::default();
        for b in bars {
            let size_mask = !(b.size - 1);
            s.masks[b.index] = (size_mask as u32) & !BAR_MEM_FLAGS_MASK;
            s.flags[b.index] = b.flags();
            s.regs[b.index] = (b.addr as u32 & !BAR_MEM_FLAGS_MASK) | b.flags();
            if b.is_64 && b.index + 1 < 6 {
                s.masks[b.index + 1] = (size_mask >> 32) as u32;
                s.regs[b.index + 1] = (b.addr >> 32) as u32;
            }
        }
        s
    }

    /// Current value of BAR register `i`.
    pub fn read(&self, i: usize) -> u32 {
        self.regs.get(i).copied().unwrap_or(0)
    }

    /// Guest write of `value` to BAR register `i` (sizing writes all-ones).
    pub fn write(&mut self, i: usize, value: u32) {
        if i < 6 {
            self.regs[i] = (value & self.masks[i]) | self.flags[i];
        }
    }

    /// The address the guest currently programs into `bar`.
    pub fn address(&self, bar: &BarInfo) -> u64 {
        let lo = u64::from(self.regs[bar.index] & !BAR_MEM_FLAGS_MASK);
        let hi = if bar.is_64 && bar.index + 1 < 6 {
            u64::from(self.regs[bar.index + 1])
        } else {
            0
        };
        (hi << 32) | lo
    }
}

/// A bump allocator over one guest-physical window.
#[derive(Clone, Debug)]
pub struct MmioAllocator {
    next: u64,
    end: u64,
}

impl MmioAllocator {
    /// An allocator for `[start, start + size)`.
    pub fn new(start: u64, size: u64) -> Self {
        MmioAllocator {
            next: start,
            end: start.saturating_add(size),
        }
    }

    /// Allocates `size` bytes aligned to `max(size, 4 KiB)` (BARs are naturally aligned).
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        let align = size.max(4096);
        let addr = self.next.checked_next_multiple_of(align)?;
        let end = addr.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(addr)
    }
}

/// A memory BAR a device asks for, before it has a guest address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRequest {
    /// BAR register index (0..6).
    pub index: usize,
    /// Size in bytes (a power of two, >= 16).
    pub size: u64,
    /// 64-bit BAR.
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// No room for a BAR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no guest MMIO space left for BAR{index} ({size:#x} bytes)")]
pub struct NoBarSpace {
    /// BAR register index.
    pub index: usize,
    /// Size asked for.
    pub size: u64,
}

/// Places BARs in the PCI windows: small BARs in the 32-bit window while it
/// has room, large 64-bit BARs above RAM.
#[derive(Clone, Debug)]
pub struct BarAllocator {
    mmio32: MmioAllocator,
    mmio64: MmioAllocator,
}

impl BarAllocator {
    /// An allocator over `windows`.
    pub fn new(windows: PciWindows) -> Self {
        BarAllocator {
            mmio32: MmioAllocator::new(windows.mmio32.start, windows.mmio32.size),
            mmio64: MmioAllocator::new(windows.mmio64.start, windows.mmio64.size),
        }
    }

    /// Gives `req` a guest address.
    pub fn place(&mut self, req: &BarRequest) -> Result<BarInfo, NoBarSpace> {
        let size = req.size;
        let addr = if size <= MAX_BAR_IN_MMIO32 {
            self.mmio32
                .allocate(size)
                .or_else(|| req.is_64.then(|| self.mmio64.allocate(size)).flatten())
        } else if req.is_64 {
            self.mmio64.allocate(size)
        } else {
            self.mmio32.allocate(size)
        };
        let addr = addr.ok_or(NoBarSpace {
            index: req.index,
            size,
        })?;
        Ok(BarInfo {
            index: req.index,
            size,
            is_64: req.is_64,
            prefetchable: req.prefetchable,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar64() -> BarInfo {
        BarInfo {
            index: 0,
            size: 0x4000,
            is_64: true,
            prefetchable: true,
            addr: 0x1_c000_4000,
        }
    }

    #[test]
    fn sizing_protocol_reports_size_and_restores() {
        let b = bar64();
        let mut s = BarShadow::new(&[b]);
        assert_eq!(s.read(0), 0xc000_4000 | 0b1100);
        assert_eq!(s.read(1), 1);
        s.write(0, 0xffff_ffff);
        s.write(1, 0xffff_ffff);
        assert_eq!(s.read(0), 0xffff_c000 | 0b1100);
        assert_eq!(s.read(1), 0xffff_ffff);
        let size = !((u64::from(s.read(1)) << 32) | u64::from(s.read(0) & !0xf)) + 1;
        assert_eq!(size, 0x4000);
        s.write(0, 0xc000_4000);
        s.write(1, 1);
        assert_eq!(s.address(&b), 0x1_c000_4000);
        // Unused registers stay zero.
        s.write(4, 0xffff_ffff);
        assert_eq!(s.read(4), 0);
        assert_eq!(s.read(9), 0);
    }

    #[test]
    fn bar32_sizing() {
        let b = BarInfo {
            index: 2,
            size: 0x1000,
            is_64: false,
            prefetchable: false,
            addr: 0xc000_0000,
        };
        let mut s = BarShadow::new(&[b]);
        s.write(2, 0xffff_ffff);
        assert_eq!(s.read(2), 0xffff_f000);
        assert_eq!(s.read(3), 0);
    }

    #[test]
    fn decodes_bar_types() {
        assert_eq!(decode_bar_type(0xc), Some((true, true)));
        assert_eq!(decode_bar_type(0x0), Some((false, false)));
        assert_eq!(decode_bar_type(0x1), None);
    }

    #[test]
    fn allocator_aligns_and_bounds() {
        let mut a = MmioAllocator::new(0xc000_0000, 0x10_0000);
        assert_eq!(a.allocate(0x4000), Some(0xc000_0000));
        assert_eq!(a.allocate(0x10), Some(0xc000_4000));
        assert_eq!(a.allocate(0x8000), Some(0xc000_8000));
        assert_eq!(a.allocate(0x3000), None, "not a power of two");
        assert_eq!(a.allocate(0x10_0000), None, "does not fit");
        assert!(bar64().contains(0x1_c000_7fff) && !bar64().contains(0x1_c000_8000));
    }

    #[test]
    fn small_bars_go_low_large_64bit_bars_go_high() {
        use crate::arch::x86_64::layout::{PciWindows, Window};
        let windows = PciWindows {
            mmio32: Window::new(0xc000_0000, 0x80_0000),
            mmio64: Window::new(1 << 36, 1 << 34),
        };
        let mut a = BarAllocator::new(windows);
        let req = |index, size, is_64| BarRequest {
            index,
            size,
            is_64,
            prefetchable: false,
        };
        let b = a.place(&req(0, 0x4000, true)).unwrap();
        assert_eq!((b.addr, b.size, b.is_64), (0xc000_0000, 0x4000, true));
        let big = a.place(&req(2, 1 << 30, true)).unwrap();
        assert_eq!(big.addr, 1 << 36, "over 256 MiB: 64-bit window");
        // The 32-bit window is full: a 64-bit BAR spills high, a 32-bit one fails.
        let spill = a.place(&req(3, 0x80_0000, true)).unwrap();
        assert!(spill.addr >= 1 << 36);
        assert_eq!(
            a.place(&req(4, 0x80_0000, false)),
            Err(NoBarSpace {
                index: 4,
                size: 0x80_0000
            })
        );
    }
}
