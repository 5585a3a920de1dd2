use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testing::{Driver, TestQueue};

#[test]
fn fills_buffers_with_random_bytes_end_to_end() {
    let mut d = Driver::new(Box::new(Rng));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.device_features(), 1 << 32, "only VERSION_1");
    let status = d.init(1 << 32, &[&q]);
    assert_eq!(
        status, 0xf,
        "ACK|DRIVER|FEATURES_OK|DRIVER_OK, no NEEDS_RESET"
    );
    // Two buffers in one chain, plus a second chain.
    q.add_chain(&[(0x100000, 64, true), (0x100100, 32, true)]);
    q.add_chain(&[(0x200000, 4096, true)]);
    d.kick(0);
    assert_eq!(q.wait_used(2), 2);
    assert_eq!(q.used_elem(0), (0, 96));
    assert_eq!(q.used_elem(1), (2, 4096));
    assert!(d.wait_vector(1), "queue 0 interrupts on vector 1");
    let mut a = [0u8; 64];
    d.mem.read_slice(&mut a, GuestAddress(0x100000)).unwrap();
    assert!(a.iter().any(|b| *b != 0), "random bytes arrived");
    let mut page = vec![0u8; 4096];
    d.mem.read_slice(&mut page, GuestAddress(0x200000)).unwrap();
    assert_ne!(&page[..64], &a[..], "two requests, two different fills");
}

#[test]
fn read_only_buffers_and_out_of_ram_chains_get_nothing() {
    let mut d = Driver::new(Box::new(Rng));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    assert_eq!(d.init(1 << 32, &[&q]), 0xf);
    q.add_chain(&[(0x100000, 64, false)]);
    q.add_chain(&[(0x7fff_0000, 64, true)]);
    d.kick(0);
    assert_eq!(q.wait_used(2), 2);
    assert_eq!(q.used_elem(0).1, 0, "nothing writable");
    assert_eq!(q.used_elem(1).1, 0, "outside RAM");
    assert_eq!(d.status() & 0x40, 0, "a bad buffer is not a broken queue");
}
