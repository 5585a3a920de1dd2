//! The guest-visible model of a passed-through PCI function.
//!
//! Configuration space is passed through to vfio-pci except for what the
//! VMM must own: the BARs (guest addresses, sizing), the expansion ROM
//! (hidden), the interrupt pin (no INTx), the multi-function bit, the MSI
//! capability and the MSI-X Message Control bits. BARs are mmapped into the guest except the pages
//! holding the MSI-X table and PBA, which trap here and are emulated.

use std::sync::{Arc, Mutex, Weak};

use vmm_sys_util::eventfd::EventFd;

use super::{MmapArea, RegionInfo, VfioBackend};
use crate::devices::bus::BusDevice;
use crate::interrupts::{InterruptError, MsiRouter};
use crate::pci::bar::{decode_bar_type, BarInfo, BarShadow, MmioAllocator};
use crate::pci::msi::{MsiCap, MsiState};
use crate::pci::msix::{MsixCap, MsixState};
use crate::pci::{merge_write, regs, PciDevice};
use crate::vm::{GuestMapper, VmError};

const PAGE_SIZE: u64 = 4096;
/// BARs up to this size go to the 32-bit window when it has room.
const MAX_BAR_IN_MMIO32: u64 = 256 << 20;
/// Bound on capability-list walking (a malformed list must not loop).
const MAX_CAPS: usize = 48;
/// Extended capabilities the guest must not manage, shown as null
/// capabilities (the chain stays intact): ARI, SR-IOV, Resizable BAR, VF
/// Resizable BAR.
const HIDDEN_EXT_CAPS: [u16; 4] = [0x0e, 0x10, 0x15, 0x24];

