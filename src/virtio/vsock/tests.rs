//! The vsock device through the transport, with the guest's side played in
//! test memory and the host's side on real unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::mux::{op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::*;
use crate::virtio::testing::{Driver, TestQueue};

const CID: u64 = 3;

/// A packet header (virtio 1.2, 5.10.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hdr {
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    src_cid: u64,
    dst_cid: u64,
}

impl Hdr {
    fn bytes(&self) -> [u8; 44] {
        let mut b = [0u8; 44];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&1u16.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn parse(b: &[u8; 44]) -> Self {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// The guest side: the three queues and its rx buffers.
struct Guest {
    d: Driver,
    rx: TestQueue,
    tx: TestQueue,
    seen: u16,
    tx_slot: u64,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

const RX_BUFS: u64 = 0x100000;
const TX_BUFS: u64 = 0x200000;

impl Guest {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let cfg = VsockConfig {
            cid: CID,
            socket: path.clone(),
        };
        let mut d = Driver::new(Box::new(Vsock::new(&cfg).unwrap()));
        assert_eq!(d.read(crate::virtio::pci_layout::bar::DEVICE, 8), CID);
        let rx = TestQueue::new(&d.mem, 0x10000, 64);
        let tx = TestQueue::new(&d.mem, 0x20000, 64);
        let ev = TestQueue::new(&d.mem, 0x30000, 64);
        assert_eq!(d.init(1 << 32, &[&rx, &tx, &ev]), 0xf);
        let mut g = Guest {
            d,
            rx,
            tx,
            seen: 0,
            tx_slot: 0,
            _dir: dir,
            path,
        };
        g.refill(16);
        g
    }

    /// Offers `n` rx buffers (header + 4 KiB each).
    fn refill(&mut self, n: u16) {
        for _ in 0..n {
            let i = u64::from(self.rx.avail_idx_hint() % 32);
            let base = RX_BUFS + i * 0x2000;
            self.rx
                .add_chain(&[(base, 44, true), (base + 0x100, 4096, true)]);
        }
        self.d.kick(0);
    }

    /// Sends a packet from the guest.
    fn send(&mut self, h: Hdr, data: &[u8]) {
        let h = Hdr {
            src_cid: CID,
            dst_cid: HOST_CID,
            len: data.len() as u32,
            ..h
        };
        let base = TX_BUFS + (self.tx_slot % 32) * 0x2000;
        self.tx_slot += 1;
        self.d
            .mem
            .write_slice(&h.bytes(), GuestAddress(base))
            .unwrap();
        self.d
            .mem
            .write_slice(data, GuestAddress(base + 0x100))
            .unwrap();
        let n = self.tx.used_idx();
        if data.is_empty() {
            self.tx.add_chain(&[(base, 44, false)]);
        } else {
            self.tx
                .add_chain(&[(base, 44, false), (base + 0x100, data.len() as u32, false)]);
        }
        self.d.kick(1);
        assert_eq!(self.tx.wait_used(n + 1), n + 1, "tx packet consumed");
    }

    /// Sends a data packet the way Linux 6.x sends one over 32 KiB: the
    /// header alone, then the data in `pieces` descriptors far apart.
    fn send_scattered(&mut self, h: Hdr, data: &[u8], pieces: usize) {
        let h = Hdr {
            src_cid: CID,
            dst_cid: HOST_CID,
            len: data.len() as u32,
            ..h
        };
        let base = 0x280000;
        self.d
            .mem
            .write_slice(&h.bytes(), GuestAddress(base))
            .unwrap();
        let mut bufs = vec![(base, 44, false)];
        for (i, part) in data.chunks(data.len().div_ceil(pieces)).enumerate() {
            let at = base + 0x2000 * (i as u64 + 1) + 0x100;
            self.d.mem.write_slice(part, GuestAddress(at)).unwrap();
            bufs.push((at, part.len() as u32, false));
        }
        let n = self.tx.used_idx();
        self.tx.add_chain(&bufs);
        self.d.kick(1);
        assert_eq!(self.tx.wait_used(n + 1), n + 1, "tx packet consumed");
    }

    /// A host client's `CONNECT 1024`, accepted by the guest's listener with
    /// `buf_alloc` of credit; returns the client, past its `OK` line, and
    /// the host port.
    fn open_from_host(&mut self, buf_alloc: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        let (req, _) = self.recv().expect("a connection request");
        let hp = req.src_port;
        let response = Hdr {
            src_port: 1024,
            dst_port: hp,
            op: op::RESPONSE,
            buf_alloc,
            ..Default::default()
        };
        self.send(response, &[]);
        assert_eq!(read_line(&mut host), format!("OK {hp}"));
        (host, hp)
    }

    /// The next packet the device put on the rx queue (waits up to 5 s).
    fn recv(&mut self) -> Option<(Hdr, Vec<u8>)> {
        if self.rx.wait_used(self.seen + 1) <= self.seen {
            return None;
        }
        let (head, len) = self.rx.used_elem(self.seen);
        self.seen += 1;
        let base: u64 = self
            .d
            .mem
            .read_obj(GuestAddress(self.rx.desc + 16 * u64::from(head)))
            .unwrap();
        let mut hb = [0u8; 44];
        self.d.mem.read_slice(&mut hb, GuestAddress(base)).unwrap();
        let h = Hdr::parse(&hb);
        assert_eq!(len, 44 + h.len, "used length covers header and data");
        let mut data = vec![0u8; h.len as usize];
        self.d
            .mem
            .read_slice(&mut data, GuestAddress(base + 0x100))
            .unwrap();
        self.refill(1);
        Some((h, data))
    }
}

impl TestQueue {
    fn avail_idx_hint(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap();
    v
}

#[test]
fn host_connects_with_connect_line_and_data_flows_both_ways() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = g.recv().expect("a connection request");
    assert_eq!(
        (req.op, req.dst_port, req.dst_cid, req.src_cid),
        (op::REQUEST, 1024, CID, 2)
    );
    let hp = req.src_port;
    let guest = |op, len_alloc| Hdr {
        src_port: 1024,
        dst_port: hp,
        op,
        buf_alloc: len_alloc,
        ..Default::default()
    };
    g.send(guest(op::RESPONSE, 65536), &[]);
    assert_eq!(read_line(&mut host), format!("OK {hp}"));
    host.write_all(b"ping").unwrap();
    let (rw, data) = g.recv().unwrap();
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (op::RW, hp, 1024));
    assert_eq!(data, b"ping");
    assert_eq!(rw.buf_alloc, conn::BUF_ALLOC);
    g.send(guest(op::RW, 65536), b"pong");
    assert_eq!(read_n(&mut host, 4), b"pong");
    // The guest hears that its 4 bytes were forwarded.
    let (cu, _) = g.recv().unwrap();
    assert_eq!((cu.op, cu.fwd_cnt), (op::CREDIT_UPDATE, 4));
    // The host closes: the guest hears it sends no more, and answers RST.
    drop(host);
    let (sd, _) = g.recv().unwrap();
    assert_eq!((sd.op, sd.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    g.send(guest(op::RST, 0), &[]);
    assert_eq!(g.d.status() & 0x40, 0);
}

#[test]
fn guest_connects_to_host_port_socket_or_is_refused() {
    let mut g = Guest::new();
    let mut p = g.path.clone().into_os_string();
    p.push("_5000");
    let listener = UnixListener::bind(&p).unwrap();
    g.send(
        Hdr {
            src_port: 40000,
            dst_port: 5000,
            op: op::REQUEST,
            buf_alloc: 65536,
            ..Default::default()
        },
        &[],
    );
    let (resp, _) = g.recv().unwrap();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (op::RESPONSE, 5000, 40000)
    );
    let (mut accepted, _) = listener.accept().unwrap();
    let h = Hdr {
        src_port: 40000,
        dst_port: 5000,
        op: op::RW,
        buf_alloc: 65536,
        ..Default::default()
    };
    g.send(h, b"hello host");
    assert_eq!(read_n(&mut accepted, 10), b"hello host");
    // Guest finishes sending: the host reads EOF after the data.
    g.send(
        Hdr {
            op: op::SHUTDOWN,
            flags: SHUTDOWN_SEND,
            ..h
        },
        &[],
    );
    let mut rest = Vec::new();
    accepted.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // No listener on 6000: RST.
    g.send(
        Hdr {
            src_port: 40001,
            dst_port: 6000,
            op: op::REQUEST,
            ..Default::default()
        },
        &[],
    );
    let mut got_rst = false;
    while let Some((h, _)) = g.recv() {
        if h.op == op::RST && h.dst_port == 40001 {
            got_rst = true;
            break;
        }
    }
    assert!(got_rst);
}

#[test]
fn refused_guest_port_closes_the_host_client_and_bad_lines_are_dropped() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    host.write_all(b"CONNECT 1025\n").unwrap();
    let (req, _) = g.recv().unwrap();
    g.send(
        Hdr {
            src_port: 1025,
            dst_port: req.src_port,
            op: op::RST,
            ..Default::default()
        },
        &[],
    );
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0, "closed without OK");
    let mut bad = UnixStream::connect(&g.path).unwrap();
    bad.write_all(b"HELLO\n").unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        bad.read(&mut b).unwrap_or(0),
        0,
        "a bad line closes the client"
    );
    // A packet for a connection that does not exist gets RST; a wrong CID too.
    g.send(
        Hdr {
            src_port: 9,
            dst_port: 9,
            op: op::RW,
            ..Default::default()
        },
        b"x",
    );
    let (rst, _) = g.recv().unwrap();
    assert_eq!(rst.op, op::RST);
}

