//! One vsock stream joined to a host unix socket: the credit accounting of
//! virtio 1.2, 5.10.6.3 in both directions, the bytes from the guest not yet
//! written to the host socket (bounded by the credit the guest was given),
//! and the hybrid handshake (`CONNECT <port>\n` / `OK <port>\n`).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

/// Receive buffer the device advertises per connection.
pub const BUF_ALLOC: u32 = 256 << 10;
/// The longest handshake line a host client may send.
pub const MAX_HANDSHAKE: usize = 32;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows (each way until that side shuts it down).
    Established,
}

/// A stream between a guest port and a host unix socket.
pub struct Conn {
    /// The host socket (non-blocking).
    pub stream: UnixStream,
    /// Its epoll token.
    pub token: u32,
    /// State.
    pub state: State,
    /// The host's buffer space as the guest last told it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes from the guest written to the host socket.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: Wrapping<u32>,
    /// Bytes from the guest waiting for the host socket.
    to_host: VecDeque<u8>,
    /// The host socket may have data (it fired and was not drained).
    pub readable: bool,
    /// The guest said it will send no more (SHUTDOWN with SEND).
    pub guest_done: bool,
    /// The host side sent EOF (the guest got SHUTDOWN with SEND), or the
    /// guest will receive no more: nothing more is read from the host.
    pub host_done: bool,
    /// Both ways are shut: reset once the bytes for the host are written.
    pub finish: bool,
}

impl Conn {
    /// A connection on `stream`.
    pub fn new(stream: UnixStream, token: u32, state: State) -> Self {
        Conn {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            to_host: VecDeque::new(),
            readable: false,
            guest_done: false,
            host_done: false,
            finish: false,
        }
    }

    /// Takes the guest's credit fields from any packet it sent.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` bytes sent to the guest.
    pub fn sent(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// The fwd_cnt field of a packet to the guest (marks it as told).
    pub fn fwd_cnt(&mut self) -> u32 {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.fwd_cnt.0
    }

    /// True when the guest should hear about freed space: a quarter of the
    /// buffer forwarded since it last heard, or everything (so a guest that
    /// waits for credit always gets it).
    pub fn wants_credit_update(&self) -> bool {
        let unsent = (self.fwd_cnt - self.fwd_cnt_sent).0;
        unsent >= BUF_ALLOC / 4 || (unsent > 0 && self.to_host.is_empty())
    }

    /// Data from the guest for the host socket. False if the guest sent
    /// more than its credit allows (the connection must be reset).
    pub fn push_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend(data);
        self.flush_to_host().is_ok()
    }

    /// Writes what it can of the pending bytes; an error means the host side is gone.
    pub fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() && self.guest_done {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// True when the connection is over: both ways shut and nothing left to write.
    pub fn finished(&self) -> bool {
        self.finish && self.to_host.is_empty()
    }

    /// What epoll should watch: input while not known readable, output while bytes wait.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::ONE_SHOT;
        if !self.readable && !self.host_done && self.state == State::Established {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

/// A host client that connected to the hybrid socket and has not finished
/// its `CONNECT <port>\n` line.
pub struct Handshake {
    /// The client.
    pub stream: UnixStream,
    line: Vec<u8>,
}

/// What a handshake read gave.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStep {
    /// Not a full line yet.
    More,
    /// `CONNECT <port>`.
    Connect(u32),
    /// A bad line or a closed client: drop it.
    Fail,
}

impl Handshake {
    /// A client on `stream`.
    pub fn new(stream: UnixStream) -> Self {
        Handshake {
            stream,
            line: Vec::new(),
        }
    }

    /// Reads what the client sent, a byte at a time (nothing past the
    /// newline is taken: it belongs to the stream).
    pub fn read(&mut self) -> HandshakeStep {
        let mut b = [0u8; 1];
        loop {
            match self.stream.read(&mut b) {
                Ok(0) => return HandshakeStep::Fail,
                Ok(_) if b[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) if self.line.len() >= MAX_HANDSHAKE => return HandshakeStep::Fail,
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return HandshakeStep::More,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return HandshakeStep::Fail,
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect(line: &[u8]) -> HandshakeStep {
    let s = String::from_utf8_lossy(line);
    match s.trim_end_matches('\r').strip_prefix("CONNECT ") {
        Some(p) => p
            .trim()
            .parse::<u32>()
            .map_or(HandshakeStep::Fail, HandshakeStep::Connect),
        None => HandshakeStep::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_accounting() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 0, State::Established);
        assert_eq!(c.credit(), 0, "no credit before the guest says anything");
        c.peer_credit(1000, 0);
        c.sent(600);
        assert_eq!(c.credit(), 400);
        c.peer_credit(1000, 500);
        assert_eq!(c.credit(), 900);
        // Wrapping counters.
        c.rx_cnt = Wrapping(u32::MAX - 10);
        c.peer_credit(1000, u32::MAX - 10);
        c.sent(20);
        assert_eq!(c.credit(), 980);
        // Guest data beyond its credit is refused.
        assert!(!c.push_to_host(&vec![0; BUF_ALLOC as usize + 1]));
    }

    #[test]
    fn forwarding_counts_and_asks_for_updates() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 0, State::Established);
        assert!(!c.wants_credit_update());
        assert!(c.push_to_host(b"hello"));
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert!(c.wants_credit_update(), "all forwarded: tell the guest");
        assert_eq!(c.fwd_cnt(), 5);
        assert!(!c.wants_credit_update());
        assert_eq!(c.interest(), EventSet::IN | EventSet::ONE_SHOT);
    }

    #[test]
    fn handshake_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), HandshakeStep::Connect(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), HandshakeStep::Connect(52));
        assert_eq!(parse_connect(b"CONNECT x"), HandshakeStep::Fail);
        assert_eq!(parse_connect(b"HELLO 1"), HandshakeStep::Fail);
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut h = Handshake::new(a);
        b.write_all(b"CONN").unwrap();
        assert_eq!(h.read(), HandshakeStep::More);
        b.write_all(b"ECT 7\nDATA").unwrap();
        assert_eq!(h.read(), HandshakeStep::Connect(7));
        let mut rest = [0u8; 4];
        h.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"DATA", "bytes after the line stay in the stream");
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut h = Handshake::new(a);
        b.write_all(&[b'A'; 40]).unwrap();
        assert_eq!(h.read(), HandshakeStep::Fail, "too long");
    }
}
