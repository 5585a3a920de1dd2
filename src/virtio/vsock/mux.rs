//! The connections of one vsock device: packets from the guest (tx queue)
//! drive them, host sockets feed them, and [`Mux::fill_rx`] fills the rx
//! queue with control packets first, then data from the connections in
//! turn, each within the credit the guest gave. Everything is bounded: the
//! number of connections, the control backlog, the bytes buffered per
//! connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::conn::{Conn, Handshake, HandshakeStep, State, BUF_ALLOC};
use crate::virtio::{Chain, Interrupt, Registrar};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Stream sockets.
pub const TYPE_STREAM: u16 = 1;
/// Operations (virtio 1.2, 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}
/// SHUTDOWN flags: the peer will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// See [`SHUTDOWN_RCV`].
pub const SHUTDOWN_SEND: u32 = 2;
/// Largest payload of one packet.
const MAX_PKT: u32 = 64 << 10;
/// Connections (and pending handshakes) at once.
const MAX_CONNS: usize = 1024;
/// Control packets waiting for rx buffers.
const MAX_CTRL: usize = 4096;
/// Host ports handed to host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Tokens of connection sockets start here.
const FIRST_TOKEN: u32 = 16;

/// (host port, guest port).
type Key = (u32, u32);

/// A header-only packet for the guest.
#[derive(Clone, Copy, Debug)]
struct Ctrl {
    key: Key,
    op: u16,
    flags: u32,
}

/// The connections of one device.
pub struct Mux {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    conns: BTreeMap<Key, Conn>,
    tokens: HashMap<u32, Key>,
    handshakes: HashMap<u32, Handshake>,
    ctrl: VecDeque<Ctrl>,
    next_token: u32,
    next_port: u32,
    cursor: Key,
    buf: Vec<u8>,
}

impl Mux {
    /// A multiplexer for guest `cid` on the hybrid socket `path`.
    pub fn new(cid: u64, path: PathBuf, listener: UnixListener) -> Self {
        Mux {
            cid,
            path,
            listener,
            conns: BTreeMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            ctrl: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_port: FIRST_HOST_PORT,
            cursor: (0, 0),
            buf: vec![0; MAX_PKT as usize],
        }
    }

