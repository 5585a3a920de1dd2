//! virtio-net (virtio 1.2, 5.1) on a tap: one receive and one transmit
//! queue, the MAC address in the configuration, no offloads. Frames from
//! the tap go into the guest's receive buffers with a 12-byte header
//! (num_buffers = 1); frames from the guest go to the tap, a full tap
//! queue drops them (as a wire would).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::options::{NetConfig, TapSource};
use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::{
    serve_queue, ActivateError, Activation, Chain, Interrupt, Registrar, VirtioDevice, Worker,
};

/// The device ID of a network card.
const TYPE_NET: u16 = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// The largest frame (64 KiB plus the header) either way.
const MAX_FRAME: usize = 65536 + VNET_HDR_LEN;
const TOKEN_RX: u32 = 0;
const TOKEN_TX: u32 = 1;
const TOKEN_TAP: u32 = 2;

/// A network device on a tap.
pub struct Net {
    name: String,
    tap: Tap,
    mac: [u8; 6],
}

/// A locally administered unicast MAC from the host's random source.
fn random_mac() -> [u8; 6] {
    let mut m = [0u8; 6];
    // SAFETY: `m` is a valid, writable 6-byte buffer.
    let n = unsafe { libc::getrandom(m.as_mut_ptr().cast(), m.len(), 0) };
    if n != 6 {
        m = [0, 0x12, 0x34, 0x56, 0x78, 0x9a];
    }
    m[0] = (m[0] & 0xfe) | 0x02;
    m
}

impl Net {
    /// Opens the tap of `cfg`.
    pub fn open(cfg: &NetConfig) -> Result<Self, TapError> {
        let tap = match &cfg.tap {
            TapSource::Name(n) => Tap::open(n)?,
            TapSource::Fd(fd) => Tap::from_raw(*fd)?,
            TapSource::Passed(fd) => Tap::from_fd(fd.try_clone().map_err(TapError::Setup)?)?,
        };
        Ok(Net::with_tap(tap, cfg.mac))
    }

    /// A device on an open tap.
    pub fn with_tap(tap: Tap, mac: Option<[u8; 6]>) -> Self {
        let mac = mac.unwrap_or_else(random_mac);
        let m = mac.map(|b| format!("{b:02x}")).join(":");
        log::info!("virtio-net: tap {} with MAC {m}", tap.name);
        Net {
            name: format!("virtio-net {}", tap.name),
            tap,
            mac,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        TYPE_NET
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac, offset, data);
    }
    fn activate(&mut self, act: Activation) -> Result<Box<dyn Worker>, ActivateError> {
        let n = act.queues.len();
        let mut q = act.queues.into_iter();
        let (Some(rx), Some(tx)) = (q.next(), q.next()) else {
            return Err(ActivateError::Queues(n, 2));
        };
        Ok(Box::new(NetWorker {
            tap: self.tap.file.try_clone().map_err(ActivateError::Os)?,
            vnet_hdr: self.tap.vnet_hdr,
            readable: false,
            mem: act.mem,
            rx,
            tx,
            kicks: act.kicks,
            interrupt: act.interrupt,
            buf: vec![0; MAX_FRAME],
        }))
    }
}

struct NetWorker {
    tap: File,
    vnet_hdr: bool,
    /// The tap fired and was not drained yet.
    readable: bool,
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
    buf: Vec<u8>,
}

/// One frame from the guest to the tap; returns 0 (nothing written to the guest).
fn transmit(
    mem: &GuestMemoryMmap,
    tap: &mut File,
    vnet_hdr: bool,
    buf: &mut [u8],
    c: Chain<'_>,
) -> u32 {
    let Ok(mut r) = c.reader(mem) else {
        log::debug!("virtio-net: a frame outside guest memory");
        return 0;
    };
    let len = r.available_bytes();
    if !(VNET_HDR_LEN..=buf.len()).contains(&len) || r.read_exact(&mut buf[..len]).is_err() {
        log::debug!("virtio-net: dropped a {len}-byte frame from the guest");
        return 0;
    }
    // No offloads were negotiated: whatever the header says, it is a plain frame.
    buf[..VNET_HDR_LEN].fill(0);
    let frame = if vnet_hdr {
        &buf[..len]
    } else {
        &buf[VNET_HDR_LEN..len]
    };
    match tap.write(frame) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => {
            log::trace!("virtio-net: tap full, frame dropped")
        }
        Err(e) => log::debug!("virtio-net: tap write failed: {e}"),
    }
    0
}

