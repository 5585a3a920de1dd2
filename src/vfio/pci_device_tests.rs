//! Tests for the VFIO PCI device model, against a mock host device shaped
//! like an igbvf VF: BAR0 and BAR3 64-bit 16 KiB, MSI then MSI-X (3 vectors,
//! table at BAR3+0, PBA at BAR3+0x2000) then PCIe; MSI is 64-bit, one vector.

use std::sync::Mutex;

use super::*;
use crate::interrupts::tests::MockRouter;
use crate::interrupts::MsiMessage;
use crate::pci::msix::{CTL_ENABLE, CTL_FUNCTION_MASK};
use crate::vm::{GuestMapper, VmError};

#[derive(Default)]
struct Log {
    config_writes: Vec<(u64, Vec<u8>)>,
    region_reads: Vec<(u32, u64, usize)>,
    region_writes: Vec<(u32, u64, Vec<u8>)>,
    msix_enabled_with: Option<usize>,
    msix_disables: usize,
    msi_enabled_with: Option<usize>,
    msi_disables: usize,
    resets: usize,
}

struct MockVfio {
    cfg: Mutex<[u8; 4096]>,
    log: Mutex<Log>,
}

fn put(cfg: &mut [u8], off: usize, bytes: &[u8]) {
    cfg[off..off + bytes.len()].copy_from_slice(bytes);
}

impl MockVfio {
    fn igbvf() -> Arc<Self> {
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
        // Extended: AER at 0x100 -> ARI at 0x150 -> ATS at 0x160.
        put(
            &mut c,
            0x100,
            &(0x0001u32 | (1 << 16) | (0x150 << 20)).to_le_bytes(),
        );
        put(
            &mut c,
            0x150,
            &(0x000eu32 | (1 << 16) | (0x160 << 20)).to_le_bytes(),
        );
        put(&mut c, 0x154, &0x0000_1200u32.to_le_bytes());
        put(&mut c, 0x160, &(0x000fu32 | (1 << 16)).to_le_bytes());
        Arc::new(MockVfio {
            cfg: Mutex::new(c),
            log: Mutex::new(Log::default()),
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
        self.log
            .lock()
            .unwrap()
            .config_writes
            .push((offset, buf.to_vec()));
    }
    fn region(&self, index: u32) -> RegionInfo {
        match index {
            0 => RegionInfo {
                size: 0x4000,
                mmap: true,
                writable: true,
                ..Default::default()
            },
            3 => RegionInfo {
                size: 0x4000,
                mmap: true,
                writable: true,
                msix_mappable: true,
                ..Default::default()
            },
            7 => RegionInfo {
                size: 0x1000,
                writable: true,
                ..Default::default()
            },
            _ => RegionInfo::default(),
        }
    }
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) {
        buf.fill(0xab);
        self.log
            .lock()
            .unwrap()
            .region_reads
            .push((index, offset, buf.len()));
    }
    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .region_writes
            .push((index, offset, buf.to_vec()));
    }
    fn mmap(
        &self,
        _index: u32,
        _offset: u64,
        len: u64,
    ) -> Result<MmapArea, super::super::BackendError> {
        // Shared pages of /dev/zero stand in for device memory.
        let zero = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/zero")
            .unwrap();
        MmapArea::map(
            std::os::fd::AsRawFd::as_raw_fd(&zero),
            0,
            len as usize,
            true,
        )
        .map_err(|e| super::super::BackendError::Mmap(0, 0, e))
    }
    fn msix_vectors(&self) -> u32 {
        3
    }
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), super::super::BackendError> {
        self.log.lock().unwrap().msix_enabled_with = Some(fds.len());
        Ok(())
    }
    fn disable_msix(&self) -> Result<(), super::super::BackendError> {
        let mut l = self.log.lock().unwrap();
        l.msix_enabled_with = None;
        l.msix_disables += 1;
        Ok(())
    }
    fn enable_msi(&self, fds: &[&EventFd]) -> Result<(), super::super::BackendError> {
        self.log.lock().unwrap().msi_enabled_with = Some(fds.len());
        Ok(())
    }
    fn disable_msi(&self) -> Result<(), super::super::BackendError> {
        let mut l = self.log.lock().unwrap();
        l.msi_enabled_with = None;
        l.msi_disables += 1;
        Ok(())
    }
    fn reset(&self) {
        self.log.lock().unwrap().resets += 1;
    }
}

