//! Tests for the device model as the guest sees it, against the
//! igbvf-shaped mock: placement by the caller, the capability walk, trapped
//! accesses, and BAR moves applied by the PCI root's BAR space.

use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::bus::Bus;
use crate::pci::bar::BarAllocator;
use crate::pci::bar_space::BarSpace;
use crate::pci::msix::CTL_ENABLE;
use crate::pci::root::PciRoot;
use crate::pci::SharedPciDevice;
use crate::testing::{windows, MockMapper, MockRouter, MockVfio, W32};

struct Fixture {
    dev: VfioPciDevice,
    mock: Arc<MockVfio>,
    router: Arc<MockRouter>,
    mapper: Arc<MockMapper>,
}

fn fixture() -> Fixture {
    let mock = MockVfio::igbvf();
    let probe = VfioProbe::new("0000:00:12.0", &*mock);
    let mut alloc = BarAllocator::new(windows());
    let bars = probe
        .bar_requests()
        .iter()
        .map(|r| alloc.place(r).unwrap())
        .collect();
    let router = Arc::new(MockRouter::default());
    let mapper = Arc::new(MockMapper::default());
    let dev = VfioPciDevice::new(
        "0000:00:12.0",
        mock.clone(),
        probe,
        bars,
        router.clone(),
        &*mapper,
    )
    .unwrap();
    Fixture {
        dev,
        mock,
        router,
        mapper,
    }
}

fn cfg_write32(d: &mut dyn PciDevice, off: usize, v: u32) -> ConfigWriteResult {
    d.write_config(off / 4, 0, &v.to_le_bytes())
}

#[test]
fn bars_are_placed_by_the_caller_and_sized_like_hardware() {
    let Fixture { mut dev, mock, .. } = fixture();
    let d = &mut dev;
    assert_eq!(d.bars().len(), 2);
    assert_eq!((d.bars()[0].index, d.bars()[0].addr), (0, W32));
    assert_eq!((d.bars()[1].index, d.bars()[1].addr), (3, W32 + 0x4000));
    assert_eq!(d.read_config(4), (W32 as u32) | 0xc);
    assert_eq!(d.read_config(5), 0);
    // Sizing: all-ones, read back the mask, restore.
    let _ = cfg_write32(d, 0x1c, 0xffff_ffff);
    let _ = cfg_write32(d, 0x20, 0xffff_ffff);
    assert_eq!(d.read_config(7), 0xffff_c00c);
    assert_eq!(d.read_config(8), 0xffff_ffff);
    let _ = cfg_write32(d, 0x1c, (W32 + 0x4000) as u32);
    let _ = cfg_write32(d, 0x20, 0);
    assert_eq!(d.read_config(7), (W32 as u32 + 0x4000) | 0xc);
    // Unused BARs read zero; BAR writes never reach the device.
    assert_eq!(d.read_config(6), 0);
    assert!(mock.log.lock().unwrap().config_writes.is_empty());
    // Not reset again when looked at: vfio-pci reset it when it was opened.
    assert_eq!(mock.log.lock().unwrap().resets, 0);
}

#[test]
fn guest_walks_the_capability_list() {
    let Fixture { mut dev, mock, .. } = fixture();
    let byte =
        |d: &mut VfioPciDevice, off: usize| (d.read_config(off / 4) >> ((off % 4) * 8)) as u8;
    let mut ids = Vec::new();
    let mut ptr = byte(&mut dev, regs::CAP_PTR) as usize;
    while ptr != 0 {
        ids.push(byte(&mut dev, ptr));
        ptr = byte(&mut dev, ptr + 1) as usize;
    }
    assert_eq!(ids, vec![regs::CAP_ID_MSI, regs::CAP_ID_MSIX, 0x10]);
    // MSI capability writes are emulated; other writes pass through.
    let _ = dev.write_config(0x44 / 4, 0, &[0xff]);
    let _ = dev.write_config(1, 0, &0x0006u16.to_le_bytes());
    assert_eq!(
        mock.log.lock().unwrap().config_writes,
        vec![(4, vec![6, 0])]
    );
}

#[test]
fn trapped_pages_reach_the_table_or_the_device() {
    let Fixture {
        mut dev,
        mock,
        router,
        ..
    } = fixture();
    let bar3 = W32 + 0x4000;
    let mut b = [0u8; 4];
    // PBA reads as "nothing pending" without touching the device.
    dev.read_bar(bar3 + 0x2000, &mut b);
    assert_eq!(b, [0; 4]);
    // The rest of the table page goes to the device.
    dev.read_bar(bar3 + 0x800, &mut b);
    assert_eq!(b, [0xab; 4]);
    dev.write_bar(bar3 + 0x2100, &[1, 2, 3, 4]);
    // Table writes are emulated and routed once MSI-X is on.
    dev.write_bar(bar3, &0xfee0_0000u32.to_le_bytes());
    dev.write_bar(bar3 + 8, &0x41u32.to_le_bytes());
    dev.write_bar(bar3 + 12, &0u32.to_le_bytes()); // unmasked
    let _ = dev.write_config(0x70 / 4, 2, &CTL_ENABLE.to_le_bytes());
    assert_eq!(router.routes.lock().unwrap().len(), 1);
    let l = mock.log.lock().unwrap();
    assert_eq!(l.region_reads, vec![(3, 0x800, 4)]);
    assert_eq!(l.region_writes, vec![(3, 0x2100, vec![1, 2, 3, 4])]);
}

