use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::pci::PciDevice;
use crate::virtio::testing::{Driver, TestQueue};

/// A datagram socket pair stands in for the tap: it keeps frame boundaries
/// like a tap does. Returns the device and the "wire" end.
fn device(vnet_hdr: bool) -> (Net, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let tap = Tap {
        file: File::from(OwnedFd::from(a)),
        vnet_hdr,
        name: "test0".into(),
    };
    (Net::with_tap(tap, Some([0x52, 0x54, 0, 1, 2, 3])), b)
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn run(vnet_hdr: bool) {
    let (net, wire) = device(vnet_hdr);
    wire.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut d = Driver::new(Box::new(net));
    let mut b = [0u8; 6];
    d.dev.read_bar(
        crate::virtio::testing::BAR_ADDR + crate::virtio::pci_layout::bar::DEVICE,
        &mut b,
    );
    assert_eq!(b, [0x52, 0x54, 0, 1, 2, 3], "MAC in the configuration");
    let f = d.device_features();
    assert_eq!(f, (1 << 32) | (1 << VIRTIO_NET_F_MAC));
    let mut rx = TestQueue::new(&d.mem, 0x10000, 16);
    let mut tx = TestQueue::new(&d.mem, 0x20000, 16);
    assert_eq!(d.init(f, &[&rx, &tx]), 0xf);
    // Guest → wire: header (with junk flags that must not leak) + frame.
    let out = frame(1000, 1);
    let mut pkt = vec![0xffu8; VNET_HDR_LEN];
    pkt.extend_from_slice(&out);
    d.mem.write_slice(&pkt, GuestAddress(0x100000)).unwrap();
    tx.add_chain(&[
        (0x100000, 6, false),
        (0x100006, pkt.len() as u32 - 6, false),
    ]);
    d.kick(1);
    let mut got = vec![0u8; 4096];
    let n = wire.recv(&mut got).unwrap();
    let want: Vec<u8> = if vnet_hdr {
        [vec![0u8; VNET_HDR_LEN], out.clone()].concat()
    } else {
        out.clone()
    };
    assert_eq!(
        &got[..n],
        &want[..],
        "the frame, with a clean header if the tap takes one"
    );
    assert_eq!(tx.wait_used(1), 1);
    assert!(d.wait_vector(2), "tx completion on queue 1's vector");
    // Wire → guest: two frames, before and after the guest posts buffers.
    let in1 = frame(60, 7);
    let hdr = if vnet_hdr {
        vec![0u8; VNET_HDR_LEN]
    } else {
        Vec::new()
    };
    wire.send(&[hdr.clone(), in1.clone()].concat()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rx.used_idx(), 0, "no buffers yet");
    rx.add_chain(&[(0x200000, 2048, true)]);
    rx.add_chain(&[(0x210000, 8, true), (0x210100, 2040, true)]);
    d.kick(0);
    assert_eq!(rx.wait_used(1), 1);
    let (_, len) = rx.used_elem(0);
    assert_eq!(len as usize, VNET_HDR_LEN + in1.len());
    let mut g = vec![0u8; len as usize];
    d.mem.read_slice(&mut g, GuestAddress(0x200000)).unwrap();
    assert_eq!(&g[10..12], &[1, 0], "num_buffers = 1");
    assert_eq!(&g[VNET_HDR_LEN..], &in1[..]);
    let in2 = frame(1514, 9);
    wire.send(&[hdr, in2.clone()].concat()).unwrap();
    assert_eq!(rx.wait_used(2), 2, "a frame over two descriptors");
    let mut g = vec![0u8; 8 + 2040];
    d.mem
        .read_slice(&mut g[..8], GuestAddress(0x210000))
        .unwrap();
    d.mem
        .read_slice(&mut g[8..], GuestAddress(0x210100))
        .unwrap();
    assert_eq!(&g[VNET_HDR_LEN..VNET_HDR_LEN + in2.len()], &in2[..]);
    assert!(d.wait_vector(1), "rx on queue 0's vector");
}

#[test]
fn frames_both_ways_with_a_vnet_header_tap() {
    run(true);
}

#[test]
fn frames_both_ways_with_a_plain_tap() {
    run(false);
}

#[test]
fn bad_frames_are_dropped() {
    let (net, wire) = device(false);
    wire.set_nonblocking(true).unwrap();
    let mut d = Driver::new(Box::new(net));
    let mut rx = TestQueue::new(&d.mem, 0x10000, 16);
    let mut tx = TestQueue::new(&d.mem, 0x20000, 16);
    let f = d.device_features();
    assert_eq!(d.init(f, &[&rx, &tx]), 0xf);
    // Shorter than a header, and outside RAM.
    tx.add_chain(&[(0x100000, 4, false)]);
    tx.add_chain(&[(0x7fff_0000, 100, false)]);
    d.kick(1);
    assert_eq!(tx.wait_used(2), 2);
    let mut b = [0u8; 64];
    assert!(wire.recv(&mut b).is_err(), "nothing reached the wire");
    // A frame too big for the guest's buffer is dropped, the buffer kept empty.
    rx.add_chain(&[(0x200000, 32, true)]);
    d.kick(0);
    wire.send(&frame(500, 3)).unwrap();
    assert_eq!(rx.wait_used(1), 1);
    assert_eq!(rx.used_elem(0).1, 0);
    assert_eq!(d.status() & 0x40, 0);
}