const W32: u64 = 0xc000_0000;

fn device() -> (VfioPciDevice, Arc<MockVfio>, Arc<MockRouter>) {
    let mock = MockVfio::igbvf();
    let router = Arc::new(MockRouter::default());
    let mut m32 = MmioAllocator::new(W32, 0x1000_0000);
    let mut m64 = MmioAllocator::new(1 << 36, 1 << 30);
    let d = VfioPciDevice::new(
        "0000:00:12.0",
        mock.clone(),
        router.clone(),
        &mut m32,
        &mut m64,
    )
    .unwrap();
    (d, mock, router)
}

fn cfg_write32(d: &mut VfioPciDevice, off: usize, v: u32) {
    d.write_config(off / 4, 0, &v.to_le_bytes());
}

#[test]
fn bars_are_placed_and_sized_like_hardware() {
    let (mut d, mock, _) = device();
    assert_eq!(d.bars().len(), 2);
    assert_eq!((d.bars()[0].index, d.bars()[0].addr), (0, W32));
    assert_eq!((d.bars()[1].index, d.bars()[1].addr), (3, W32 + 0x4000));
    assert_eq!(d.read_config(4), (W32 as u32) | 0xc);
    assert_eq!(d.read_config(5), 0);
    // Sizing: all-ones, read back the mask, restore.
    cfg_write32(&mut d, 0x1c, 0xffff_ffff);
    cfg_write32(&mut d, 0x20, 0xffff_ffff);
    assert_eq!(d.read_config(7), 0xffff_c00c);
    assert_eq!(d.read_config(8), 0xffff_ffff);
    cfg_write32(&mut d, 0x1c, (W32 + 0x4000) as u32);
    cfg_write32(&mut d, 0x20, 0);
    assert_eq!(d.read_config(7), (W32 as u32 + 0x4000) | 0xc);
    // Unused BARs read zero; BAR writes never reach the device.
    assert_eq!(d.read_config(6), 0);
    assert!(mock.log.lock().unwrap().config_writes.is_empty());
    // The device was reset before being looked at.
    assert_eq!(mock.log.lock().unwrap().resets, 1);
}

#[test]
fn rom_intx_and_multifunction_are_hidden() {
    let (mut d, _, _) = device();
    assert_eq!(d.read_config(regs::ROM_BAR / 4), 0);
    cfg_write32(&mut d, regs::ROM_BAR, 0xffff_ffff);
    assert_eq!(d.read_config(regs::ROM_BAR / 4), 0);
    let r3 = d.read_config(3);
    assert_eq!((r3 >> 16) & 0x80, 0, "multi-function bit masked");
    d.write_config(regs::INTERRUPT_LINE / 4, 0, &[11]);
    let r = d.read_config(regs::INTERRUPT_LINE / 4);
    assert_eq!(r & 0xff, 11);
    assert_eq!((r >> 8) & 0xff, 0, "no INTx pin");
}

#[test]
fn guest_walks_the_capability_list() {
    let (mut d, mock, _) = device();
    let byte =
        |d: &mut VfioPciDevice, off: usize| (d.read_config(off / 4) >> ((off % 4) * 8)) as u8;
    let mut ids = Vec::new();
    let mut ptr = byte(&mut d, regs::CAP_PTR) as usize;
    while ptr != 0 {
        ids.push(byte(&mut d, ptr));
        ptr = byte(&mut d, ptr + 1) as usize;
    }
    assert_eq!(ids, vec![regs::CAP_ID_MSI, regs::CAP_ID_MSIX, 0x10]);
    // MSI capability writes are emulated; other writes pass through.
    d.write_config(0x44 / 4, 0, &[0xff]);
    d.write_config(1, 0, &0x0006u16.to_le_bytes());
    assert_eq!(
        mock.log.lock().unwrap().config_writes,
        vec![(4, vec![6, 0])]
    );
}