#[test]
fn quiesce_disables_interrupts_and_resets_once() {
    let Fixture {
        mut dev,
        mock,
        router,
        ..
    } = fixture();
    dev.write_bar(W32 + 0x4000 + 8, &0x41u32.to_le_bytes());
    dev.write_bar(W32 + 0x4000 + 12, &0u32.to_le_bytes()); // unmasked
    let _ = dev.write_config(0x70 / 4, 2, &CTL_ENABLE.to_le_bytes());
    assert_eq!(router.routes.lock().unwrap().len(), 1);
    dev.quiesce();
    assert!(router.routes.lock().unwrap().is_empty());
    assert_eq!(mock.log.lock().unwrap().msix_disables, 1);
    assert_eq!(mock.log.lock().unwrap().resets, 1, "reset at shutdown");
    dev.quiesce();
    drop(dev);
    assert_eq!(
        mock.log.lock().unwrap().resets,
        1,
        "quiesce is idempotent, also on drop"
    );
}

/// The device in slot 1 of a PCI root whose BAR space traps on `bus`.
fn on_a_root(
    f: Fixture,
) -> (
    Arc<Mutex<PciRoot>>,
    Arc<Bus>,
    Arc<MockMapper>,
    SharedPciDevice,
) {
    let bus = Arc::new(Bus::default());
    let mapper = f.mapper.clone();
    let mut root = PciRoot::new(BarSpace::new(windows(), mapper.clone(), &bus));
    let dev: SharedPciDevice = Arc::new(Mutex::new(f.dev));
    assert_eq!(root.add_device(dev.clone()), Ok(1));
    (Arc::new(Mutex::new(root)), bus, mapper, dev)
}

/// An ECAM write to slot 1.
fn ecam32(root: &Mutex<PciRoot>, off: u64, v: u32) {
    root.lock()
        .unwrap()
        .ecam_write((1 << 15) | off, &v.to_le_bytes());
}

fn trap_bases(bus: &Bus, candidates: &[u64]) -> Vec<u64> {
    let mut b = [0u8; 4];
    candidates
        .iter()
        .copied()
        .filter(|&a| bus.read(a, &mut b))
        .collect()
}

#[test]
fn sizing_is_not_a_move() {
    let (root, _bus, mapper, _dev) = on_a_root(fixture());
    // Linux: decode off, all-ones, read, restore, decode on.
    ecam32(&root, 4, 0);
    ecam32(&root, 0x1c, 0xffff_ffff);
    ecam32(&root, 0x20, 0xffff_ffff);
    ecam32(&root, 0x1c, (W32 + 0x4000) as u32);
    ecam32(&root, 0x20, 0);
    ecam32(&root, 4, u32::from(regs::COMMAND_MEMORY));
    assert!(mapper.moves.lock().unwrap().is_empty());
}

#[test]
fn a_moved_bar_takes_its_mappings_and_traps_along() {
    let (root, bus, mapper, dev) = on_a_root(fixture());
    let (old, new) = (W32 + 0x4000, W32 + 0x10_0000);
    assert_eq!(
        trap_bases(&bus, &[old, old + 0x2000]),
        vec![old, old + 0x2000]
    );
    ecam32(&root, 4, 0);
    ecam32(&root, 0x1c, new as u32);
    ecam32(&root, 0x20, 0);
    assert!(
        mapper.moves.lock().unwrap().is_empty(),
        "nothing moves while decoding is off"
    );
    ecam32(&root, 4, u32::from(regs::COMMAND_MEMORY));
    assert_eq!(
        *mapper.moves.lock().unwrap(),
        vec![(1, new + 0x1000), (2, new + 0x3000)]
    );
    assert!(trap_bases(&bus, &[old, old + 0x2000]).is_empty());
    assert_eq!(
        trap_bases(&bus, &[new, new + 0x2000]),
        vec![new, new + 0x2000]
    );
    // The MSI-X table answers at the new place, through the bus.
    assert!(bus.write(new + 8, &0x4055u32.to_le_bytes()));
    let mut v = [0u8; 4];
    assert!(bus.read(new + 8, &mut v));
    assert_eq!(u32::from_le_bytes(v), 0x4055);
    // A move outside the PCI windows is refused; the BAR stays.
    ecam32(&root, 0x10, 0x1000_0000);
    ecam32(&root, 4, u32::from(regs::COMMAND_MEMORY));
    assert_eq!(mapper.moves.lock().unwrap().len(), 2);
    assert_eq!(mapper.slots.lock().unwrap()[0], (W32, 0x4000));
    assert_eq!(dev.lock().unwrap().trapped_ranges()[0].addr, new);
}

