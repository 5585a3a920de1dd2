//! The PCI surfaces: a root with one mock function in slot 1, driven the
//! way a guest drives it, checked after every access.
//!
//! Invariants: the expansion ROM, the interrupt pin and the multi-function
//! bit stay hidden; BARs read as hardware would (flags kept, address
//! aligned to the size, all-ones reads back the size mask, unused registers
//! read 0); every memory slot lies inside its BAR and the MMIO bus holds
//! exactly the ECAM window and the device's trapped ranges; a live MSI or
//! MSI-X vector's route carries exactly the message the guest programmed
//! and a dead one has none; no write reaches the device for registers the
//! VMM owns (BARs, ROM, interrupt line/pin, the MSI capability, MSI-X
//! Message Control, the MSI-X table and PBA); the guest's extended
//! capability walk never shows ARI, SR-IOV or Resizable BAR.

use std::sync::{Arc, Mutex};

use super::Input;
use crate::arch::x86_64::layout;
use crate::devices::bus::Buses;
use crate::interrupts::MsiMessage;
use crate::pci::bar::BarAllocator;
use crate::pci::bar_space::BarSpace;
use crate::pci::msi::MsiCap;
use crate::pci::msix::MsixCap;
use crate::pci::root::{PciEcam, PciRoot};
use crate::pci::{regs, PciDevice, SharedPciDevice};
use crate::testing::{windows, MockMapper, MockRouter, MockVfio};
use crate::vfio::config_space::scan_capabilities;
use crate::vfio::pci_device::{VfioPciDevice, VfioProbe};
use crate::vfio::VfioBackend;

/// Accesses per input (a bound on the time one input takes).
const MAX_OPS: usize = 400;
/// ECAM address of slot 1's configuration space.
const SLOT1: u64 = layout::PCI_ECAM_START.0 + (1 << 15);
/// Extended capabilities the guest must never see.
const HIDDEN_EXT: [u32; 4] = [0x0e, 0x10, 0x15, 0x24];
/// MSI-X vectors the mock host exposes.
const HOST_MSIX: u16 = 3;

