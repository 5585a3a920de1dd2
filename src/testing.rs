//! Test doubles shared by the unit tests and the fuzz harnesses: an
//! interrupt router, a guest mapper and a VFIO device shaped like an igbvf
//! VF, plus the skip report.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{self, PciWindows, Window};
use crate::devices::bus::Bus;
use crate::interrupts::{InterruptError, MsiMessage, MsiRouter};
use crate::pci::bar_space::BarSpace;
use crate::pci::regs;
use crate::vfio::{BackendError, MmapArea, RegionInfo, VfioBackend};
use crate::vm::{GuestMapper, VmError};

/// Tiny guest kernels (shared with the integration tests).
#[path = "../tests/common/tiny.rs"]
#[allow(dead_code)]
pub mod tiny;

/// Reports a test that cannot run here: prints `SKIPPED: <reason>` and, when
/// `VFLAUNCH_SKIP_LOG` names a file, appends `<test>: <reason>` to it, so the
/// test command can say how many tests skipped and why.
pub fn skip(test: &str, reason: &str) {
    println!("SKIPPED: {reason}");
    if let Some(path) = std::env::var_os("VFLAUNCH_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The 32-bit PCI window the mocks place BARs in.
pub const W32: u64 = layout::PCI_MMIO32_START.0;

/// PCI windows for tests: 256 MiB low, 1 GiB at 64 GiB.
pub fn windows() -> PciWindows {
    PciWindows {
        mmio32: Window::new(W32, 0x1000_0000),
        mmio64: Window::new(1 << 36, 1 << 30),
    }
}

/// A BAR space over a mock mapper, trapping on `mmio`.
pub fn bar_space(mmio: &Arc<Bus>) -> BarSpace {
    BarSpace::new(windows(), Arc::new(MockMapper::default()), mmio)
}

/// Records routing calls instead of talking to KVM.
#[derive(Default)]
pub struct MockRouter {
    /// Live routes.
    pub routes: Mutex<BTreeMap<u32, MsiMessage>>,
    next: Mutex<u32>,
}

impl MsiRouter for MockRouter {
    fn allocate_gsis(&self, count: u32) -> Result<u32, InterruptError> {
        let mut n = self.next.lock().unwrap();
        let first = layout::MSI_GSI_START + *n;
        *n += count;
        Ok(first)
    }

    fn route(
        &self,
        gsi: u32,
        msg: Option<MsiMessage>,
        _fd: &EventFd,
    ) -> Result<(), InterruptError> {
        let mut r = self.routes.lock().unwrap();
        match msg {
            Some(m) => r.insert(gsi, m),
            None => r.remove(&gsi),
        };
        Ok(())
    }
}

/// Records the memory slots a device asks for; like KVM, refuses a slot
/// that overlaps another one.
#[derive(Default)]
pub struct MockMapper {
    /// (guest address, length) per slot.
    pub slots: Mutex<Vec<(u64, u64)>>,
    /// (slot, new guest address) per move.
    pub moves: Mutex<Vec<(u32, u64)>>,
    /// Guest addresses a slot may not move to (KVM refusing, e.g. EEXIST).
    pub refuse: Mutex<Vec<u64>>,
}

impl GuestMapper for MockMapper {
    fn map_memory(&self, gpa: u64, len: u64, _host: u64) -> Result<u32, VmError> {
        let mut s = self.slots.lock().unwrap();
        if s.iter().any(|&(g, l)| gpa < g + l && g < gpa + len) {
            let e = kvm_ioctls::Error::new(libc::EEXIST);
            return Err(VmError::Kvm("set a memory slot", e));
        }
        s.push((gpa, len));
        Ok(s.len() as u32 - 1)
    }

    fn move_memory(&self, slot: u32, gpa: u64, len: u64, _host: u64) -> Result<(), VmError> {
        let overlaps = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .any(|(i, &(g, l))| i != slot as usize && gpa < g + l && g < gpa + len);
        if overlaps || self.refuse.lock().unwrap().contains(&gpa) {
            let e = kvm_ioctls::Error::new(libc::EEXIST);
            return Err(VmError::Kvm("set a memory slot", e));
        }
        self.slots.lock().unwrap()[slot as usize] = (gpa, len);
        self.moves.lock().unwrap().push((slot, gpa));
        Ok(())
    }
}

/// What the guest-facing code asked of the mock device.
#[derive(Default)]
pub struct VfioLog {
    /// Configuration writes that reached the device.
    pub config_writes: Vec<(u64, Vec<u8>)>,
    /// Trapped BAR reads: (region, offset, length).
    pub region_reads: Vec<(u32, u64, usize)>,
    /// Trapped BAR writes: (region, offset, bytes).
    pub region_writes: Vec<(u32, u64, Vec<u8>)>,
    /// Vector count while host MSI-X is on.
    pub msix_enabled_with: Option<usize>,
    /// Host MSI-X disables.
    pub msix_disables: usize,
    /// Vector count while host MSI is on.
    pub msi_enabled_with: Option<usize>,
    /// Host MSI disables.
    pub msi_disables: usize,
    /// Function resets.
    pub resets: usize,
}

/// A mock VF shaped like igbvf: BAR0 and BAR3 64-bit 16 KiB, MSI then
/// MSI-X (3 vectors, table at BAR3+0, PBA at BAR3+0x2000) then PCIe; MSI is
/// 64-bit, one vector. Extended space: AER -> ARI (hidden) -> ATS.
pub struct MockVfio {
    /// Configuration space.
    pub cfg: Mutex<[u8; 4096]>,
    /// What happened.
    pub log: Mutex<VfioLog>,
}

/// Writes `bytes` into `cfg` at `off`.
pub fn put(cfg: &mut [u8], off: usize, bytes: &[u8]) {
    cfg[off..off + bytes.len()].copy_from_slice(bytes);
}

impl MockVfio {
    /// A mock with the igbvf mock's regions and `cfg` as configuration space.
    pub fn with_config(cfg: [u8; 4096]) -> Arc<Self> {
        Arc::new(MockVfio {
            cfg: Mutex::new(cfg),
            log: Mutex::new(VfioLog::default()),
        })
    }

    /// The igbvf-shaped mock.
    pub fn igbvf() -> Arc<Self> {
        let mut c = [0u8; 4096];
        put(&mut c, 0x00, &0x10ca_8086u32.to_le_bytes());
        put(&mut c, 0x06, &regs::STATUS_CAP_LIST.to_le_bytes());
        put(&mut c, 0x0e, &[0x80]); // claims multi-function
        put(&mut c, 0x10, &0x0000_000cu32.to_le_bytes()); // BAR0: 64-bit prefetchable
        put(&mut c, 0x1c, &0x0000_000cu32.to_le_bytes()); // BAR3: 64-bit prefetchable
        put(&mut c, 0x30, &0xfffe_0001u32.to_le_bytes()); // a ROM that must stay hidden
        put(&mut c, 0x3d, &[1]); // INTA
        put(&mut c, regs::CAP_PTR, &[0x40]);
        put(&mut c, 0x40, &[regs::CAP_ID_MSI, 0x70, 0x80, 0x00]);
        put(&mut c, 0x70, &[regs::CAP_ID_MSIX, 0xa0, 0x02, 0x00]);
        put(&mut c, 0x74, &0x0000_0003u32.to_le_bytes());
        put(&mut c, 0x78, &0x0000_2003u32.to_le_bytes());
        put(&mut c, 0xa0, &[0x10, 0x00, 0x02, 0x00]);
        let ext = |id: u32, next: u32| (id | (1 << 16) | (next << 20)).to_le_bytes();
        put(&mut c, 0x100, &ext(0x0001, 0x150)); // AER
        put(&mut c, 0x150, &ext(0x000e, 0x160)); // ARI
        put(&mut c, 0x154, &0x0000_1200u32.to_le_bytes());
        put(&mut c, 0x160, &ext(0x000f, 0)); // ATS
        Arc::new(MockVfio {
            cfg: Mutex::new(c),
            log: Mutex::new(VfioLog::default()),
        })
    }
}

impl VfioBackend for MockVfio {
    fn config_read(&self, offset: u64, buf: &mut [u8]) {
        let c = self.cfg.lock().unwrap();
        let o = offset as usize;
        buf.copy_from_slice(&c[o..o + buf.len()]);
    }
    fn config_write(&self, offset: u64, buf: &[u8]) {
        let mut l = self.log.lock().unwrap();
        l.config_writes.push((offset, buf.to_vec()));
    }
    fn region(&self, index: u32) -> RegionInfo {
        let bar = |msix_mappable| RegionInfo {
            size: 0x4000,
            mmap: true,
            msix_mappable,
            ..Default::default()
        };
        match index {
            0 => bar(false),
            3 => bar(true),
            7 => RegionInfo {
                size: 0x1000,
                ..Default::default()
            },
            _ => RegionInfo::default(),
        }
    }
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) {
        buf.fill(0xab);
        let mut l = self.log.lock().unwrap();
        l.region_reads.push((index, offset, buf.len()));
    }
    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) {
        let mut l = self.log.lock().unwrap();
        l.region_writes.push((index, offset, buf.to_vec()));
    }
    fn mmap(&self, index: u32, offset: u64, len: u64) -> Result<MmapArea, BackendError> {
        // Shared pages of /dev/zero stand in for device memory.
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .map_err(|e| BackendError::Mmap(index, offset, e))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&zero);
        MmapArea::map(fd, 0, len as usize, true).map_err(|e| BackendError::Mmap(index, offset, e))
    }
    fn msix_vectors(&self) -> u32 {
        3
    }
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), BackendError> {
        self.log.lock().unwrap().msix_enabled_with = Some(fds.len());
        Ok(())
    }
    fn disable_msix(&self) -> Result<(), BackendError> {
        let mut l = self.log.lock().unwrap();
        l.msix_enabled_with = None;
        l.msix_disables += 1;
        Ok(())
    }
    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), BackendError> {
        self.log.lock().unwrap().msi_enabled_with = Some(fds.len());
        Ok(())
    }
    fn disable_msi(&self) -> Result<(), BackendError> {
        let mut l = self.log.lock().unwrap();
        l.msi_enabled_with = None;
        l.msi_disables += 1;
        Ok(())
    }
    fn reset(&self) {
        self.log.lock().unwrap().resets += 1;
    }
}
