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

/// An AF_PACKET socket on interface `name` (all protocols).
fn packet_socket(name: &str) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just made and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: binds `fd` to a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    (index != 0 && r == 0).then_some(fd)
}

#[test]
fn frames_cross_a_real_tap() {
    use std::os::fd::AsRawFd;
    let test = "frames_cross_a_real_tap";
    let cfg = crate::virtio::options::parse_net("tap=vfltest2,mac=52:54:00:00:00:02").unwrap();
    let net = match Net::open(&cfg) {
        Ok(n) => n,
        Err(e) => return crate::testing::skip(test, &e.to_string()),
    };
    let up = std::process::Command::new("ip")
        .args(["link", "set", "vfltest2", "up"])
        .status();
    if !up.is_ok_and(|s| s.success()) {
        return crate::testing::skip(test, "cannot bring a tap up (ip link)");
    }
    let Some(ps) = packet_socket("vfltest2") else {
        return crate::testing::skip(test, "no AF_PACKET socket");
    };
    let mut d = Driver::new(Box::new(net));
    let mut rx = TestQueue::new(&d.mem, 0x10000, 16);
    let mut tx = TestQueue::new(&d.mem, 0x20000, 16);
    let f = d.device_features();
    assert_eq!(d.init(f, &[&rx, &tx]), 0xf);
    for i in 0..8 {
        rx.add_chain(&[(0x200000 + i * 0x1000, 2048, true)]);
    }
    d.kick(0);
    // Host → guest: a frame to the guest's MAC with a local ethertype.
    let mut frame = vec![0x52, 0x54, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 9, 0x88, 0xb5];
    frame.extend_from_slice(b"hello guest, over a real tap");
    // SAFETY: send(2) of a valid buffer on our socket.
    let n = unsafe { libc::send(ps.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n as usize, frame.len());
    let t0 = std::time::Instant::now();
    let mut found = false;
    while !found && t0.elapsed() < Duration::from_secs(5) {
        // The kernel may send its own frames (IPv6 router solicitations) too.
        for i in 0..rx.used_idx() {
            let (head, len) = rx.used_elem(i);
            let mut g = vec![0u8; len as usize];
            d.mem
                .read_slice(&mut g, GuestAddress(0x200000 + u64::from(head) * 0x1000))
                .unwrap();
            found |= g.len() >= VNET_HDR_LEN && g[VNET_HDR_LEN..] == frame[..];
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(found, "the frame reached the guest's buffer with a header");
    // Guest → host.
    let mut out = vec![0u8; VNET_HDR_LEN];
    let payload = b"hello host, from the guest";
    out.extend_from_slice(&[0x02, 0, 0, 0, 0, 9, 0x52, 0x54, 0, 0, 0, 2, 0x88, 0xb5]);
    out.extend_from_slice(payload);
    d.mem.write_slice(&out, GuestAddress(0x100000)).unwrap();
    tx.add_chain(&[(0x100000, out.len() as u32, false)]);
    d.kick(1);
    let mut buf = vec![0u8; 2048];
    let t0 = std::time::Instant::now();
    let mut seen = false;
    while !seen && t0.elapsed() < Duration::from_secs(5) {
        // SAFETY: recv(2) into a valid buffer on our socket, non-blocking.
        let n = unsafe {
            libc::recv(
                ps.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            seen = buf[..n as usize].ends_with(payload);
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(seen, "the guest's frame came out of the tap");
}
