//! The transport driven through configuration space and BAR0, with the rng
//! device behind it (the simplest device), in test memory.

use super::*;
use crate::virtio::common::off;
use crate::virtio::pci_layout::*;
use crate::virtio::rng::Rng;
use crate::virtio::testing::{Driver, TestQueue, BAR_ADDR};

fn cfg8(d: &mut Driver, at: usize) -> u8 {
    (d.dev.read_config(at / 4) >> ((at % 4) * 8)) as u8
}

#[test]
fn config_space_lists_modern_capabilities() {
    let mut d = Driver::new(Box::new(Rng));
    let id = d.dev.read_config(0);
    assert_eq!(id, (0x1044 << 16) | 0x1af4, "modern virtio-rng ID");
    assert_eq!(d.dev.read_config(2) & 0xff, 1, "revision 1");
    assert_ne!(
        d.dev.read_config(1) >> 16 & u32::from(regs::STATUS_CAP_LIST),
        0
    );
    let mut at = usize::from(cfg8(&mut d, regs::CAP_PTR));
    let mut seen = Vec::new();
    while at != 0 && seen.len() < 16 {
        let id = cfg8(&mut d, at);
        if id == CAP_ID_VENDOR {
            let cfg = cfg8(&mut d, at + 3);
            let bar = cfg8(&mut d, at + 4);
            let offset = d.dev.read_config(at / 4 + 2);
            seen.push((cfg, bar, offset));
        } else {
            seen.push((id, 0xff, 0));
        }
        at = usize::from(cfg8(&mut d, at + 1));
    }
    assert_eq!(
        seen,
        vec![
            (regs::CAP_ID_MSIX, 0xff, 0),
            (CFG_COMMON, 0, bar::COMMON as u32),
            (CFG_NOTIFY, 0, bar::NOTIFY as u32),
            (CFG_ISR, 0, bar::ISR as u32),
            (CFG_DEVICE, 0, bar::DEVICE as u32),
        ]
    );
    assert_eq!(
        d.dev.read_config(CAP_NOTIFY / 4 + 4),
        4,
        "notify multiplier"
    );
    // MSI-X: two vectors (config + one queue), table and PBA in BAR0.
    assert_eq!(d.dev.read_config(CAP_MSIX / 4) >> 16, 1);
    assert_eq!(d.dev.read_config(CAP_MSIX / 4 + 1), bar::MSIX_TABLE as u32);
}

#[test]
fn bar_sizing_and_moves_take_the_ioeventfds_along() {
    let mut d = Driver::new(Box::new(Rng));
    assert_eq!(
        d.ioevents.0.lock().unwrap().as_slice(),
        &[(BAR_ADDR + bar::NOTIFY, true)]
    );
    let _ = d.dev.write_config(1, 0, &[0, 0]);
    let r = d.dev.write_config(4, 0, &[0xff; 4]);
    assert!(r.bar_moves.is_empty(), "no moves with decoding off");
    let _ = d.dev.write_config(5, 0, &[0xff; 4]);
    let lo = d.dev.read_config(4);
    assert_eq!(lo & !0xf, !(bar::SIZE as u32 - 1), "size");
    assert_eq!(lo & 0x6, 0x4, "64-bit BAR");
    let _ = d.dev.write_config(4, 0, &0xd000_0000u32.to_le_bytes());
    let _ = d.dev.write_config(5, 0, &[0; 4]);
    let r = d
        .dev
        .write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    let mv = r.bar_moves[0];
    assert_eq!(
        (mv.from, mv.to, mv.size),
        (BAR_ADDR, 0xd000_0000, bar::SIZE)
    );
    let mapper = crate::testing::MockMapper::default();
    d.dev.move_bar(&mv, &mapper).unwrap();
    assert_eq!(
        d.ioevents.0.lock().unwrap()[1..],
        [
            (BAR_ADDR + bar::NOTIFY, false),
            (0xd000_0000 + bar::NOTIFY, true)
        ]
    );
    assert_eq!(d.dev.trapped_ranges()[0].addr, 0xd000_0000);
}

#[test]
fn feature_negotiation_requires_version_1_and_offered_bits() {
    let mut d = Driver::new(Box::new(Rng));
    let q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(0, &[&q]) & 8, 0, "no VERSION_1: FEATURES_OK refused");
    assert_eq!(
        d.init((1 << 32) | (1 << 33), &[&q]) & 8,
        0,
        "ACCESS_PLATFORM is not offered"
    );
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
    // Features are frozen once FEATURES_OK is set.
    d.write(off::DRIVER_FEATURE_SELECT, 4, 0);
    d.write(off::DRIVER_FEATURE, 4, 0xffff);
    assert_eq!(d.read(off::DRIVER_FEATURE, 4), 0);
}