/// Errors building the device model.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// No guest address space left for a BAR.
    #[error("{0}: no guest MMIO space left for BAR{1} ({2:#x} bytes)")]
    NoBarSpace(String, usize, u64),
    /// GSI allocation failed.
    #[error("{0}: cannot allocate interrupt routes")]
    Interrupts(String, #[source] InterruptError),
    /// Eventfd creation failed.
    #[error("{0}: cannot create interrupt eventfds")]
    EventFd(String, #[source] std::io::Error),
    /// mmap of a BAR failed.
    #[error("{0}: cannot map a BAR")]
    Mmap(String, #[source] super::BackendError),
    /// Placing a BAR in the guest failed.
    #[error("{0}: cannot place a BAR in the guest address space")]
    Map(String, #[source] VmError),
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

/// Sends trapped accesses to one range of a BAR to the device model.
pub struct VfioTrap {
    dev: Weak<Mutex<VfioPciDevice>>,
    base: u64,
}

impl BusDevice for VfioTrap {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.dev.upgrade() {
            Some(d) => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .mmio_read(self.base + offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(d) = self.dev.upgrade() {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .mmio_write(self.base + offset, data);
        }
    }
}

/// Where a trapped BAR access lands.
enum Trapped {
    /// Offset in the MSI-X table.
    MsixTable(u64),
    /// The pending-bit array.
    Pba,
    /// Anything else: the device's own registers (region, offset).
    Device(u32, u64),
}

struct Msi {
    cap: MsiCap,
    state: MsiState,
    fds: Vec<EventFd>,
    gsi_base: u32,
    host_vectors: u32,
}

struct Msix {
    cap: MsixCap,
    state: MsixState,
    fds: Vec<EventFd>,
    gsi_base: u32,
    host_enabled: bool,
}

/// A passed-through function on the emulated PCI bus.
pub struct VfioPciDevice {
    name: String,
    dev: Arc<dyn VfioBackend>,
    router: Arc<dyn MsiRouter>,
    bars: Vec<BarInfo>,
    regions: Vec<RegionInfo>,
    shadow: BarShadow,
    msi: Option<Msi>,
    msix: Option<Msix>,
    config_size: usize,
    hidden_ext: Vec<usize>,
    int_line: u8,
    mmaps: Vec<MmapArea>,
    mapper: Option<Arc<dyn GuestMapper>>,
    self_ref: Weak<Mutex<VfioPciDevice>>,
    areas: Vec<MappedArea>,
    traps: Vec<(usize, u64, u64)>,
    memory_enabled: bool,
    quiesced: bool,
}

fn cfg_u8(cfg: &[u8], off: usize) -> u8 {
    cfg.get(off).copied().unwrap_or(0)
}
fn cfg_u16(cfg: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([cfg_u8(cfg, off), cfg_u8(cfg, off + 1)])
}
fn cfg_u32(cfg: &[u8], off: usize) -> u32 {
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
    let mut ptr = regs::CONFIG_SPACE_SIZE;
    let mut seen = 0;
    while ptr >= regs::CONFIG_SPACE_SIZE && ptr + 4 <= ext.len() && seen < MAX_CAPS {
        seen += 1;
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

impl VfioPciDevice {
    /// Builds the model for `dev`, placing its BARs in the given windows.
    pub fn new(
        name: &str,
        dev: Arc<dyn VfioBackend>,
        router: Arc<dyn MsiRouter>,
        mmio32: &mut MmioAllocator,
        mmio64: &mut MmioAllocator,
    ) -> Result<Self, VfioPciError> {
        // Start from a clean function: whatever the previous user left is gone.
        dev.reset();
        // One read of the whole configuration space (4 KiB for PCIe functions).
        let config_size = (dev
            .region(vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX)
            .size as usize)
            .clamp(regs::CONFIG_SPACE_SIZE, regs::EXT_CONFIG_SPACE_SIZE);
        let mut cfg = vec![0u8; config_size];
        dev.config_read(0, &mut cfg);

        let mut bars = Vec::new();
        let mut regions = Vec::new();
        let mut i = 0;
        while i < 6 {
            let info = dev.region(i as u32);
            let reg = cfg_u32(&cfg, regs::BAR0 + 4 * i);
            let size = info.size;
            regions.push(info);
            let Some((is_64, prefetchable)) = decode_bar_type(reg) else {
                if size != 0 {
                    log::warn!("{name}: BAR{i} is an I/O BAR; I/O BARs are not passed through");
                }
                i += 1;
                continue;
            };
            if size == 0 {
                i += 1;
                continue;
            }
            let size = size.next_power_of_two().max(16);
            let addr = if size <= MAX_BAR_IN_MMIO32 {
                mmio32
                    .allocate(size)
                    .or_else(|| is_64.then(|| mmio64.allocate(size)).flatten())
            } else if is_64 {
                mmio64.allocate(size)
            } else {
                mmio32.allocate(size)
            }
            .ok_or_else(|| VfioPciError::NoBarSpace(name.to_string(), i, size))?;
            log::info!(
                "{name}: BAR{i} {size:#x} bytes at guest {addr:#x}{}",
                if is_64 { " (64-bit)" } else { "" }
            );
            bars.push(BarInfo {
                index: i,
                size,
                is_64,
                prefetchable,
                addr,
            });
            if is_64 {
                regions.push(RegionInfo::default());
                i += 1;
            }
            i += 1;
        }

        let scan = scan_capabilities(&cfg);
        let hidden_ext = scan_extended(&cfg);
        // GSIs and one eventfd per vector for `n` vectors of `kind`.
        let vectors = |kind: &str, n: u32| -> Result<(u32, Vec<EventFd>), VfioPciError> {
            let gsi_base = router
                .allocate_gsis(n)
                .map_err(|e| VfioPciError::Interrupts(name.to_string(), e))?;
            let fds = (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| VfioPciError::EventFd(name.to_string(), e))?;
            log::info!(
                "{name}: {kind} with {n} vectors on GSIs {gsi_base}..{}",
                gsi_base + n
            );
            Ok((gsi_base, fds))
        };
        let msix = match scan.msix {
            Some(cap) => {
                let n = u32::from(cap.table_size).min(dev.msix_vectors().max(1));
                let (gsi_base, fds) = vectors("MSI-X", n)?;
                Some(Msix {
                    cap,
                    state: MsixState::new(n as u16),
                    fds,
                    gsi_base,
                    host_enabled: false,
                })
            }
            None => None,
        };
        let msi = match scan.msi {
            Some((cap, header)) => {
                let (gsi_base, fds) = vectors("MSI", cap.max_vectors())?;
                Some(Msi {
                    cap,
                    state: MsiState::new(cap, header),
                    fds,
                    gsi_base,
                    host_vectors: 0,
                })
            }
            None => None,
        };
        if msi.is_none() && msix.is_none() {
            log::warn!("{name}: neither MSI nor MSI-X; INTx is not supported, the guest driver will get no interrupts");
        }

        Ok(VfioPciDevice {
            name: name.to_string(),
            shadow: BarShadow::new(&bars),
            dev,
            router,
            bars,
            regions,
            msi,
            msix,
            config_size,
            hidden_ext,
            int_line: 0,
            mmaps: Vec::new(),
            mapper: None,
            self_ref: Weak::new(),
            areas: Vec::new(),
            traps: Vec::new(),
            memory_enabled: false,
            quiesced: false,
        })
    }

    /// The BARs as placed in the guest.
    pub fn bars(&self) -> &[BarInfo] {
        &self.bars
    }

    /// Parts of each BAR to map: (bar, offset in BAR, length).
    pub fn mmap_areas(&self) -> Vec<(BarInfo, u64, u64)> {
        let msix = self.msix.as_ref().map(|m| &m.cap);
        self.bars
            .iter()
            .flat_map(|b| {
                mmap_plan(b, &self.regions[b.index], msix)
                    .into_iter()
                    .map(move |(o, l)| (*b, o, l))
            })
            .collect()
    }

    /// Parts of each BAR that trap to this device: (bar, offset in BAR, length),
    /// the complement of [`Self::mmap_areas`].
    pub fn trapped_ranges(&self) -> Vec<(BarInfo, u64, u64)> {
        let areas = self.mmap_areas();
        self.bars
            .iter()
            .flat_map(|b| {
                let mapped: Vec<(u64, u64)> = areas
                    .iter()
                    .filter(|(a, _, _)| a.index == b.index)
                    .map(|(_, o, l)| (*o, *l))
                    .collect();
                trap_ranges(b.size, &mapped)
                    .into_iter()
                    .map(move |(o, l)| (*b, o, l))
            })
            .collect()
    }

    /// Puts the device's BARs into the guest: mmaps what can be mapped
    /// straight through, traps the rest to the device model.
    pub fn attach(
        this: &Arc<Mutex<VfioPciDevice>>,
        mapper: Arc<dyn GuestMapper>,
    ) -> Result<(), VfioPciError> {
        let mut d = this.lock().unwrap_or_else(|e| e.into_inner());
        d.self_ref = Arc::downgrade(this);
        let name = d.name.clone();
        for (bar, offset, len) in d.mmap_areas() {
            let m = d
                .dev
                .mmap(bar.index as u32, offset, len)
                .map_err(|e| VfioPciError::Mmap(name.clone(), e))?;
            let host = m.host_addr();
            d.mmaps.push(m);
            let slot = mapper
                .map_memory(bar.addr + offset, len, host)
                .map_err(|e| VfioPciError::Map(name.clone(), e))?;
            d.areas.push(MappedArea {
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
        for (bar, offset, len) in d.trapped_ranges() {
            mapper
                .add_trap(bar.addr + offset, len, d.trap(bar.addr + offset))
                .map_err(|e| VfioPciError::Map(name.clone(), e))?;
            d.traps.push((bar.index, offset, len));
            log::debug!("{name}: trapping {:#x}+{len:#x}", bar.addr + offset);
        }
        d.mapper = Some(mapper);
        Ok(())
    }

    fn trap(&self, base: u64) -> crate::devices::bus::SharedDevice {
        Arc::new(Mutex::new(VfioTrap {
            dev: self.self_ref.clone(),
            base,
        }))
    }

    /// Moves BAR `i` (index into `bars`) to `new`: its memory slots and traps.
    fn move_bar(&mut self, i: usize, new: u64) -> Result<(), VmError> {
        let Some(mapper) = self.mapper.clone() else {
            return Ok(());
        };
        let old = self.bars[i];
        let traps: Vec<(u64, u64)> = self
            .traps
            .iter()
            .filter(|t| t.0 == old.index)
            .map(|t| (t.1, t.2))
            .collect();
        for (offset, _) in &traps {
            mapper.remove_trap(old.addr + offset);
        }
        for a in self.areas.iter().filter(|a| a.bar == old.index) {
            mapper.move_memory(a.slot, new + a.offset, a.len, a.host)?;
        }
        for (offset, len) in &traps {
            mapper.add_trap(new + offset, *len, self.trap(new + offset))?;
        }
        self.bars[i].addr = new;
        Ok(())
    }

    /// Follows the guest's BAR programming: when decoding is on and a BAR
    /// holds a new address (sizing is over by then), move the BAR there.
    fn follow_bars(&mut self) {
        for i in 0..self.bars.len() {
            let b = self.bars[i];
            let new = self.shadow.address(&b);
            if new == b.addr {
                continue;
            }
            let ok_place = self
                .mapper
                .as_ref()
                .is_some_and(|m| m.in_pci_window(new, b.size));
            if !ok_place {
                log::error!(
                    "{}: guest moved BAR{} to {new:#x}, outside the PCI windows; it stays at {:#x}",
                    self.name,
                    b.index,
                    b.addr
                );
                continue;
            }
            match self.move_bar(i, new) {
                Ok(()) => log::info!(
                    "{}: BAR{} moved from {:#x} to {new:#x}",
                    self.name,
                    b.index,
                    b.addr
                ),
                Err(e) => log::error!(
                    "{}: moving BAR{} to {new:#x} failed: {e}",
                    self.name,
                    b.index
                ),
            }
        }
    }

    fn update_vector(&self, i: usize) {
        let Some(m) = &self.msix else { return };
        let Some(fd) = m.fds.get(i) else { return };
        let msg = m.state.vector_live(i).then(|| m.state.entries[i].message());
        if let Err(e) = self.router.route(m.gsi_base + i as u32, msg, fd) {
            log::error!("{}: MSI-X vector {i}: {e}", self.name);
        }
    }

    fn update_msix(&mut self) {
        let name = self.name.clone();
        let Some(m) = self.msix.as_mut() else { return };
        if m.state.enabled && !m.host_enabled {
            let fds: Vec<&EventFd> = m.fds.iter().collect();
            match self.dev.enable_msix(&fds) {
                Ok(()) => m.host_enabled = true,
                Err(e) => log::error!("{name}: enabling MSI-X on the host failed: {e}"),
            }
            log::debug!("{name}: MSI-X enabled");
        }
        let (n, disable) = (m.fds.len(), !m.state.enabled && m.host_enabled);
        for i in 0..n {
            self.update_vector(i);
        }
        if disable {
            if let Err(e) = self.dev.disable_msix() {
                log::error!("{name}: disabling MSI-X failed: {e}");
            }
            if let Some(m) = self.msix.as_mut() {
                m.host_enabled = false;
            }
            log::debug!("{name}: MSI-X disabled");
        }
    }

    fn update_msi(&mut self) {
        let Some(m) = self.msi.as_mut() else { return };
        let want = if m.state.enabled() {
            m.state.vectors()
        } else {
            0
        };
        if want != m.host_vectors {
            for (i, fd) in m.fds.iter().enumerate() {
                if let Err(e) = self.router.route(m.gsi_base + i as u32, None, fd) {
                    log::error!("{}: MSI vector {i}: {e}", self.name);
                }
            }
            if m.host_vectors > 0 {
                if let Err(e) = self.dev.disable_msi() {
                    log::error!("{}: disabling MSI failed: {e}", self.name);
                }
            }
            m.host_vectors = 0;
            if want > 0 {
                let fds: Vec<&EventFd> = m.fds.iter().take(want as usize).collect();
                match self.dev.enable_msi(&fds) {
                    Ok(()) => m.host_vectors = want,
                    Err(e) => log::error!("{}: enabling MSI on the host failed: {e}", self.name),
                }
            }
            log::debug!("{}: MSI with {} vectors", self.name, m.host_vectors);
        }
        for (i, fd) in m.fds.iter().enumerate() {
            let i = i as u32;
            let live = i < m.host_vectors && m.state.vector_live(i);
            let msg = live.then(|| m.state.message(i));
            if let Err(e) = self.router.route(m.gsi_base + i, msg, fd) {
                log::error!("{}: MSI vector {i}: {e}", self.name);
            }
        }
    }

    /// What a trapped guest address hits.
    fn classify(&self, addr: u64) -> Option<Trapped> {
        let bar = self.bars.iter().find(|b| b.contains(addr))?;
        let off = addr - bar.addr;
        if let Some(c) = self.msix.as_ref().map(|m| m.cap) {
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

    /// Handles a trapped read at guest address `addr`.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        data.fill(0);
        match self.classify(addr) {
            Some(Trapped::MsixTable(off)) => {
                if let Some(m) = self.msix.as_mut() {
                    m.state.read_table(off, data);
                }
            }
            // Nothing is ever left pending: masked vectors' events wait in their eventfds.
            Some(Trapped::Pba) | None => {}
            Some(Trapped::Device(region, off)) => self.dev.region_read(region, off, data),
        }
    }

    /// Handles a trapped write at guest address `addr`.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        match self.classify(addr) {
            Some(Trapped::MsixTable(off)) => {
                let touched = self.msix.as_mut().and_then(|m| {
                    let v = m.state.write_table(off, data)?;
                    m.state.enabled.then_some(v)
                });
                if let Some(v) = touched {
                    self.update_vector(v);
                }
            }
            Some(Trapped::Pba) | None => {}
            Some(Trapped::Device(region, off)) => self.dev.region_write(region, off, data),
        }
    }

    /// Disables interrupts and resets the function (at shutdown). Idempotent.
    pub fn quiesce(&mut self) {
        if self.quiesced {
            return;
        }
        self.quiesced = true;
        if let Some(m) = self.msix.as_mut() {
            m.state.enabled = false;
        }
        self.update_msix();
        if let Some(m) = self.msi.as_mut() {
            m.state.write(2, &[0]);
        }
        self.update_msi();
        log::debug!("{}: resetting the function", self.name);
        self.dev.reset();
        log::debug!("{}: reset done", self.name);
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        let off = reg * 4;
        let mut v = match off {
            regs::BAR0..=0x27 => self.shadow.read(reg - regs::BAR0 / 4),
            regs::ROM_BAR => 0,
            _ if off < self.config_size => {
                let mut b = [0u8; 4];
                self.dev.config_read(off as u64, &mut b);
                u32::from_le_bytes(b)
            }
            // Conventional functions have no extended space: end of list.
            _ => 0,
        };
        if self.hidden_ext.contains(&off) {
            // Keep the next pointer, null the ID and version.
            v &= 0xfff0_0000;
        }
        if off == regs::INTERRUPT_LINE {
            v = (v & 0xffff_0000) | u32::from(self.int_line);
        }
        if off == regs::HEADER_TYPE & !3 {
            v &= !(u32::from(regs::HEADER_TYPE_MULTIFUNCTION) << 16);
        }
        if let Some(m) = &self.msi {
            let (start, end) = (m.cap.cap_offset, m.cap.cap_offset + m.cap.len());
            for i in 0..4 {
                let byte = off + i;
                if (start..end).contains(&byte) {
                    let mut b = [0u8];
                    m.state.read(byte - start, &mut b);
                    v = (v & !(0xff << (i * 8))) | (u32::from(b[0]) << (i * 8));
                }
            }
        }
        if let Some(m) = &self.msix {
            if m.cap.cap_offset / 4 == reg {
                let ctl = ((v >> 16) as u16
                    & !(crate::pci::msix::CTL_ENABLE | crate::pci::msix::CTL_FUNCTION_MASK))
                    | m.state.control_bits();
                v = (v & 0xffff) | (u32::from(ctl) << 16);
            }
        }
        v
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let off = reg * 4;
        match off {
            regs::BAR0..=0x27 => {
                let i = reg - regs::BAR0 / 4;
                let merged = merge_write(self.shadow.read(i), offset, data);
                self.shadow.write(i, merged);
                // A 32-bit BAR is rewritten in one go, even with decoding on.
                if self.memory_enabled && self.bars.iter().any(|b| b.index == i && !b.is_64) {
                    self.follow_bars();
                }
                return;
            }
            regs::ROM_BAR => return,
            regs::INTERRUPT_LINE => {
                if offset == 0 {
                    if let Some(b) = data.first() {
                        self.int_line = *b;
                    }
                }
                return;
            }
            _ => {}
        }
        if let Some(m) = &self.msix {
            if m.cap.cap_offset / 4 == reg {
                if offset + data.len() > 2 {
                    let merged = merge_write(self.read_config(reg), offset, data);
                    let changed = self
                        .msix
                        .as_mut()
                        .is_some_and(|m| m.state.write_control((merged >> 16) as u16));
                    if changed {
                        self.update_msix();
                    }
                }
                return;
            }
        }
        if off == regs::COMMAND && offset == 0 {
            if let Some(c) = data.first() {
                self.memory_enabled = u16::from(*c) & regs::COMMAND_MEMORY != 0;
                if self.memory_enabled {
                    self.follow_bars();
                }
            }
        }
        let byte = off + offset;
        if byte >= self.config_size {
            return;
        }
        if let Some(m) = self.msi.as_mut() {
            let start = m.cap.cap_offset;
            if (start..start + m.cap.len()).contains(&byte) {
                if m.state.write(byte - start, data) {
                    self.update_msi();
                }
                return;
            }
        }
        self.dev.config_write(byte as u64, data);
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.quiesce();
        // Unmap the BARs before the device file closes: a live mapping keeps
        // the device open and the group busy.
        self.mmaps.clear();
    }
}

#[cfg(test)]
#[path = "pci_device_tests.rs"]
mod tests;
