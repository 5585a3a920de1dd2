//! Virtio devices on the guest's PCI bus (virtio 1.2, modern interface only).
//!
//! The transport ([`pci::VirtioPciDevice`]) is a [`crate::pci::PciDevice`]
//! whose one memory BAR traps entirely: common configuration ([`common`]),
//! ISR, device configuration, the queue notification area (backed by KVM
//! ioeventfds, so a kick never runs device code on the vCPU) and the MSI-X
//! table. When the driver sets DRIVER_OK the device model hands a
//! [`Worker`] to the one device thread ([`thread::DeviceThread`]), which
//! runs every device's queues from an epoll loop; a reset takes it back.
//! Interrupts go out through eventfds on KVM irqfd routes ([`Interrupt`]).

pub mod block;
pub mod common;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod net;
pub mod options;
pub mod pci;
pub mod pci_layout;
pub mod rng;
pub mod tap;
#[cfg(test)]
pub mod testing;
pub mod thread;
pub mod vsock;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use thread::{Registrar, Worker};

/// "No vector" in the MSI-X vector registers.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue was used.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
pub const ISR_CONFIG: u8 = 2;

/// What a device kind provides to the transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio 1.2, 5).
    fn device_type(&self) -> u16;
    /// A short name for log lines.
    fn name(&self) -> &str;
    /// The maximum size of each queue (its length is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits, without the transport's (`VIRTIO_F_VERSION_1` is added).
    fn features(&self) -> u64;
    /// Reads the device configuration at `offset`; bytes past it read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Guest write to the device configuration (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: builds the worker that runs the queues.
    fn activate(&mut self, act: Activation) -> Result<Box<dyn Worker>, ActivateError>;
}

/// Everything a worker needs: guest memory, the ready queues, their kick
/// eventfds (in queue order), the negotiated features, the interrupt.
pub struct Activation {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The queues, as the driver set them up.
    pub queues: Vec<Queue>,
    /// One kick eventfd per queue (the ioeventfd on its notify address).
    pub kicks: Vec<EventFd>,
    /// Features the driver accepted.
    #[expect(dead_code, reason = "no device has optional features yet")]
    pub features: u64,
    /// How the worker interrupts the guest.
    pub interrupt: Interrupt,
}

/// A device could not start its worker.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs.
    #[error("the driver enabled {0} queue(s); the device needs {1}")]
    Queues(usize, usize),
    /// Host resources (eventfds, sockets) could not be made.
    #[error("cannot set up the device's host side")]
    Os(#[source] std::io::Error),
}

/// The interrupt side of one device, shared by the transport and the worker.
#[derive(Clone)]
pub struct Interrupt {
    /// One eventfd per MSI-X vector (each on an irqfd route while live).
    vectors: Arc<Vec<EventFd>>,
    /// The vector of each queue, as the driver programmed it at activation.
    queue_vectors: Arc<Vec<u16>>,
    config_vector: u16,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
}

impl Interrupt {
    /// An interrupt over `vectors`, with queue `i` on `queue_vectors[i]`.
    pub fn new(
        vectors: Arc<Vec<EventFd>>,
        queue_vectors: Vec<u16>,
        config_vector: u16,
        isr: Arc<AtomicU8>,
        needs_reset: Arc<AtomicBool>,
    ) -> Self {
        Interrupt {
            vectors,
            queue_vectors: Arc::new(queue_vectors),
            config_vector,
            isr,
            needs_reset,
        }
    }

    fn raise(&self, vector: u16, isr: u8) {
        self.isr.fetch_or(isr, Ordering::SeqCst);
        if let Some(fd) = self.vectors.get(usize::from(vector)) {
            if let Err(e) = fd.write(1) {
                log::error!("virtio: cannot signal vector {vector}: {e}");
            }
        }
    }

    /// Signals that queue `q` has used buffers.
    pub fn signal_queue(&self, q: usize) {
        let v = self.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR);
        self.raise(v, ISR_QUEUE);
    }

    /// The driver broke the rules: the device stops and asks for a reset
    /// (DEVICE_NEEDS_RESET, with a configuration change interrupt).
    pub fn needs_reset(&self, why: &str) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            log::warn!("virtio: {why}; the device needs a reset");
            self.raise(self.config_vector, ISR_CONFIG);
        }
    }

    /// True once [`Interrupt::needs_reset`] was called.
    pub fn is_broken(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

/// Reads `bytes[offset..]` into `data`, zero past the end.
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o + i))
            .copied()
            .unwrap_or(0);
    }
}

/// Drains a kick eventfd (non-blocking; an empty one is fine).
pub fn drain(fd: &EventFd) {
    let _ = fd.read();
}

/// The guest memory type chains are read through.
pub type Chain<'a> = virtio_queue::DescriptorChain<&'a GuestMemoryMmap>;

/// Serves every chain the driver made available on queue `qi`: `f` handles
/// one and returns the bytes it wrote; each goes on the used ring and the
/// guest is interrupted once if it asked to be. A bad available index or
/// used ring marks the device as needing a reset. Bounded: at most one
/// queue's worth of chains per call.
pub fn serve_queue(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    qi: usize,
    mut f: impl FnMut(Chain<'_>) -> u32,
) {
    use virtio_queue::{QueueOwnedT, QueueT};
    if interrupt.is_broken() {
        return;
    }
    // One pass over what is available now (at most the ring size: the
    // iterator refuses an index further ahead); the driver kicks again for
    // what it adds later, as notifications are never suppressed.
    let chains: Vec<_> = match q.iter(mem) {
        Ok(it) => it.collect(),
        Err(e) => return interrupt.needs_reset(&format!("queue {qi}: {e}")),
    };
    let mut used = false;
    for chain in chains {
        let head = chain.head_index();
        let len = f(chain);
        if let Err(e) = q.add_used(mem, head, len) {
            return interrupt.needs_reset(&format!("queue {qi}: {e}"));
        }
        used = true;
    }
    if used && q.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_queue(qi);
    }
}