impl NetWorker {
    fn arm(&self, reg: &mut Registrar) {
        let e = if self.readable {
            EventSet::ONE_SHOT
        } else {
            EventSet::IN | EventSet::ONE_SHOT
        };
        if let Err(e) = reg.modify(self.tap.as_raw_fd(), TOKEN_TAP, e) {
            log::warn!("virtio-net: cannot watch the tap: {e}");
        }
    }

    /// Reads one frame (with its header) into `buf`; `None` when the tap is empty.
    fn read_frame(tap: &mut File, vnet_hdr: bool, buf: &mut [u8]) -> Option<usize> {
        let off = if vnet_hdr { 0 } else { VNET_HDR_LEN };
        loop {
            match tap.read(&mut buf[off..]) {
                Ok(n) if n + off < VNET_HDR_LEN => continue, // runt: skip it
                Ok(n) => {
                    buf[..off].fill(0);
                    // num_buffers: one buffer per frame (no MRG_RXBUF).
                    buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    return Some(n + off);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        log::debug!("virtio-net: tap read failed: {e}");
                    }
                    return None;
                }
            }
        }
    }

    /// Moves frames from the tap into the guest's receive buffers.
    fn receive(&mut self, reg: &mut Registrar) {
        if self.interrupt.is_broken() {
            return;
        }
        let mut used = false;
        // Bounded by the ring: each pass uses a buffer or stops.
        for _ in 0..=usize::from(self.rx.size()) {
            if !self.readable {
                break;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                break; // no buffers: the guest kicks rx when it adds some
            };
            let head = chain.head_index();
            let Some(len) = Self::read_frame(&mut self.tap, self.vnet_hdr, &mut self.buf) else {
                self.readable = false;
                self.rx.go_to_previous_position();
                break;
            };
            let written = match chain.writer(&self.mem) {
                Ok(mut w) if w.available_bytes() >= len => match w.write_all(&self.buf[..len]) {
                    Ok(()) => len as u32,
                    Err(_) => 0,
                },
                _ => {
                    log::debug!("virtio-net: a {len}-byte frame does not fit the guest's buffer");
                    0
                }
            };
            if let Err(e) = self.rx.add_used(&self.mem, head, written) {
                return self
                    .interrupt
                    .needs_reset(&format!("virtio-net rx queue: {e}"));
            }
            used = true;
        }
        if used && self.rx.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_queue(0);
        }
        self.arm(reg);
    }
}

impl Worker for NetWorker {
    fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()> {
        for (token, k) in [TOKEN_RX, TOKEN_TX].iter().zip(&self.kicks) {
            reg.add(k.as_raw_fd(), *token, EventSet::IN)?;
        }
        reg.add(
            self.tap.as_raw_fd(),
            TOKEN_TAP,
            EventSet::IN | EventSet::ONE_SHOT,
        )
    }

    fn event(&mut self, token: u32, _events: EventSet, reg: &mut Registrar) {
        match token {
            TOKEN_RX => {
                if let Some(k) = self.kicks.first() {
                    super::drain(k);
                }
            }
            TOKEN_TX => {
                if let Some(k) = self.kicks.get(1) {
                    super::drain(k);
                }
                let (mem, tap, buf, hdr) = (&self.mem, &mut self.tap, &mut self.buf, self.vnet_hdr);
                serve_queue(&mut self.tx, mem, &self.interrupt, 1, |c| {
                    transmit(mem, tap, hdr, buf, c)
                });
            }
            _ => self.readable = true,
        }
        self.receive(reg);
    }
}

/// Drives the queue handling on arbitrary guest memory: `q` as the
/// transmit queue, then as the receive queue with `frame` waiting on the tap.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz(mem: &GuestMemoryMmap, q: Queue, irq: &Interrupt, frame: &[u8], vnet_hdr: bool) {
    use std::os::fd::OwnedFd;
    let Ok((a, b)) = std::os::unix::net::UnixDatagram::pair() else {
        return;
    };
    let _ = a.set_nonblocking(true);
    let _ = b.set_nonblocking(true);
    let mut w = NetWorker {
        tap: File::from(OwnedFd::from(a)),
        vnet_hdr,
        readable: true,
        mem: mem.clone(),
        rx: q,
        tx: Queue::default(),
        kicks: Vec::new(),
        interrupt: irq.clone(),
        buf: vec![0; MAX_FRAME],
    };
    let (m, tap, buf) = (&w.mem, &mut w.tap, &mut w.buf);
    serve_queue(&mut w.rx, m, irq, 1, |c| transmit(m, tap, vnet_hdr, buf, c));
    let _ = b.send(frame);
    let _ = super::thread::with_scratch_registrar(|reg| w.receive(reg));
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
