//! virtio-vsock (virtio 1.2, 5.10) with Firecracker's hybrid unix-socket
//! backend, which Cloud Hypervisor and Kata's `HybridVSockDialer` speak:
//! a host client connects to the socket PATH and writes `CONNECT <port>\n`;
//! once the guest's listener on that port accepts, it reads `OK <host
//! port>\n` and the stream is joined. A guest connection to host port P is
//! joined to a client connection to `PATH_P`. Streams only; credit flow
//! control both ways ([`conn`]); the connections live in [`mux`].

pub mod conn;
pub mod mux;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::options::VsockConfig;
use super::{serve_queue, ActivateError, Activation, Interrupt, Registrar, VirtioDevice, Worker};
use mux::Mux;

/// The device ID of a socket device.
const TYPE_VSOCK: u16 = 19;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// Epoll tokens of the worker's fixed descriptors.
const TOKEN_RX: u32 = 0;
const TOKEN_TX: u32 = 1;
const TOKEN_EVENT: u32 = 2;
const TOKEN_LISTENER: u32 = 3;

/// Errors setting up the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Another process serves the socket.
    #[error("vsock socket {0} is in use by a running process: pick another path")]
    InUse(PathBuf),
    /// Something other than a socket is there.
    #[error("vsock socket {0} exists and is not a socket: remove it or pick another path")]
    NotASocket(PathBuf),
    /// The socket cannot be made.
    #[error("cannot listen on vsock socket {0}: check the directory and its permissions")]
    Bind(PathBuf, #[source] std::io::Error),
}

/// The vsock device; it owns the hybrid socket (removed when it goes).
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
}

impl Vsock {
    /// Listens on `cfg.socket`; a stale socket file is replaced, a live one refused.
    pub fn new(cfg: &VsockConfig) -> Result<Self, VsockError> {
        use std::os::unix::fs::FileTypeExt;
        let path = cfg.socket.clone();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(path));
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(VsockError::InUse(path));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|e| VsockError::Bind(path.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| VsockError::Bind(path.clone(), e))?;
        log::info!(
            "vsock: guest CID {}, hybrid socket {}",
            cfg.cid,
            path.display()
        );
        Ok(Vsock {
            cid: cfg.cid,
            path,
            listener,
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u16 {
        TYPE_VSOCK
    }
    fn name(&self) -> &str {
        "virtio-vsock"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }
    fn activate(&mut self, act: Activation) -> Result<Box<dyn Worker>, ActivateError> {
        let n = act.queues.len();
        let mut queues = act.queues.into_iter();
        let (Some(rx), Some(tx), Some(_event)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(ActivateError::Queues(n, 3));
        };
        let listener = self.listener.try_clone().map_err(ActivateError::Os)?;
        Ok(Box::new(VsockWorker {
            mux: Mux::new(self.cid, self.path.clone(), listener),
            mem: act.mem,
            rx,
            tx,
            kicks: act.kicks,
            interrupt: act.interrupt,
        }))
    }
}

struct VsockWorker {
    mux: Mux,
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    kicks: Vec<EventFd>,
    interrupt: Interrupt,
}

impl VsockWorker {
    fn drain_kick(&self, q: usize) {
        if let Some(k) = self.kicks.get(q) {
            super::drain(k);
        }
    }
}

impl Worker for VsockWorker {
    fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()> {
        for (token, k) in [TOKEN_RX, TOKEN_TX, TOKEN_EVENT].iter().zip(&self.kicks) {
            reg.add(k.as_raw_fd(), *token, EventSet::IN)?;
        }
        reg.add(self.mux.listener_fd(), TOKEN_LISTENER, EventSet::IN)
    }

    fn event(&mut self, token: u32, events: EventSet, reg: &mut Registrar) {
        match token {
            TOKEN_RX => self.drain_kick(0),
            TOKEN_TX => {
                self.drain_kick(1);
                let (mem, mux) = (&self.mem, &mut self.mux);
                serve_queue(&mut self.tx, mem, &self.interrupt, 1, |c| {
                    mux.guest_packet(mem, c, reg);
                    0
                });
            }
            TOKEN_EVENT => self.drain_kick(2),
            TOKEN_LISTENER => self.mux.accept(reg),
            t => self.mux.host_event(t, events, reg),
        }
        if !self.interrupt.is_broken() {
            self.mux
                .fill_rx(&self.mem, &mut self.rx, &self.interrupt, reg);
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