#[test]
fn msi_enable_routes_the_programmed_message() {
    let (mut d, mock, router) = device();
    // MSI-X took GSIs 24..27; MSI (one vector) comes next.
    let gsi = crate::arch::x86_64::layout::MSI_GSI_START + 3;
    cfg_write32(&mut d, 0x44, 0xfee0_2000);
    cfg_write32(&mut d, 0x48, 0);
    d.write_config(0x4c / 4, 0, &0x4071u16.to_le_bytes());
    assert!(router.routes.lock().unwrap().is_empty());
    d.write_config(0x40 / 4, 2, &0x0081u16.to_le_bytes());
    assert_eq!(mock.log.lock().unwrap().msi_enabled_with, Some(1));
    assert_eq!(
        router.routes.lock().unwrap().get(&gsi),
        Some(&MsiMessage {
            addr_lo: 0xfee0_2000,
            addr_hi: 0,
            data: 0x4071
        })
    );
    assert_eq!(
        d.read_config(0x40 / 4) >> 16,
        0x0081,
        "guest reads its enable bit back"
    );
    // A new message while enabled re-routes; disabling removes the route.
    d.write_config(0x4c / 4, 0, &0x4072u16.to_le_bytes());
    assert_eq!(router.routes.lock().unwrap()[&gsi].data, 0x4072);
    d.write_config(0x40 / 4, 2, &0x0080u16.to_le_bytes());
    assert!(router.routes.lock().unwrap().is_empty());
    assert_eq!(mock.log.lock().unwrap().msi_disables, 1);
    assert!(
        mock.log.lock().unwrap().config_writes.is_empty(),
        "MSI writes never reach the device"
    );
}

fn program_vector(d: &mut VfioPciDevice, i: u64, data: u32, masked: bool) {
    let base = W32 + 0x4000 + i * 16;
    d.mmio_write(base, &0xfee0_0000u32.to_le_bytes());
    d.mmio_write(base + 4, &0u32.to_le_bytes());
    d.mmio_write(base + 8, &data.to_le_bytes());
    d.mmio_write(base + 12, &u32::from(masked).to_le_bytes());
}

fn set_msix_control(d: &mut VfioPciDevice, ctl: u16) {
    d.write_config(0x70 / 4, 2, &ctl.to_le_bytes());
}

#[test]
fn msix_enable_routes_only_unmasked_vectors() {
    let (mut d, mock, router) = device();
    program_vector(&mut d, 0, 0x41, false);
    program_vector(&mut d, 1, 0x42, true);
    program_vector(&mut d, 2, 0x43, false);
    assert!(
        router.routes.lock().unwrap().is_empty(),
        "nothing routed before enable"
    );
    set_msix_control(&mut d, CTL_ENABLE | CTL_FUNCTION_MASK);
    assert_eq!(mock.log.lock().unwrap().msix_enabled_with, Some(3));
    assert!(
        router.routes.lock().unwrap().is_empty(),
        "function mask holds all vectors"
    );
    set_msix_control(&mut d, CTL_ENABLE);
    let gsi = crate::arch::x86_64::layout::MSI_GSI_START;
    {
        let routes = router.routes.lock().unwrap();
        assert_eq!(
            routes.keys().copied().collect::<Vec<_>>(),
            vec![gsi, gsi + 2]
        );
        assert_eq!(
            routes[&gsi],
            MsiMessage {
                addr_lo: 0xfee0_0000,
                addr_hi: 0,
                data: 0x41
            }
        );
    }
    // The guest sees its own control bits back, table size untouched.
    assert_eq!(d.read_config(0x70 / 4) >> 16, u32::from(CTL_ENABLE | 2));
    // Unmask vector 1 with a new message; mask vector 0.
    program_vector(&mut d, 1, 0x52, false);
    d.mmio_write(W32 + 0x4000 + 12, &1u32.to_le_bytes());
    {
        let routes = router.routes.lock().unwrap();
        assert_eq!(
            routes.keys().copied().collect::<Vec<_>>(),
            vec![gsi + 1, gsi + 2]
        );
        assert_eq!(routes[&(gsi + 1)].data, 0x52);
    }
    // Reading the table back gives what the guest wrote.
    let mut v = [0u8; 4];
    d.mmio_read(W32 + 0x4000 + 16 + 8, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0x52);
    // Disable: routes gone, host MSI-X off.
    set_msix_control(&mut d, 0);
    assert!(router.routes.lock().unwrap().is_empty());
    assert_eq!(mock.log.lock().unwrap().msix_disables, 1);
    // The table writes never reached the device.
    assert!(mock.log.lock().unwrap().region_writes.is_empty());
}

