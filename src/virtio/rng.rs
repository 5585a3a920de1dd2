//! virtio-rng (virtio 1.2, 5.4): one queue the driver fills with writable
//! buffers; each comes back full of bytes from the host's `getrandom`.

use std::os::fd::AsRawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    serve_queue, ActivateError, Activation, Chain, Interrupt, Registrar, VirtioDevice, Worker,
};

/// The device ID of an entropy source.
const TYPE_RNG: u16 = 4;
const QUEUE_SIZES: [u16; 1] = [256];
/// The most bytes one request gets (a driver asks for far less).
const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u16 {
        TYPE_RNG
    }
    fn name(&self) -> &str {
        "virtio-rng"
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, act: Activation) -> Result<Box<dyn Worker>, ActivateError> {
        let (Some(queue), Some(kick)) =
            (act.queues.into_iter().next(), act.kicks.into_iter().next())
        else {
            return Err(ActivateError::Queues(0, 1));
        };
        Ok(Box::new(RngWorker {
            mem: act.mem,
            queue,
            kick,
            interrupt: act.interrupt,
        }))
    }
}

struct RngWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    kick: EventFd,
    interrupt: Interrupt,
}

/// Fills `buf` from the host's `getrandom`; returns the bytes filled.
fn fill_random(buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("virtio-rng: getrandom failed: {e}");
            break;
        }
        done += n as usize;
    }
    done
}

/// One request: fills the chain's writable buffers.
pub fn serve(mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
    use std::io::Write;
    let Ok(mut w) = chain.writer(mem) else {
        log::warn!("virtio-rng: a request points outside guest memory");
        return 0;
    };
    let mut buf = vec![0u8; w.available_bytes().min(MAX_REQUEST)];
    let n = fill_random(&mut buf);
    match w.write_all(&buf[..n]) {
        Ok(()) => n as u32,
        Err(_) => w.bytes_written() as u32,
    }
}

impl Worker for RngWorker {
    fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()> {
        reg.add(self.kick.as_raw_fd(), 0, EventSet::IN)
    }

    fn event(&mut self, _token: u32, _events: EventSet, _reg: &mut Registrar) {
        super::drain(&self.kick);
        let mem = &self.mem;
        serve_queue(&mut self.queue, mem, &self.interrupt, 0, |c| serve(mem, c));
    }
}

#[cfg(test)]
#[path = "rng_tests.rs"]
mod tests;
