//! Streams under load: credit with many connections, megabytes both ways,
//! half-closed connections.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::*;

#[test]
fn host_to_guest_respects_credit_and_many_connections_interleave() {
    let mut g = Guest::new();
    let mut hosts = Vec::new();
    for i in 0..8u32 {
        let mut s = UnixStream::connect(&g.path).unwrap();
        s.write_all(format!("CONNECT {}\n", 2000 + i).as_bytes())
            .unwrap();
        let (req, _) = g.recv().unwrap();
        assert_eq!(req.dst_port, 2000 + i);
        g.send(
            Hdr {
                src_port: req.dst_port,
                dst_port: req.src_port,
                op: op::RESPONSE,
                buf_alloc: 8, // a tiny receive buffer
                ..Default::default()
            },
            &[],
        );
        assert_eq!(read_line(&mut s), format!("OK {}", req.src_port));
        hosts.push((s, req.src_port, req.dst_port));
    }
    for (s, _, _) in &mut hosts {
        s.write_all(b"0123456789abcdef").unwrap();
    }
    let mut got: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    for _ in 0..8 {
        let (h, d) = g.recv().unwrap();
        assert_eq!(h.op, op::RW);
        assert!(d.len() <= 8, "within the guest's credit");
        got.entry(h.dst_port).or_default().extend(d);
    }
    assert_eq!(got.len(), 8, "every connection got its turn");
    assert!(g.recv_quick().is_none(), "no more without credit");
    // The guest consumed 8 bytes on each: the rest comes.
    for (_, hp, gp) in &hosts {
        g.send(
            Hdr {
                src_port: *gp,
                dst_port: *hp,
                op: op::CREDIT_UPDATE,
                buf_alloc: 8,
                fwd_cnt: 8,
                ..Default::default()
            },
            &[],
        );
    }
    for _ in 0..8 {
        let (h, d) = g.recv().unwrap();
        got.entry(h.dst_port).or_default().extend(d);
    }
    for v in got.values() {
        assert_eq!(v, b"0123456789abcdef");
    }
}

#[test]
fn megabytes_both_ways_within_credit() {
    const TOTAL: usize = 4 << 20;
    let mut g = Guest::new();
    let (host, hp) = g.open_from_host(256 << 10);
    let h = |op, fwd_cnt| Hdr {
        src_port: 1024,
        dst_port: hp,
        op,
        buf_alloc: 256 << 10,
        fwd_cnt,
        ..Default::default()
    };
    // Host → guest: the guest reports what it consumed every 64 KiB.
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 13 % 251) as u8).collect();
    let mut w = host.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut got = Vec::with_capacity(TOTAL);
    let mut told = 0;
    while got.len() < TOTAL {
        let (p, d) = g.recv().expect("data keeps coming");
        if p.op == op::RW {
            assert!(
                got.len() + d.len() - told <= 256 << 10,
                "never beyond the credit"
            );
            got.extend_from_slice(&d);
        }
        if got.len() - told >= 64 << 10 {
            told = got.len();
            g.send(h(op::CREDIT_UPDATE, told as u32), &[]);
        }
    }
    writer.join().unwrap();
    assert!(got == data, "host → guest intact");
    // Guest → host: 4 KiB packets within the host's credit.
    let mut r = host.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = vec![0u8; TOTAL];
        r.read_exact(&mut v).unwrap();
        v
    });
    let (mut off, mut host_fwd) = (0usize, 0u32);
    while off < TOTAL {
        if off as u32 - host_fwd + 4096 > conn::BUF_ALLOC {
            let (p, _) = g.recv().expect("a credit update");
            if p.op == op::CREDIT_UPDATE || p.op == op::RW {
                host_fwd = p.fwd_cnt;
            }
            continue;
        }
        g.send(h(op::RW, got.len() as u32), &data[off..off + 4096]);
        off += 4096;
    }
    assert!(reader.join().unwrap() == data, "guest → host intact");
    assert_eq!(g.d.status() & 0x40, 0);
}

#[test]
fn the_socket_path_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let cfg = |socket: &std::path::Path| VsockConfig {
        cid: 3,
        socket: socket.to_path_buf(),
    };
    assert!(matches!(
        Vsock::new(&cfg(&file)),
        Err(VsockError::NotASocket(_))
    ));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "keep me",
        "never removed"
    );
    let live = dir.path().join("live.sock");
    let _l = UnixListener::bind(&live).unwrap();
    assert!(matches!(Vsock::new(&cfg(&live)), Err(VsockError::InUse(_))));
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let v = Vsock::new(&cfg(&stale)).unwrap();
    drop(v);
    assert!(!stale.exists(), "removed with the device");
}

#[test]
fn host_half_close_still_gets_the_echo_and_a_guest_close_ends_it() {
    let mut g = Guest::new();
    let mut host = UnixStream::connect(&g.path).unwrap();
    // Data right behind the line, then EOF (what `socat` does with a pipe).
    host.write_all(b"CONNECT 1024\nquestion").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (req, _) = g.recv().unwrap();
    let h = |op, flags| Hdr {
        src_port: 1024,
        dst_port: req.src_port,
        op,
        flags,
        buf_alloc: 65536,
        ..Default::default()
    };
    g.send(h(op::RESPONSE, 0), &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    let (rw, data) = g.recv().unwrap();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"question"[..]));
    let (sd, _) = g.recv().unwrap();
    assert_eq!((sd.op, sd.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    // The guest still answers, then closes its socket (SHUTDOWN both ways).
    g.send(h(op::RW, 0), b"answer");
    g.send(h(op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND), &[]);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"answer", "the echo arrived before the close");
    let mut rst = false;
    while let Some((p, _)) = g.recv_quick() {
        rst |= p.op == op::RST;
    }
    assert!(rst, "the device resets the finished connection");
}