#[test]
fn trapped_pages_outside_the_table_pass_through() {
    let (mut d, mock, _) = device();
    let mut b = [0u8; 4];
    // PBA reads as "nothing pending" without touching the device.
    d.mmio_read(W32 + 0x4000 + 0x2000, &mut b);
    assert_eq!(b, [0; 4]);
    // The rest of the table page goes to the device.
    d.mmio_read(W32 + 0x4000 + 0x800, &mut b);
    assert_eq!(b, [0xab; 4]);
    d.mmio_write(W32 + 0x4000 + 0x2100, &[1, 2, 3, 4]);
    let l = mock.log.lock().unwrap();
    assert_eq!(l.region_reads, vec![(3, 0x800, 4)]);
    assert_eq!(l.region_writes, vec![(3, 0x2100, vec![1, 2, 3, 4])]);
}

#[test]
fn only_msix_pages_trap() {
    let (d, _, _) = device();
    let areas: Vec<(usize, u64, u64)> = d
        .mmap_areas()
        .iter()
        .map(|(b, o, l)| (b.index, *o, *l))
        .collect();
    assert_eq!(
        areas,
        vec![(0, 0, 0x4000), (3, 0x1000, 0x1000), (3, 0x3000, 0x1000)]
    );
    let bar3 = W32 + 0x4000;
    let traps: Vec<(u64, u64)> = d
        .trapped_ranges()
        .iter()
        .map(|(b, o, l)| (b.addr + o, *l))
        .collect();
    assert_eq!(traps, vec![(bar3, 0x1000), (bar3 + 0x2000, 0x1000)]);
}

#[test]
fn quiesce_disables_interrupts_and_resets() {
    let (mut d, mock, router) = device();
    program_vector(&mut d, 0, 0x41, false);
    set_msix_control(&mut d, CTL_ENABLE);
    assert_eq!(router.routes.lock().unwrap().len(), 1);
    d.quiesce();
    assert!(router.routes.lock().unwrap().is_empty());
    let l = mock.log.lock().unwrap();
    assert_eq!(l.msix_disables, 1);
    assert_eq!(l.resets, 2, "reset at creation and at shutdown");
    drop(l);
    d.quiesce();
    assert_eq!(mock.log.lock().unwrap().resets, 2, "quiesce is idempotent");
}

#[test]
fn mmap_plan_respects_sparse_areas_and_old_kernels() {
    let bar = BarInfo {
        index: 3,
        size: 0x4000,
        is_64: true,
        prefetchable: false,
        addr: 0,
    };
    let cap = MsixCap::parse(0x70, 2, 3, 0x2003);
    let old = RegionInfo {
        size: 0x4000,
        mmap: true,
        ..Default::default()
    };
    assert!(
        mmap_plan(&bar, &old, Some(&cap)).is_empty(),
        "no MSIX_MAPPABLE: trap the whole BAR"
    );
    let sparse = RegionInfo {
        size: 0x4000,
        mmap: true,
        sparse: Some(vec![(0x1000, 0x1000), (0x3000, 0x1000)]),
        ..Default::default()
    };
    assert_eq!(
        mmap_plan(&bar, &sparse, Some(&cap)),
        vec![(0x1000, 0x1000), (0x3000, 0x1000)]
    );
    let none = RegionInfo {
        size: 0x4000,
        ..Default::default()
    };
    assert!(mmap_plan(&bar, &none, None).is_empty());
    // Sub-page BARs cannot be mapped.
    let small = BarInfo { size: 0x100, ..bar };
    assert!(mmap_plan(
        &small,
        &RegionInfo {
            size: 0x100,
            mmap: true,
            ..Default::default()
        },
        None
    )
    .is_empty());
    assert_eq!(
        trap_ranges(0x4000, &[(0x1000, 0x1000)]),
        vec![(0, 0x1000), (0x2000, 0x2000)]
    );
    assert_eq!(trap_ranges(0x1000, &[]), vec![(0, 0x1000)]);
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
}

/// Records what the device asks of the guest address space.
#[derive(Default)]
struct MockMapper {
    slots: Mutex<Vec<(u64, u64)>>,
    traps: Mutex<std::collections::BTreeMap<u64, u64>>,
    moves: Mutex<Vec<(u32, u64)>>,
}