    /// The listening socket's descriptor.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    fn token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.checked_add(1).unwrap_or(FIRST_TOKEN);
            if !self.tokens.contains_key(&t) && !self.handshakes.contains_key(&t) {
                return t;
            }
        }
    }

    fn full(&self) -> bool {
        self.conns.len() + self.handshakes.len() >= MAX_CONNS
    }

    fn send_ctrl(&mut self, key: Key, op: u16, flags: u32) {
        if self.ctrl.len() < MAX_CTRL {
            self.ctrl.push_back(Ctrl { key, op, flags });
        } else {
            log::warn!("vsock: the guest takes no packets; dropped a control packet");
        }
    }

    fn arm(reg: &mut Registrar, c: &Conn) {
        if let Err(e) = reg.modify(c.stream.as_raw_fd(), c.token, c.interest()) {
            log::warn!("vsock: cannot watch a connection: {e}");
        }
    }

    /// Drops the connection `key` (its socket closes).
    fn close(&mut self, key: Key, reg: &mut Registrar) {
        if let Some(c) = self.conns.remove(&key) {
            reg.remove(c.stream.as_raw_fd());
            self.tokens.remove(&c.token);
        }
    }

    /// Drops `key` and tells the guest.
    fn reset(&mut self, key: Key, reg: &mut Registrar) {
        self.close(key, reg);
        self.send_ctrl(key, op::RST, 0);
    }

    fn add_conn(&mut self, key: Key, c: Conn, reg: &mut Registrar) -> bool {
        if let Err(e) = reg.add(c.stream.as_raw_fd(), c.token, c.interest()) {
            log::warn!("vsock: cannot watch a connection: {e}");
            return false;
        }
        self.tokens.insert(c.token, key);
        self.conns.insert(key, c);
        true
    }

    /// Accepts host clients on the hybrid socket.
    pub fn accept(&mut self, reg: &mut Registrar) {
        loop {
            let s = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.full() || s.set_nonblocking(true).is_err() {
                log::warn!("vsock: too many connections; a host client was turned away");
                continue;
            }
            let t = self.token();
            if reg.add(s.as_raw_fd(), t, EventSet::IN).is_ok() {
                self.handshakes.insert(t, Handshake::new(s));
            }
        }
    }

    fn free_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.keys().any(|k| k.0 == p) {
                return p;
            }
        }
    }

    /// A host socket is ready.
    pub fn host_event(&mut self, token: u32, events: EventSet, reg: &mut Registrar) {
        if let Some(h) = self.handshakes.get_mut(&token) {
            match h.read() {
                HandshakeStep::More => {}
                HandshakeStep::Fail => {
                    if let Some(h) = self.handshakes.remove(&token) {
                        reg.remove(h.stream.as_raw_fd());
                    }
                }
                HandshakeStep::Connect(port) => {
                    let Some(h) = self.handshakes.remove(&token) else {
                        return;
                    };
                    reg.remove(h.stream.as_raw_fd());
                    let key = (self.free_port(), port);
                    let c = Conn::new(h.stream, token, State::Connecting);
                    if self.add_conn(key, c, reg) {
                        self.send_ctrl(key, op::REQUEST, 0);
                    }
                }
            }
            return;
        }
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let gone = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if c.state == State::Connecting && gone {
            return self.reset(key, reg); // the client gave up before the guest answered
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP) && c.state == State::Established {
            c.readable = true;
        }
        if c.flush_to_host().is_err() || c.finished() {
            return self.reset(key, reg);
        }
        if c.wants_credit_update() {
            self.send_ctrl(key, op::CREDIT_UPDATE, 0);
        }
        if let Some(c) = self.conns.get(&key) {
            Self::arm(reg, c);
        }
    }

    /// One packet from the guest.
    ///
    /// The header and the data are read from however many descriptors the
    /// driver used: Linux 6.x puts the data of a packet over 32 KiB in page
    /// fragments, several descriptors (`from_tx_virtq_chain` takes one).
    pub fn guest_packet(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>, reg: &mut Registrar) {
        let mut r = match chain.reader(mem) {
            Ok(r) => r,
            Err(e) => return log::debug!("vsock: dropped a guest packet outside RAM: {e}"),
        };
        let mut raw = [0u8; PKT_HEADER_SIZE];
        if r.read_exact(&mut raw).is_err() {
            return log::debug!("vsock: dropped a guest packet shorter than its header");
        }
        let mut hdr = [0u8; PKT_HEADER_SIZE];
        // SAFETY: the packet views `hdr`, a local that outlives it (both end
        // with this call) and that nothing else touches meanwhile.
        let mut pkt = match unsafe { VsockPacket::new(&mut hdr, None) } {
            Ok(p) => p,
            Err(e) => return log::debug!("vsock: {e}"),
        };
        if pkt.set_header_from_raw(&raw).is_err() {
            return;
        }
        if pkt.len() > MAX_PKT {
            return log::debug!("vsock: dropped a guest packet of {} bytes", pkt.len());
        }
        let key = (pkt.dst_port(), pkt.src_port());
        let op = pkt.op();
        if pkt.type_() != TYPE_STREAM || pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID {
            if op != op::RST {
                self.send_ctrl(key, op::RST, 0);
            }
            return;
        }
        if op == op::REQUEST {
            return self.guest_connect(key, pkt.buf_alloc(), pkt.fwd_cnt(), reg);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if op != op::RST {
                self.send_ctrl(key, op::RST, 0);
            }
            return;
        };
        c.peer_credit(pkt.buf_alloc(), pkt.fwd_cnt());
        match op {
            op::RESPONSE if c.state == State::Connecting => {
                c.state = State::Established;
                let ok = format!("OK {}\n", key.0);
                if c.stream.write_all(ok.as_bytes()).is_err() {
                    return self.reset(key, reg);
                }
            }
            op::RW if c.state == State::Established => {
                let n = pkt.len() as usize;
                if r.read_exact(&mut self.buf[..n]).is_err() {
                    return log::debug!("vsock: dropped a guest packet shorter than its length");
                }
                if !c.push_to_host(&self.buf[..n]) {
                    log::debug!(
                        "vsock: guest port {} overran its credit or the host closed",
                        key.1
                    );
                    return self.reset(key, reg);
                }
            }
            op::CREDIT_REQUEST => self.send_ctrl(key, op::CREDIT_UPDATE, 0),
            op::SHUTDOWN => {
                let f = pkt.flags();
                c.guest_done |= f & SHUTDOWN_SEND != 0;
                if f & SHUTDOWN_RCV != 0 {
                    c.host_done = true; // the guest takes no more data
                    c.readable = false;
                }
                // Both ways shut: write what is left for the host, then reset.
                c.finish |= c.guest_done && c.host_done;
                if c.flush_to_host().is_err() || c.finished() {
                    return self.reset(key, reg);
                }
            }
            op::RST => return self.close(key, reg),
            op::CREDIT_UPDATE => {}
            _ => return self.reset(key, reg),
        }
        if let Some(c) = self.conns.get(&key) {
            Self::arm(reg, c);
            if c.wants_credit_update() {
                self.send_ctrl(key, op::CREDIT_UPDATE, 0);
            }
        }
    }

    /// The guest connects to host port `key.0`: join `PATH_<port>`.
    fn guest_connect(&mut self, key: Key, buf_alloc: u32, fwd_cnt: u32, reg: &mut Registrar) {
        if self.conns.contains_key(&key) || self.full() {
            return self.send_ctrl(key, op::RST, 0);
        }
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&p) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                log::debug!("vsock: nothing listens on {}", p.to_string_lossy());
                return self.send_ctrl(key, op::RST, 0);
            }
        };
        let t = self.token();
        let mut c = Conn::new(stream, t, State::Established);
        c.peer_credit(buf_alloc, fwd_cnt);
        if self.add_conn(key, c, reg) {
            self.send_ctrl(key, op::RESPONSE, 0);
        } else {
            self.send_ctrl(key, op::RST, 0);
        }
    }

    /// The next connection with data for the guest and credit to send it, round robin.
    fn next_ready(&self) -> Option<Key> {
        let ready = |(k, c): (&Key, &Conn)| {
            (c.readable && !c.host_done && c.state == State::Established && c.credit() > 0)
                .then_some(*k)
        };
        let after = self.conns.range((
            std::ops::Bound::Excluded(self.cursor),
            std::ops::Bound::Unbounded,
        ));
        after
            .filter_map(ready)
            .next()
            .or_else(|| self.conns.iter().filter_map(ready).next())
    }

    fn header(&mut self, pkt: &mut VsockPacket<'_, ()>, key: Key, op: u16, flags: u32, len: u32) {
        let fwd = self.conns.get_mut(&key).map_or(0, Conn::fwd_cnt);
        let _ = pkt.set_header_from_raw(&[0; PKT_HEADER_SIZE]);
        pkt.set_src_cid(HOST_CID)
            .set_dst_cid(self.cid)
            .set_src_port(key.0)
            .set_dst_port(key.1)
            .set_type(TYPE_STREAM)
            .set_op(op)
            .set_flags(flags)
            .set_len(len)
            .set_buf_alloc(BUF_ALLOC)
            .set_fwd_cnt(fwd);
    }

    /// Fills `pkt` with data from `key`; `None` if the socket had nothing after all.
    fn data(
        &mut self,
        pkt: &mut VsockPacket<'_, ()>,
        key: Key,
        reg: &mut Registrar,
    ) -> Option<u32> {
        let room = pkt.data_slice().map_or(0, |d| d.len());
        let c = self.conns.get_mut(&key)?;
        let n = (c.credit() as usize).min(room).min(self.buf.len());
        if n == 0 {
            return Some(0); // a buffer with no room for data: give it back empty
        }
        match c.stream.read(&mut self.buf[..n]) {
            Ok(0) => {
                // EOF from the host: it sends no more (it may still read).
                c.host_done = true;
                c.readable = false;
                c.finish |= c.guest_done;
                Self::arm(reg, c);
                self.header(pkt, key, op::SHUTDOWN, SHUTDOWN_SEND, 0);
                if self.conns.get(&key).is_some_and(Conn::finished) {
                    self.close(key, reg);
                }
                Some(PKT_HEADER_SIZE as u32)
            }
            Ok(n) => {
                c.sent(n as u32);
                let d = pkt.data_slice()?;
                d.copy_from(&self.buf[..n]);
                self.header(pkt, key, op::RW, 0, n as u32);
                Some((PKT_HEADER_SIZE + n) as u32)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                c.readable = false;
                Self::arm(reg, c);
                None
            }
            Err(_) => {
                self.close(key, reg);
                self.header(pkt, key, op::RST, 0, 0);
                Some(PKT_HEADER_SIZE as u32)
            }
        }
    }

    /// Fills the guest's rx buffers: control packets, then data.
    pub fn fill_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        rx: &mut Queue,
        irq: &Interrupt,
        reg: &mut Registrar,
    ) {
        let mut used = false;
        // Each pass uses a buffer or clears a readable flag: bounded.
        for _ in 0..(usize::from(rx.size()) + self.conns.len() + 1) * 2 {
            let ready = if self.ctrl.is_empty() {
                self.next_ready()
            } else {
                None
            };
            if self.ctrl.is_empty() && ready.is_none() {
                break;
            }
            let Some(mut chain) = rx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT) {
                Err(_) => Some(0),
                Ok(mut pkt) => match (self.ctrl.pop_front(), ready) {
                    (Some(c), _) => {
                        self.header(&mut pkt, c.key, c.op, c.flags, 0);
                        Some(PKT_HEADER_SIZE as u32)
                    }
                    (None, Some(key)) => {
                        self.cursor = key;
                        self.data(&mut pkt, key, reg)
                    }
                    (None, None) => None,
                },
            };
            let Some(len) = len else {
                rx.go_to_previous_position();
                continue;
            };
            if let Err(e) = rx.add_used(mem, head, len) {
                return irq.needs_reset(&format!("vsock rx queue: {e}"));
            }
            used = true;
        }
        if used && rx.needs_notification(mem).unwrap_or(true) {
            irq.signal_queue(0);
        }
    }
}