impl Guest {
    fn recv_quick(&mut self) -> Option<(Hdr, Vec<u8>)> {
        std::thread::sleep(Duration::from_millis(50));
        (self.rx.used_idx() > self.seen)
            .then(|| self.recv())
            .flatten()
    }
}

#[path = "tests_streams.rs"]
mod streams;

#[test]
fn guest_data_over_several_descriptors_reaches_the_host_whole() {
    let mut g = Guest::new();
    let (mut host, hp) = g.open_from_host(1 << 20);
    let guest = |op| Hdr {
        src_port: 1024,
        dst_port: hp,
        op,
        buf_alloc: 1 << 20,
        ..Default::default()
    };
    // 60 KiB in 15 page fragments, then 5000 bytes in 3 uneven pieces.
    let big: Vec<u8> = (0..60 * 1024u32)
        .map(|i| (i * 31 + i / 4096) as u8)
        .collect();
    g.send_scattered(guest(op::RW), &big, 15);
    assert_eq!(read_n(&mut host, big.len()), big, "in order, nothing lost");
    let small: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    g.send_scattered(guest(op::RW), &small, 3);
    assert_eq!(read_n(&mut host, small.len()), small);
    // A length beyond what the descriptors hold is dropped, not read past.
    let mut short = guest(op::RW);
    short.len = 9000;
    g.d.mem
        .write_slice(&short.bytes(), GuestAddress(0x2c0000))
        .unwrap();
    let n = g.tx.used_idx();
    g.tx.add_chain(&[(0x2c0000, 44, false), (0x2d0000, 100, false)]);
    g.d.kick(1);
    assert_eq!(g.tx.wait_used(n + 1), n + 1);
    g.send(guest(op::RW), b"after");
    assert_eq!(read_n(&mut host, 5), b"after", "the connection still works");
}