#[test]
fn bus_master_waits_for_the_dma_mapping() {
    let Fixture { dev, mock, .. } = fixture();
    let exit = Arc::new(crate::exit::ExitSignal::new().unwrap());
    let gate = crate::vfio::dma_gate::DmaGate::new(exit);
    let mut dev = dev.with_dma_gate(gate.clone());
    // Memory decoding alone does not wait.
    let _ = dev.write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    assert_eq!(mock.log.lock().unwrap().config_writes.len(), 1);
    let writer = std::thread::spawn(move || {
        let bme = regs::COMMAND_MEMORY | regs::COMMAND_BUS_MASTER;
        let _ = dev.write_config(1, 0, &bme.to_le_bytes());
        dev
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!writer.is_finished(), "the vCPU waits for the mapping");
    assert_eq!(
        mock.log.lock().unwrap().config_writes.len(),
        1,
        "the device saw nothing yet"
    );
    gate.open(Ok(()));
    let _dev = writer.join().unwrap();
    let l = mock.log.lock().unwrap();
    assert_eq!(
        l.config_writes.last(),
        Some(&(4, vec![6, 0])),
        "then bus mastering reaches the device"
    );
}

/// Moves BAR3 of the device on `root` to `new` with decoding on.
fn move_bar3(root: &Mutex<PciRoot>, new: u64) {
    ecam32(root, 4, 0);
    ecam32(root, 0x1c, new as u32);
    ecam32(root, 0x20, 0);
    ecam32(root, 4, u32::from(regs::COMMAND_MEMORY));
}

#[test]
fn a_move_kvm_refuses_keeps_the_old_mapping_and_traps() {
    let (root, bus, mapper, dev) = on_a_root(fixture());
    let (old, new) = (W32 + 0x4000, W32 + 0x10_0000);
    let slots = mapper.slots.lock().unwrap().clone();
    mapper.refuse.lock().unwrap().push(new + 0x3000);
    move_bar3(&root, new);
    assert_eq!(*mapper.slots.lock().unwrap(), slots, "every slot back");
    assert_eq!(
        trap_bases(&bus, &[old, old + 0x2000, new, new + 0x2000]),
        vec![old, old + 0x2000],
        "the traps stay at the old place"
    );
    assert_eq!(dev.lock().unwrap().trapped_ranges()[0].addr, old);
    assert!(
        bus.write(old + 8, &0x4056u32.to_le_bytes()),
        "the table answers"
    );
}

#[test]
fn a_move_onto_another_device_keeps_the_old_mapping_and_traps() {
    struct Other;
    impl crate::devices::bus::BusDevice for Other {
        fn read(&mut self, _: u64, d: &mut [u8]) {
            d.fill(0x77);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }
    let (root, bus, mapper, dev) = on_a_root(fixture());
    let (old, new) = (W32 + 0x4000, W32 + 0x10_0000);
    // Something already answers where the PBA page would go: the table
    // trap goes in, the PBA trap is refused, both must come out again.
    bus.insert(new + 0x2000, 0x1000, Arc::new(Mutex::new(Other)))
        .unwrap();
    let slots = mapper.slots.lock().unwrap().clone();
    move_bar3(&root, new);
    assert_eq!(*mapper.slots.lock().unwrap(), slots, "the slots went back");
    assert_eq!(
        trap_bases(&bus, &[old, old + 0x2000, new]),
        vec![old, old + 0x2000]
    );
    let mut b = [0u8; 4];
    assert!(bus.read(new + 0x2000, &mut b));
    assert_eq!(b, [0x77; 4], "the other device keeps its range");
    assert_eq!(dev.lock().unwrap().trapped_ranges()[0].addr, old);
}

#[test]
fn a_bar_move_with_debug_logging_does_not_lock_the_device_twice() {
    // With debug logging on, the trap log line once locked the device that
    // the move already held: a BAR move hung its vCPU.
    log::set_max_level(log::LevelFilter::Debug);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (root, bus, _mapper, _dev) = on_a_root(fixture());
        move_bar3(&root, W32 + 0x10_0000);
        tx.send(trap_bases(&bus, &[W32 + 0x10_0000])).unwrap();
    });
    let moved = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert_eq!(moved.ok(), Some(vec![W32 + 0x10_0000]), "the move finished");
}
