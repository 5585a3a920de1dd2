//! The guest's view of a passed-through function's configuration space.
//!
//! Reads go to the device (through vfio-pci) and are then patched from a
//! table: `value = (device & !mask) | patch`. What the table hides: the
//! expansion ROM, the interrupt pin (no INTx), the multi-function bit and the
//! extended capabilities the guest must not manage (shown as null
//! capabilities, the chain intact). Emulated outright: the BARs (a shadow
//! with the sizing protocol) and the interrupt line. The MSI capability and
//! MSI-X Message Control are emulated by [`super::vectors`] on top of this.

use super::VfioBackend;
use crate::pci::bar::{BarInfo, BarShadow};
use crate::pci::msi::MsiCap;
use crate::pci::msix::MsixCap;
use crate::pci::{merge_write, regs};

/// Bound on capability-list walking (a malformed list must not loop).
const MAX_CAPS: usize = 48;
/// Extended capabilities the guest must not manage: ARI, SR-IOV, Resizable
/// BAR, VF Resizable BAR.
const HIDDEN_EXT_CAPS: [u16; 4] = [0x0e, 0x10, 0x15, 0x24];
/// Dword index of the first and last BAR registers.
const BAR_REGS: std::ops::RangeInclusive<usize> = (regs::BAR0 / 4)..=(regs::BAR0 / 4 + 5);

pub(super) fn cfg_u8(cfg: &[u8], off: usize) -> u8 {
    cfg.get(off).copied().unwrap_or(0)
}
pub(super) fn cfg_u16(cfg: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([cfg_u8(cfg, off), cfg_u8(cfg, off + 1)])
}
pub(super) fn cfg_u32(cfg: &[u8], off: usize) -> u32 {
    u32::from(cfg_u16(cfg, off)) | (u32::from(cfg_u16(cfg, off + 2)) << 16)
}

/// Interrupt capabilities found in configuration space.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CapScan {
    /// The MSI capability and its first dword, if any.
    pub msi: Option<(MsiCap, u32)>,
    /// The MSI-X capability, if any.
    pub msix: Option<MsixCap>,
}

/// Walks the capability list for MSI and MSI-X.
pub fn scan_capabilities(cfg: &[u8]) -> CapScan {
    let mut scan = CapScan::default();
    if cfg_u16(cfg, regs::STATUS) & regs::STATUS_CAP_LIST == 0 {
        return scan;
    }
    let mut ptr = usize::from(cfg_u8(cfg, regs::CAP_PTR) & !3);
    let mut seen = 0;
    while (0x40..regs::CONFIG_SPACE_SIZE).contains(&ptr) && seen < MAX_CAPS {
        seen += 1;
        match cfg_u8(cfg, ptr) {
            regs::CAP_ID_MSI => {
                let header = cfg_u32(cfg, ptr);
                scan.msi = Some((MsiCap::parse(ptr, (header >> 16) as u16), header));
            }
            regs::CAP_ID_MSIX => {
                scan.msix = Some(MsixCap::parse(
                    ptr,
                    cfg_u16(cfg, ptr + 2),
                    cfg_u32(cfg, ptr + 4),
                    cfg_u32(cfg, ptr + 8),
                ));
            }
            _ => {}
        }
        ptr = usize::from(cfg_u8(cfg, ptr + 1) & !3);
    }
    scan
}

/// Offsets of extended capabilities to hide, walking from 0x100 in `ext`
/// (the whole 4 KiB configuration space).
pub fn scan_extended(ext: &[u8]) -> Vec<usize> {
    let mut hidden = Vec::new();
    let mut seen = Vec::new();
    let mut ptr = regs::CONFIG_SPACE_SIZE;
    while ptr >= regs::CONFIG_SPACE_SIZE && ptr + 4 <= ext.len() && seen.len() < MAX_CAPS {
        if seen.contains(&ptr) {
            break; // a loop
        }
        seen.push(ptr);
        let header = cfg_u32(ext, ptr);
        if header == 0 || header == 0xffff_ffff {
            break;
        }
        if HIDDEN_EXT_CAPS.contains(&(header as u16)) {
            hidden.push(ptr);
        }
        ptr = ((header >> 20) & 0xffc) as usize;
    }
    hidden
}