#[test]
fn bad_queue_setups_set_needs_reset() {
    let mut d = Driver::new(Box::new(Rng));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    q.size = 12; // not a power of two
    assert_eq!(d.init(1 << 32, &[&q]) & 0x40, 0x40, "bad size");
    assert!(d.wait_vector(0), "config change interrupt on vector 0");
    assert_eq!(d.read(bar::ISR, 1) & 2, 2, "ISR says configuration changed");
    assert_eq!(d.read(bar::ISR, 1), 0, "ISR reads clear");
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    q.desc = 0x7fff_0000; // outside RAM
    assert_eq!(d.init(1 << 32, &[&q]) & 0x40, 0x40, "queue outside RAM");
    // A reset clears it; a good setup works.
    let q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
}

#[test]
fn lying_avail_index_needs_reset_and_looping_chain_ends() {
    let mut d = Driver::new(Box::new(Rng));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
    // A chain whose descriptors point at each other: bounded by the queue size.
    q.write_desc(0, 0x100000, 8, 1 | 2, 1);
    q.write_desc(1, 0x100010, 8, 1 | 2, 0);
    q.publish(0);
    d.kick(0);
    assert_eq!(q.wait_used(1), 1);
    assert_eq!(
        q.used_elem(0).1,
        16 * 8,
        "a looping chain ends after queue-size descriptors"
    );
    assert_eq!(d.status() & 0x40, 0);
    // An available index more than a ring ahead.
    q.set_avail_idx(1 + 100);
    d.kick(0);
    let t0 = std::time::Instant::now();
    while d.status() & 0x40 == 0 && t0.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(d.status() & 0x40, 0x40);
    assert_eq!(q.used_idx(), 1, "nothing more was used");
}

#[test]
fn reset_stops_the_worker_and_clears_state() {
    let mut d = Driver::new(Box::new(Rng));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
    d.write(off::DEVICE_STATUS, 1, 0);
    assert_eq!(d.status(), 0);
    d.write(off::QUEUE_SELECT, 2, 0);
    assert_eq!(d.read(off::QUEUE_ENABLE, 2), 0, "queue disabled by reset");
    assert_eq!(
        d.read(off::QUEUE_MSIX_VECTOR, 2),
        u64::from(crate::virtio::NO_VECTOR)
    );
    q.add_chain(&[(0x100000, 64, true)]);
    d.kick(0);
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert_eq!(q.used_idx(), 0, "no worker after reset");
    // Queue registers after DRIVER_OK are ignored; select out of range reads 0.
    let q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
    d.write(off::QUEUE_SELECT, 2, 0);
    d.write(off::QUEUE_SIZE, 2, 4);
    assert_eq!(d.read(off::QUEUE_SIZE, 2), 16);
    d.write(off::QUEUE_SELECT, 2, 5);
    assert_eq!(d.read(off::QUEUE_SIZE, 2), 0);
    assert_eq!(d.read(off::NUM_QUEUES, 2), 1);
}

#[test]
fn any_register_access_is_safe() {
    // A driver poking every register with every size and value, in any order:
    // nothing panics, the device stays usable after a reset.
    let mut d = Driver::new(Box::new(Rng));
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let r = next();
        let off = (r >> 8) % (bar::SIZE + 16);
        let len = [1usize, 2, 4, 8][(r % 4) as usize];
        let addr = BAR_ADDR.wrapping_add(off);
        let v = next().to_le_bytes();
        if r & 0x10 == 0 {
            d.dev.write_bar(addr, &v[..len]);
        } else {
            let mut b = [0u8; 8];
            d.dev.read_bar(addr, &mut b[..len]);
        }
        if r & 0x3f == 0x20 {
            let reg = ((r >> 20) % 80) as usize;
            let _ = d.dev.write_config(reg, (r >> 30) as usize % 4, &v[..1]);
        }
    }
    d.dev.read_bar(u64::MAX, &mut [0u8; 4]);
    d.dev.write_bar(u64::MAX - 1, &[0; 8]);
    d.dev.read_bar(BAR_ADDR, &mut []);
    // Decoding back on, BAR back in place, then a normal bring-up.
    let _ = d
        .dev
        .write_config(4, 0, &(BAR_ADDR as u32 | 0x4).to_le_bytes());
    let _ = d.dev.write_config(5, 0, &[0; 4]);
    let _ = d
        .dev
        .write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
    let q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
}
