//! How a passed-through function's BARs appear in the guest: the parts
//! mmapped straight through (KVM memory slots over the host's BAR mappings)
//! and the parts that trap (the pages of the MSI-X table and PBA, and
//! whatever the host does not let us mmap). Guest addresses are assigned by
//! the caller; a move is applied when the owner of the address space says so.

use super::{BackendError, MmapArea, RegionInfo, VfioBackend};
use crate::pci::bar::{BarInfo, BarShadow};
use crate::pci::msix::MsixCap;
use crate::pci::{BarMove, TrapRange};
use crate::vm::{GuestMapper, VmError};

const PAGE_SIZE: u64 = 4096;

/// Errors mapping BARs into the guest.
#[derive(Debug, thiserror::Error)]
pub enum BarMapError {
    /// mmap of a BAR failed.
    #[error("cannot map a BAR")]
    Mmap(#[source] BackendError),
    /// A memory slot for a BAR could not be set.
    #[error("cannot place a BAR in the guest address space")]
    Slot(#[source] VmError),
}

/// Where a trapped BAR access lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trapped {
    /// Offset in the MSI-X table.
    MsixTable(u64),
    /// The pending-bit array.
    Pba,
    /// Anything else: the device's own registers (region, offset).
    Device(u32, u64),
}

/// A BAR area mapped straight into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MappedArea {
    bar: usize,
    offset: u64,
    len: u64,
    host: u64,
    slot: u32,
}