fn le32(b: &[u8], off: usize) -> u32 {
    let g = |i: usize| u32::from(b.get(off + i).copied().unwrap_or(0));
    g(0) | (g(1) << 8) | (g(2) << 16) | (g(3) << 24)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

struct Rig {
    buses: Arc<Buses>,
    dev: Arc<Mutex<VfioPciDevice>>,
    mock: Arc<MockVfio>,
    router: Arc<MockRouter>,
    mapper: Arc<MockMapper>,
    msix: Option<MsixCap>,
    msi: Option<MsiCap>,
    slots: usize,
    /// Device log entries already checked: (config writes, region writes, region reads).
    checked: std::cell::Cell<(usize, usize, usize)>,
}

impl Rig {
    /// The function `mock` in slot 1, or `None` if the VMM refuses it.
    fn new(mock: Arc<MockVfio>) -> Option<Rig> {
        let buses = Arc::new(Buses::default());
        let mapper = Arc::new(MockMapper::default());
        let router = Arc::new(MockRouter::default());
        let space = BarSpace::new(windows(), mapper.clone(), &buses.mmio);
        let root = Arc::new(Mutex::new(PciRoot::new(space)));
        let probe = VfioProbe::new("fuzz", &*mock);
        let mut alloc = BarAllocator::new(windows());
        let bars = probe
            .bar_requests()
            .iter()
            .map(|r| alloc.place(r))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let mut snapshot = vec![0u8; 4096];
        mock.config_read(0, &mut snapshot);
        let scan = scan_capabilities(&snapshot);
        let dev = VfioPciDevice::new("fuzz", mock.clone(), probe, bars, router.clone(), &*mapper);
        let dev = Arc::new(Mutex::new(dev.ok()?));
        let shared: SharedPciDevice = dev.clone();
        root.lock().unwrap().add_device(shared).ok()?;
        let port = u64::from(layout::PCI_CONFIG_PORT);
        let len = u64::from(layout::PCI_CONFIG_PORT_LEN);
        buses.pio.insert(port, len, root.clone()).ok()?;
        let ecam = Arc::new(Mutex::new(PciEcam(root)));
        let ecam_base = layout::PCI_ECAM_START.0;
        buses
            .mmio
            .insert(ecam_base, layout::PCI_ECAM_SIZE, ecam)
            .ok()?;
        let slots = mapper.slots.lock().unwrap().len();
        Some(Rig {
            buses,
            dev,
            mock,
            router,
            mapper,
            msix: scan.msix,
            msi: scan.msi.map(|(c, _)| c),
            slots,
            checked: Default::default(),
        })
    }

    fn cfg32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        assert!(self.buses.mmio.read(SLOT1 + off, &mut b), "ECAM answers");
        u32::from_le_bytes(b)
    }

    fn cfg_write32(&self, off: u64, v: u32) {
        self.buses.mmio.write(SLOT1 + off, &v.to_le_bytes());
    }

    /// One guest access chosen by `input`.
    fn step(&self, input: &mut Input) {
        let pio = &self.buses.pio;
        let mmio = &self.buses.mmio;
        let cfc = u64::from(layout::PCI_CONFIG_PORT) + 4;
        match input.u8() % 8 {
            0 => {
                let a = if input.u8() & 1 == 0 {
                    0x8000_0000 | (1 << 11) | (u32::from(input.u8()) & 0xfc)
                } else {
                    input.u32()
                };
                pio.write(u64::from(layout::PCI_CONFIG_PORT), &a.to_le_bytes());
            }
            1 => {
                let mut d = vec![0u8; input.size(false)];
                pio.read(cfc + u64::from(input.u8() % 4), &mut d);
            }
            2 => {
                let (off, n) = (u64::from(input.u8() % 4), input.size(false));
                pio.write(cfc + off, &input.bytes(n));
            }
            3 => {
                let at = ecam_offset(input);
                let mut d = vec![0u8; input.size(false)];
                mmio.read(at, &mut d);
            }
            4 => {
                let at = ecam_offset(input);
                let n = input.size(false);
                mmio.write(at, &input.bytes(n));
            }
            op @ (5 | 6) => {
                let ranges = self.dev.lock().unwrap().trapped_ranges();
                if ranges.is_empty() {
                    return;
                }
                let t = ranges[usize::from(input.u8()) % ranges.len()];
                let at = t.addr + u64::from(input.u16()) % t.len;
                let n = input.size(true);
                if op == 5 {
                    let mut d = vec![0u8; n];
                    mmio.read(at, &mut d);
                } else {
                    mmio.write(at, &input.bytes(n));
                }
            }
            _ => self.sizing(usize::from(input.u8()) % 6),
        }
    }

    /// Sizes BAR register `i` as a driver does and checks what it reads.
    fn sizing(&self, i: usize) {
        let off = (regs::BAR0 + 4 * i) as u64;
        let saved = self.cfg32(off);
        self.cfg_write32(off, u32::MAX);
        let got = self.cfg32(off);
        let bars = self.dev.lock().unwrap().bars().to_vec();
        let want = match bars
            .iter()
            .find(|b| b.index == i || (b.is_64 && b.index + 1 == i))
        {
            Some(b) if b.index == i => (!(b.size - 1) as u32 & !0xf) | bar_flags(b),
            Some(b) => (!(b.size - 1) >> 32) as u32,
            None => 0,
        };
        assert_eq!(got, want, "BAR register {i} after all-ones");
        self.cfg_write32(off, saved);
    }

    fn check(&self) {
        // Hidden: ROM, INTx pin, multi-function.
        assert_eq!(self.cfg32(regs::ROM_BAR as u64), 0, "ROM hidden");
        assert_eq!(
            (self.cfg32(regs::INTERRUPT_LINE as u64) >> 8) & 0xff,
            0,
            "INTx pin hidden"
        );
        assert_eq!((self.cfg32(0x0c) >> 16) & 0x80, 0, "single function");
        self.check_bars();
        self.check_vectors();
        self.check_device_writes();
    }

    fn check_bars(&self) {
        let dev = self.dev.lock().unwrap();
        let bars = dev.bars().to_vec();
        let traps = dev.trapped_ranges();
        drop(dev);
        for i in 0..6 {
            let v = self.cfg32((regs::BAR0 + 4 * i) as u64);
            match bars
                .iter()
                .find(|b| b.index == i || (b.is_64 && b.index + 1 == i))
            {
                Some(b) if b.index == i => {
                    assert_eq!(v & 0xf, bar_flags(b), "BAR{i} flags");
                    assert_eq!(v & !0xf & (b.size - 1) as u32, 0, "BAR{i} aligned");
                }
                Some(_) => {}
                None => assert_eq!(v, 0, "unused BAR register {i}"),
            }
        }
        let w = windows();
        for b in &bars {
            assert!(w.contains(b.addr, b.size), "BAR{} in the windows", b.index);
        }
        let slots = self.mapper.slots.lock().unwrap().clone();
        assert_eq!(slots.len(), self.slots, "slots are moved, never added");
        for (gpa, len) in slots {
            assert!(
                bars.iter()
                    .any(|b| gpa >= b.addr && gpa + len <= b.addr + b.size),
                "slot {gpa:#x}+{len:#x} lies in a BAR"
            );
        }
        let mut want: Vec<(u64, u64)> = traps.iter().map(|t| (t.addr, t.len)).collect();
        want.push((layout::PCI_ECAM_START.0, layout::PCI_ECAM_SIZE));
        want.sort_unstable();
        assert_eq!(
            self.buses.mmio.ranges(),
            want,
            "traps are where the BARs are"
        );
    }

    fn check_vectors(&self) {
        let routes = self.router.routes.lock().unwrap().clone();
        let mut gsi = layout::MSI_GSI_START;
        if let Some(c) = self.msix {
            let n = c.table_size.min(HOST_MSIX);
            let ctl = self.cfg32(c.cap_offset as u64) >> 16;
            let on = ctl & 0x8000 != 0 && ctl & 0x4000 == 0;
            let bars = self.dev.lock().unwrap().bars().to_vec();
            if let Some(b) = bars.iter().find(|b| b.index == c.table_bar) {
                for i in 0..u32::from(n) {
                    let at = b.addr + c.table_offset + u64::from(i) * 16;
                    let mut e = [0u8; 16];
                    if c.table_offset + u64::from(i + 1) * 16 > b.size {
                        continue;
                    }
                    for k in 0..4 {
                        let dw = &mut e[k * 4..k * 4 + 4];
                        self.buses.mmio.read(at + k as u64 * 4, dw);
                    }
                    let live = on && le32(&e, 12) & 1 == 0;
                    let msg = MsiMessage {
                        addr_lo: le32(&e, 0),
                        addr_hi: le32(&e, 4),
                        data: le32(&e, 8),
                    };
                    let got = routes.get(&(gsi + i));
                    assert_eq!(
                        got,
                        live.then_some(&msg),
                        "MSI-X vector {i} route (control {ctl:#x}, entry {e:x?}, table at {at:#x})"
                    );
                }
            }
            gsi += u32::from(n);
        }
        if let Some(c) = self.msi {
            let cap = c.cap_offset as u64;
            let ctl = self.cfg32(cap) >> 16;
            let data_off = if c.is_64 { 0xc } else { 0x8 };
            let n = 1u32 << ((ctl >> 4) & 7).min(u32::from(c.mmc));
            let mask = if c.per_vector_mask {
                self.cfg32(cap + data_off + 4)
            } else {
                0
            };
            let data = self.cfg32(cap + data_off) & 0xffff;
            for i in 0..c.max_vectors() {
                let live = ctl & 1 != 0 && i < n && mask & (1 << i) == 0;
                let msg = MsiMessage {
                    addr_lo: self.cfg32(cap + 4),
                    addr_hi: if c.is_64 { self.cfg32(cap + 8) } else { 0 },
                    data: (data & !(n - 1)) | (i & (n - 1)),
                };
                let got = routes.get(&(gsi + i));
                assert_eq!(got, live.then_some(&msg), "MSI vector {i} route");
            }
        }
    }

    fn check_device_writes(&self) {
        let mut owned: Vec<(u64, u64)> = vec![(0x10, 0x18), (0x30, 4), (0x3c, 4)];
        if let Some(c) = self.msi {
            owned.push((c.cap_offset as u64, c.len() as u64));
        }
        let mut table = Vec::new();
        if let Some(c) = self.msix {
            owned.push((c.cap_offset as u64, 4));
            table.push((c.table_bar as u32, (c.table_offset, c.table_len())));
            table.push((c.pba_bar as u32, (c.pba_offset, c.pba_len())));
        }
        let log = self.mock.log.lock().unwrap();
        let (cw, rw, rr) = self.checked.get();
        self.checked.set((
            log.config_writes.len(),
            log.region_writes.len(),
            log.region_reads.len(),
        ));
        for (off, bytes) in &log.config_writes[cw..] {
            let w = (*off, bytes.len() as u64);
            assert!(
                !owned.iter().any(|o| overlaps(*o, w)),
                "config write {off:#x}+{} reached the device",
                bytes.len()
            );
        }
        let hits = |region: u32, off: u64, len: usize| {
            table
                .iter()
                .any(|(r, t)| *r == region && overlaps(*t, (off, len as u64)))
        };
        for (region, off, bytes) in &log.region_writes[rw..] {
            assert!(
                !hits(*region, *off, bytes.len()),
                "a write to the MSI-X table or PBA reached the device"
            );
        }
        for (region, off, len) in &log.region_reads[rr..] {
            assert!(
                !hits(*region, *off, *len),
                "MSI-X table/PBA read from the device"
            );
        }
    }

    /// Walks the extended capabilities as a guest would.
    fn check_extended(&self) {
        let mut ptr = 0x100u64;
        let mut seen = Vec::new();
        while (0x100..0x1000).contains(&ptr) && !seen.contains(&ptr) && seen.len() < 64 {
            seen.push(ptr);
            let h = self.cfg32(ptr);
            if h == 0 || h == u32::MAX {
                break;
            }
            assert!(
                !HIDDEN_EXT.contains(&(h & 0xffff)),
                "hidden capability {h:#x} visible"
            );
            ptr = u64::from((h >> 20) & 0xffc);
        }
    }
}