/// One entry of the override table: the guest reads `(device & !mask) | patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigPatch {
    /// Dword register index.
    pub reg: usize,
    /// Bits the VMM owns.
    pub mask: u32,
    /// Their value.
    pub patch: u32,
}

/// What a configuration write did, for the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigWrite {
    /// Nothing that moves BARs.
    Done,
    /// A BAR register or memory decoding changed: BARs may have moved.
    BarsMayMove,
}

/// The guest-visible configuration space of one function.
pub struct ConfigSpace {
    size: usize,
    patches: Vec<ConfigPatch>,
    shadow: BarShadow,
    /// BAR registers of 32-bit BARs: rewritten in one go, even with decoding on.
    bar32_regs: Vec<usize>,
    int_line: u8,
    memory_enabled: bool,
}

impl ConfigSpace {
    /// The view for a function whose configuration space (as first read) is
    /// `snapshot`, with `bars` placed in the guest.
    pub fn new(snapshot: &[u8], bars: &[BarInfo]) -> Self {
        let mut patches = vec![
            ConfigPatch {
                reg: regs::HEADER_TYPE / 4,
                mask: u32::from(regs::HEADER_TYPE_MULTIFUNCTION) << 16,
                patch: 0,
            },
            ConfigPatch {
                reg: regs::ROM_BAR / 4,
                mask: u32::MAX,
                patch: 0,
            },
            // The pin; the line (bits 0..8) is emulated.
            ConfigPatch {
                reg: regs::INTERRUPT_PIN / 4,
                mask: 0xff00,
                patch: 0,
            },
        ];
        // A hidden extended capability keeps its next pointer only.
        patches.extend(scan_extended(snapshot).into_iter().map(|off| ConfigPatch {
            reg: off / 4,
            mask: 0x000f_ffff,
            patch: 0,
        }));
        ConfigSpace {
            size: snapshot.len(),
            patches,
            shadow: BarShadow::new(bars),
            bar32_regs: bars.iter().filter(|b| !b.is_64).map(|b| b.index).collect(),
            int_line: 0,
            memory_enabled: false,
        }
    }

    /// The override table.
    #[cfg(test)]
    pub fn patches(&self) -> &[ConfigPatch] {
        &self.patches
    }

    /// The BAR registers as the guest programmed them.
    pub fn shadow(&self) -> &BarShadow {
        &self.shadow
    }

    /// Whether the guest turned memory decoding on.
    #[cfg(test)]
    pub fn memory_enabled(&self) -> bool {
        self.memory_enabled
    }

    /// Size of the configuration space (256 or 4096 bytes).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Register `reg` as the guest sees it (before the vector overlays).
    pub fn read(&self, reg: usize, dev: &dyn VfioBackend) -> u32 {
        let off = reg * 4;
        let mut v = if BAR_REGS.contains(&reg) {
            self.shadow.read(reg - regs::BAR0 / 4)
        } else if off < self.size {
            let mut b = [0u8; 4];
            dev.config_read(off as u64, &mut b);
            u32::from_le_bytes(b)
        } else {
            0 // conventional functions have no extended space: end of list
        };
        for p in self.patches.iter().filter(|p| p.reg == reg) {
            v = (v & !p.mask) | p.patch;
        }
        if off == regs::INTERRUPT_LINE {
            v = (v & !0xff) | u32::from(self.int_line);
        }
        v
    }