fn page_span(offset: u64, len: u64) -> (u64, u64) {
    let start = offset / PAGE_SIZE * PAGE_SIZE;
    let end = (offset + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    (start, end)
}

/// The parts of `bar` to mmap into the guest, as (offset, length): the
/// host's mmappable areas minus the pages holding the MSI-X table and PBA,
/// page-aligned. Everything else traps.
pub fn mmap_plan(bar: &BarInfo, info: &RegionInfo, msix: Option<&MsixCap>) -> Vec<(u64, u64)> {
    if !info.mmap {
        return Vec::new();
    }
    let mut holes = Vec::new();
    if let Some(c) = msix {
        if c.table_bar == bar.index {
            holes.push(page_span(c.table_offset, c.table_len()));
        }
        if c.pba_bar == bar.index {
            holes.push(page_span(c.pba_offset, c.pba_len()));
        }
    }
    if !holes.is_empty() && info.sparse.is_none() && !info.msix_mappable {
        // Old kernels refuse to mmap a BAR holding the MSI-X table.
        return Vec::new();
    }
    let mut areas = info.sparse.clone().unwrap_or_else(|| vec![(0, bar.size)]);
    for (hs, he) in holes {
        areas = areas
            .into_iter()
            .flat_map(|(s, l)| {
                let e = s + l;
                let mut out = Vec::new();
                if s < hs.min(e) {
                    out.push((s, hs.min(e) - s));
                }
                if he.max(s) < e {
                    out.push((he.max(s), e - he.max(s)));
                }
                out
            })
            .collect();
    }
    areas
        .into_iter()
        .filter_map(|(s, l)| {
            let start = s.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            let end = ((s + l).min(bar.size)) / PAGE_SIZE * PAGE_SIZE;
            (end > start).then_some((start, end - start))
        })
        .collect()
}

/// The complement of `mapped` within `[0, size)`: the ranges that trap.
pub fn trap_ranges(size: u64, mapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut m = mapped.to_vec();
    m.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (s, l) in m {
        if s > at {
            out.push((at, s - at));
        }
        at = at.max(s + l);
    }
    if at < size {
        out.push((at, size - at));
    }
    out
}

/// The BARs of one function in the guest.
pub struct BarMap {
    name: String,
    bars: Vec<BarInfo>,
    msix: Option<MsixCap>,
    /// Per BAR, the (offset, length) areas that trap.
    traps: Vec<(usize, u64, u64)>,
    areas: Vec<MappedArea>,
    // Host mappings behind the memory slots; they must go before the
    // device file closes (a live mapping keeps the group busy).
    mmaps: Vec<MmapArea>,
}

impl BarMap {
    /// Maps every mmappable area of `bars` into the guest through `mapper`;
    /// `regions` is the host's description of each BAR register index.
    pub fn new(
        name: &str,
        bars: Vec<BarInfo>,
        regions: &[RegionInfo],
        msix: Option<MsixCap>,
        dev: &dyn VfioBackend,
        mapper: &dyn GuestMapper,
    ) -> Result<Self, BarMapError> {
        let mut map = BarMap {
            name: name.to_string(),
            bars,
            msix,
            traps: Vec::new(),
            areas: Vec::new(),
            mmaps: Vec::new(),
        };
        let default = RegionInfo::default();
        for bar in map.bars.clone() {
            let info = regions.get(bar.index).unwrap_or(&default);
            let plan = mmap_plan(&bar, info, msix.as_ref());
            for &(offset, len) in &plan {
                let m = dev
                    .mmap(bar.index as u32, offset, len)
                    .map_err(BarMapError::Mmap)?;
                let host = m.host_addr();
                map.mmaps.push(m);
                let slot = mapper
                    .map_memory(bar.addr + offset, len, host)
                    .map_err(BarMapError::Slot)?;
                map.areas.push(MappedArea {
                    bar: bar.index,
                    offset,
                    len,
                    host,
                    slot,
                });
                log::debug!(
                    "{name}: BAR{} +{offset:#x} ({len:#x} bytes) mapped into the guest",
                    bar.index
                );
            }
            for (offset, len) in trap_ranges(bar.size, &plan) {
                map.traps.push((bar.index, offset, len));
            }
        }
        Ok(map)
    }

    /// The BARs at their current guest addresses.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn bars(&self) -> &[BarInfo] {
        &self.bars
    }

    /// The trapped ranges at the BARs' current addresses.
    pub fn trapped_ranges(&self) -> Vec<TrapRange> {
        self.traps
            .iter()
            .filter_map(|&(bar, offset, len)| {
                let b = self.bars.iter().find(|b| b.index == bar)?;
                Some(TrapRange {
                    bar,
                    addr: b.addr + offset,
                    len,
                })
            })
            .collect()
    }

    /// What a trapped guest address hits.
    pub fn classify(&self, addr: u64) -> Option<Trapped> {
        let bar = self.bars.iter().find(|b| b.contains(addr))?;
        let off = addr - bar.addr;
        if let Some(c) = self.msix {
            let table = c.table_offset..c.table_offset + c.table_len();
            if c.table_bar == bar.index && table.contains(&off) {
                return Some(Trapped::MsixTable(off - c.table_offset));
            }
            if c.pba_bar == bar.index && (c.pba_offset..c.pba_offset + c.pba_len()).contains(&off) {
                return Some(Trapped::Pba);
            }
        }
        Some(Trapped::Device(bar.index as u32, off))
    }

    /// What a trapped access of `len` bytes at `addr` hits. An access to the
    /// device's registers that runs into the MSI-X table or PBA (or out of
    /// the BAR) hits nothing: the device never sees table bytes.
    pub fn classify_access(&self, addr: u64, len: usize) -> Option<Trapped> {
        let first = self.classify(addr)?;
        if let Trapped::Device(region, off) = first {
            let span = len.saturating_sub(1) as u64;
            let last = self.classify(addr.checked_add(span)?);
            if last != Some(Trapped::Device(region, off + span)) {
                log::debug!(
                    "{}: dropped a {len}-byte access at {addr:#x} across the MSI-X table",
                    self.name
                );
                return None;
            }
        }
        Some(first)
    }

    /// The BARs whose programmed address (in `shadow`) differs from where they are.
    pub fn proposed_moves(&self, shadow: &BarShadow) -> Vec<BarMove> {
        self.bars
            .iter()
            .filter_map(|b| {
                let to = shadow.address(b);
                (to != b.addr).then_some(BarMove {
                    bar: b.index,
                    from: b.addr,
                    to,
                    size: b.size,
                })
            })
            .collect()
    }

    /// Moves the memory slots of BAR `mv.bar` to `mv.to`; the BAR then
    /// answers there (the caller moves the traps). All or nothing: when a
    /// slot cannot move, the slots already moved go back and the BAR stays.
    pub fn move_bar(&mut self, mv: &BarMove, mapper: &dyn GuestMapper) -> Result<(), VmError> {
        let Some(i) = self.bars.iter().position(|b| b.index == mv.bar) else {
            return Ok(());
        };
        let from = self.bars[i].addr;
        let areas: Vec<&MappedArea> = self.areas.iter().filter(|a| a.bar == mv.bar).collect();
        for (n, a) in areas.iter().enumerate() {
            if let Err(e) = mapper.move_memory(a.slot, mv.to + a.offset, a.len, a.host) {
                for b in &areas[..n] {
                    if let Err(e) = mapper.move_memory(b.slot, from + b.offset, b.len, b.host) {
                        log::error!(
                            "{}: BAR{} +{:#x} could not go back to {:#x}: {}",
                            self.name,
                            mv.bar,
                            b.offset,
                            from + b.offset,
                            crate::error::error_chain(&e)
                        );
                    }
                }
                return Err(e);
            }
        }
        self.bars[i].addr = mv.to;
        log::debug!("{}: BAR{} slots now at {:#x}", self.name, mv.bar, mv.to);
        Ok(())
    }
}

#[cfg(test)]
#[path = "bar_map_tests.rs"]
mod tests;