impl GuestMapper for MockMapper {
    fn map_memory(&self, gpa: u64, len: u64, _host: u64) -> Result<u32, VmError> {
        let mut s = self.slots.lock().unwrap();
        s.push((gpa, len));
        Ok(s.len() as u32 - 1)
    }
    fn move_memory(&self, slot: u32, gpa: u64, len: u64, _host: u64) -> Result<(), VmError> {
        self.slots.lock().unwrap()[slot as usize] = (gpa, len);
        self.moves.lock().unwrap().push((slot, gpa));
        Ok(())
    }
    fn add_trap(
        &self,
        gpa: u64,
        len: u64,
        _dev: crate::devices::bus::SharedDevice,
    ) -> Result<(), VmError> {
        self.traps.lock().unwrap().insert(gpa, len);
        Ok(())
    }
    fn remove_trap(&self, gpa: u64) {
        self.traps.lock().unwrap().remove(&gpa);
    }
    fn in_pci_window(&self, gpa: u64, len: u64) -> bool {
        gpa >= W32 && gpa + len <= W32 + 0x1000_0000
    }
}

fn attached() -> (Arc<Mutex<VfioPciDevice>>, Arc<MockMapper>) {
    let (d, _, _) = device();
    let d = Arc::new(Mutex::new(d));
    let mapper = Arc::new(MockMapper::default());
    VfioPciDevice::attach(&d, mapper.clone()).unwrap();
    (d, mapper)
}

#[test]
fn attach_maps_bars_and_traps_msix_pages() {
    let (_d, m) = attached();
    let bar3 = W32 + 0x4000;
    assert_eq!(
        *m.slots.lock().unwrap(),
        vec![
            (W32, 0x4000),
            (bar3 + 0x1000, 0x1000),
            (bar3 + 0x3000, 0x1000)
        ]
    );
    let traps: Vec<(u64, u64)> = m
        .traps
        .lock()
        .unwrap()
        .iter()
        .map(|(a, l)| (*a, *l))
        .collect();
    assert_eq!(traps, vec![(bar3, 0x1000), (bar3 + 0x2000, 0x1000)]);
}

#[test]
fn sizing_is_not_a_move() {
    let (d, m) = attached();
    let mut d = d.lock().unwrap();
    // Linux: decode off, all-ones, read, restore, decode on.
    d.write_config(1, 0, &0u16.to_le_bytes());
    cfg_write32(&mut d, 0x1c, 0xffff_ffff);
    cfg_write32(&mut d, 0x20, 0xffff_ffff);
    cfg_write32(&mut d, 0x1c, (W32 + 0x4000) as u32);
    cfg_write32(&mut d, 0x20, 0);
    d.write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    assert!(m.moves.lock().unwrap().is_empty());
}

#[test]
fn a_moved_bar_takes_its_mappings_and_traps_along() {
    let (d, m) = attached();
    let mut d = d.lock().unwrap();
    let new = W32 + 0x10_0000;
    d.write_config(1, 0, &0u16.to_le_bytes());
    cfg_write32(&mut d, 0x1c, new as u32);
    cfg_write32(&mut d, 0x20, 0);
    assert!(
        m.moves.lock().unwrap().is_empty(),
        "nothing moves while decoding is off"
    );
    d.write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    assert_eq!(
        *m.moves.lock().unwrap(),
        vec![(1, new + 0x1000), (2, new + 0x3000)]
    );
    let traps: Vec<u64> = m.traps.lock().unwrap().keys().copied().collect();
    assert_eq!(traps, vec![new, new + 0x2000]);
    assert_eq!(d.bars()[1].addr, new);
    // The MSI-X table answers at the new place.
    d.mmio_write(new + 8, &0x4055u32.to_le_bytes());
    let mut v = [0u8; 4];
    d.mmio_read(new + 8, &mut v);
    assert_eq!(u32::from_le_bytes(v), 0x4055);
    // A move outside the PCI windows is refused; the BAR stays.
    cfg_write32(&mut d, 0x10, 0x1000_0000);
    d.write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    assert_eq!(d.bars()[0].addr, W32);
    assert_eq!(m.moves.lock().unwrap().len(), 2);
}