    /// A guest write (the vector overlays had their turn first).
    pub fn write(
        &mut self,
        reg: usize,
        offset: usize,
        data: &[u8],
        dev: &dyn VfioBackend,
    ) -> ConfigWrite {
        let off = reg * 4;
        if BAR_REGS.contains(&reg) {
            let i = reg - regs::BAR0 / 4;
            self.shadow
                .write(i, merge_write(self.shadow.read(i), offset, data));
            return if self.memory_enabled && self.bar32_regs.contains(&i) {
                ConfigWrite::BarsMayMove
            } else {
                ConfigWrite::Done
            };
        }
        match off {
            regs::ROM_BAR => return ConfigWrite::Done,
            regs::INTERRUPT_LINE => {
                if offset == 0 {
                    self.int_line = data.first().copied().unwrap_or(self.int_line);
                }
                return ConfigWrite::Done;
            }
            _ => {}
        }
        let mut result = ConfigWrite::Done;
        if off == regs::COMMAND && offset == 0 {
            if let Some(c) = data.first() {
                self.memory_enabled = u16::from(*c) & regs::COMMAND_MEMORY != 0;
                if self.memory_enabled {
                    result = ConfigWrite::BarsMayMove;
                }
            }
        }
        let byte = off + offset;
        if byte < self.size {
            dev.config_write(byte as u64, data);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{put, MockVfio};

    fn space(mock: &MockVfio) -> ConfigSpace {
        let mut snap = vec![0u8; 4096];
        mock.config_read(0, &mut snap);
        ConfigSpace::new(&snap, &[])
    }

    #[test]
    fn rom_intx_and_multifunction_are_hidden() {
        let mock = MockVfio::igbvf();
        let mut c = space(&mock);
        assert_eq!(c.read(regs::ROM_BAR / 4, &*mock), 0);
        c.write(regs::ROM_BAR / 4, 0, &[0xff; 4], &*mock);
        assert_eq!(c.read(regs::ROM_BAR / 4, &*mock), 0);
        assert_eq!(
            (c.read(3, &*mock) >> 16) & 0x80,
            0,
            "multi-function bit masked"
        );
        c.write(regs::INTERRUPT_LINE / 4, 0, &[11], &*mock);
        let r = c.read(regs::INTERRUPT_LINE / 4, &*mock);
        assert_eq!(r & 0xff, 11);
        assert_eq!((r >> 8) & 0xff, 0, "no INTx pin");
        assert!(
            mock.log.lock().unwrap().config_writes.is_empty(),
            "ROM and interrupt line writes are the VMM's"
        );
    }

    #[test]
    fn hidden_extended_capabilities_keep_the_chain() {
        let mock = MockVfio::igbvf();
        let c = space(&mock);
        assert_eq!(c.size(), 4096);
        // AER stays; ARI reads as a null capability that still links to ATS.
        assert_eq!(c.read(0x100 / 4, &*mock) & 0xffff, 0x0001);
        assert_eq!(c.read(0x150 / 4, &*mock), 0x160 << 20);
        assert_eq!(c.read(0x160 / 4, &*mock) & 0xffff, 0x000f);
        assert!(c.patches().iter().any(|p| p.reg == 0x150 / 4));
    }

    #[test]
    fn command_writes_pass_through_and_track_decoding() {
        let mock = MockVfio::igbvf();
        let mut c = space(&mock);
        let on = regs::COMMAND_MEMORY.to_le_bytes();
        assert_eq!(c.write(1, 0, &on, &*mock), ConfigWrite::BarsMayMove);
        assert!(c.memory_enabled());
        assert_eq!(c.write(1, 0, &[0, 0], &*mock), ConfigWrite::Done);
        assert_eq!(mock.log.lock().unwrap().config_writes.len(), 2);
        // Writes past a conventional function's 256 bytes go nowhere.
        let mut c = ConfigSpace::new(&[0u8; 256], &[]);
        c.write(0x100 / 4, 0, &[1], &*mock);
        assert_eq!(mock.log.lock().unwrap().config_writes.len(), 2);
        assert_eq!(c.read(0x100 / 4, &*mock), 0, "no extended space");
    }

    #[test]
    fn malformed_capability_lists_terminate() {
        let mut c = [0u8; 256];
        put(&mut c, 0x06, &regs::STATUS_CAP_LIST.to_le_bytes());
        put(&mut c, regs::CAP_PTR, &[0x40]);
        put(&mut c, 0x40, &[0x09, 0x40]); // points at itself
        assert_eq!(scan_capabilities(&c), CapScan::default());
        put(&mut c, regs::CAP_PTR, &[0x10]); // points into the header
        assert_eq!(scan_capabilities(&c), CapScan::default());
        let mut ext = [0u8; 4096];
        put(&mut ext, 0x100, &(0x000eu32 | (0x100 << 20)).to_le_bytes()); // loops
        assert_eq!(scan_extended(&ext), vec![0x100]);
    }
}