/// The flag bits a memory BAR must keep.
fn bar_flags(b: &crate::pci::bar::BarInfo) -> u32 {
    (if b.is_64 { 0b100 } else { 0 }) | (if b.prefetchable { 0b1000 } else { 0 })
}

/// An ECAM address, mostly in slot 1.
fn ecam_offset(input: &mut Input) -> u64 {
    let slot = [1, 1, 1, 0, 2, 31][usize::from(input.u8()) % 6];
    let off = u64::from(input.u16() & 0xfff);
    layout::PCI_ECAM_START.0 + (slot << 15) + off
}

fn run(rig: &Rig, input: &mut Input) {
    rig.check();
    rig.check_extended();
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        rig.step(input);
        rig.check();
    }
    rig.check_extended();
}

/// The igbvf-shaped mock VF on the PCI root, driven by `data`.
pub fn pci_bus(data: &[u8]) {
    let rig = Rig::new(MockVfio::igbvf()).expect("the igbvf mock is accepted");
    run(&rig, &mut Input::new(data));
    drop(rig);
}

/// A function whose configuration space starts with the first bytes of
/// `data` (the rest drives the guest side).
pub fn device_config(data: &[u8]) {
    let mut input = Input::new(data);
    let n = usize::from(input.u16() % 0x400);
    let mut cfg = [0u8; 4096];
    for b in cfg.iter_mut().take(n) {
        *b = input.u8();
    }
    let Some(rig) = Rig::new(MockVfio::with_config(cfg)) else {
        return;
    };
    // Overlapping MSI and MSI-X capabilities have no single right answer
    // for the route checks; everything else still holds.
    let rig = match (rig.msi, rig.msix) {
        (Some(a), Some(b))
            if overlaps(
                (a.cap_offset as u64, a.len() as u64),
                (b.cap_offset as u64, 4),
            ) =>
        {
            Rig {
                msi: None,
                msix: None,
                ..rig
            }
        }
        _ => rig,
    };
    run(&rig, &mut input);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let p = format!(
            "{}/fuzz/corpus/pci_bus/seed-{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(p).unwrap()
    }

    #[test]
    fn the_seeds_reach_live_vectors_and_moved_bars() {
        let rig = Rig::new(MockVfio::igbvf()).unwrap();
        run(&rig, &mut Input::new(&seed("msix")));
        let routes = rig.router.routes.lock().unwrap().clone();
        let msg = |addr_lo, data| MsiMessage {
            addr_lo,
            addr_hi: 0,
            data,
        };
        let gsi = layout::MSI_GSI_START;
        assert_eq!(routes.get(&gsi), Some(&msg(0xfee0_0000, 0x41)));
        assert_eq!(routes.get(&(gsi + 1)), Some(&msg(0xfee0_3000, 0x42)));
        let rig = Rig::new(MockVfio::igbvf()).unwrap();
        run(&rig, &mut Input::new(&seed("move")));
        let bars = rig.dev.lock().unwrap().bars().to_vec();
        assert_eq!(bars[1].addr, 0xc010_0000, "BAR3 moved");
        let rig = Rig::new(MockVfio::igbvf()).unwrap();
        run(&rig, &mut Input::new(&seed("msi")));
        assert_eq!(
            rig.router.routes.lock().unwrap().len(),
            0,
            "MSI on, then off"
        );
    }

    #[test]
    fn a_broken_invariant_is_caught() {
        // The check itself must be able to fail: a route the guest never
        // programmed is reported.
        let rig = Rig::new(MockVfio::igbvf()).unwrap();
        let fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        let m = MsiMessage {
            addr_lo: 1,
            addr_hi: 0,
            data: 0,
        };
        crate::interrupts::MsiRouter::route(&*rig.router, layout::MSI_GSI_START, Some(m), &fd)
            .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rig.check()));
        assert!(caught.is_err());
    }
}
