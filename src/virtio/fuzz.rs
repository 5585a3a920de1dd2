//! The queue handling of every device on arbitrary guest memory: the
//! descriptor table, rings and buffers are whatever the input says, and the
//! queue sits wherever it says. Nothing may panic, hang or write outside
//! guest memory; bad chains get error statuses or mark the device as
//! needing a reset. A cargo-fuzz target calls [`fuzz_queue`] (exported
//! from the crate with the `fuzzing` feature); the test below runs it on
//! semi-structured inputs.

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{serve_queue, Interrupt};

/// Guest memory of the fuzzed VM.
pub const MEM: usize = 64 << 10;
/// Bytes of the input that steer the run; the rest becomes guest memory.
pub const CONTROL: usize = 16;

fn interrupt() -> Option<Interrupt> {
    let v = (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(Interrupt::new(
        Arc::new(v),
        vec![1, 1, 1],
        0,
        Arc::new(AtomicU8::new(0)),
        Arc::new(AtomicBool::new(false)),
    ))
}

/// One run: `data[0]` picks the device, `data[1]` the queue size, `data[2..8]`
/// the ring addresses; `data[16..]` is guest memory from address 0.
pub fn fuzz_queue(data: &[u8]) {
    if data.len() < CONTROL {
        return;
    }
    let (ctl, rest) = data.split_at(CONTROL);
    let Ok(mem) = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    let _ = mem.write_slice(&rest[..rest.len().min(MEM)], GuestAddress(0));
    let Ok(mut q) = Queue::new(256) else { return };
    // Sizes that are not powers of two are refused by the queue (and the
    // transport then refuses to start the device): keep the maximum.
    let _ = q.try_set_size(u16::from(ctl[1]) + 1);
    let addr = |i: usize| u64::from(u32::from_le_bytes([ctl[i], ctl[i + 1], 0, 0])) << 1;
    q.set_desc_table_address(Some(addr(2) as u32), Some(0));
    q.set_avail_ring_address(Some(addr(4) as u32), Some(0));
    q.set_used_ring_address(Some(addr(6) as u32), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return; // the transport sets NEEDS_RESET instead of starting
    }
    let Some(irq) = interrupt() else { return };
    match ctl[0] % 5 {
        0 => serve_queue(&mut q, &mem, &irq, 0, |c| super::rng::serve(&mem, c)),
        1 => {
            let Ok(mut disk) = super::block::Disk::scratch(64) else {
                return;
            };
            serve_queue(&mut q, &mem, &irq, 0, |c| disk.serve(&mem, c));
        }
        2 => fuzz_vsock(&mem, &mut q, &irq, &ctl[8..]),
        n => {
            let frame = &rest[..rest.len().min(2048)];
            super::net::fuzz(&mem, q, &irq, frame, n == 3);
        }
    }
}

fn fuzz_vsock(mem: &GuestMemoryMmap, q: &mut Queue, irq: &Interrupt, name: &[u8]) {
    use std::os::linux::net::SocketAddrExt;
    let mut n = b"vflaunch-fuzz-".to_vec();
    n.extend_from_slice(format!("{}-", std::process::id()).as_bytes());
    n.extend(name.iter().map(|b| b'a' + b % 26));
    let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(&n) else {
        return;
    };
    let Ok(listener) = UnixListener::bind_addr(&addr) else {
        return;
    };
    let path = "/nonexistent/vflaunch-fuzz".into();
    let mut mux = super::vsock::mux::Mux::new(3, path, listener);
    let _ = super::thread::with_scratch_registrar(|reg| {
        serve_queue(q, mem, irq, 1, |c| {
            mux.guest_packet(mem, c, reg);
            0
        });
        // The same ring as the receive queue: control replies go there.
        mux.fill_rx(mem, q, irq, reg);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic inputs, no dependency.
    struct Rand(u64);
    impl Rand {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// Guest memory that looks like a queue: a descriptor table at 0, the
    /// available ring at 0x1000, the used ring at 0x2000, descriptors that
    /// point into memory (or just past it), chain links and indices that are
    /// plausible or not.
    fn structured(r: &mut Rand, device: u8) -> Vec<u8> {
        let mut d = vec![0u8; CONTROL + 0x4000];
        let size = [1u8, 2, 4, 8, 16][(r.next() % 5) as usize];
        d[0] = device;
        d[1] = size - 1;
        d[2..8].copy_from_slice(&[0, 0, 0x00, 0x08, 0x00, 0x10]); // <<1: 0, 0x1000, 0x2000
        d[8..16].copy_from_slice(&r.next().to_le_bytes());
        let m = &mut d[CONTROL..];
        for i in 0..usize::from(size) {
            let at = i * 16;
            let addr = 0x3000 + r.next() % (MEM as u64 - 0x2f00);
            m[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            let len = (r.next() % 0x1200) as u32;
            m[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            let flags = (r.next() % 8) as u16;
            m[at + 12..at + 14].copy_from_slice(&flags.to_le_bytes());
            let next = (r.next() % u64::from(size) + u64::from(r.next() % 8 == 0)) as u16;
            m[at + 14..at + 16].copy_from_slice(&next.to_le_bytes());
        }
        let idx = (r.next() % (u64::from(size) * 2 + 1)) as u16;
        m[0x1002..0x1004].copy_from_slice(&idx.to_le_bytes());
        for i in 0..usize::from(size) {
            let head = (r.next() % (u64::from(size) + 1)) as u16;
            m[0x1004 + 2 * i..0x1006 + 2 * i].copy_from_slice(&head.to_le_bytes());
        }
        // Buffers full of noise (vsock and block headers included).
        for b in &mut m[0x3000..] {
            *b = r.next() as u8;
        }
        d
    }

    #[test]
    fn arbitrary_queues_never_panic() {
        let mut r = Rand(0x9e37_79b9_7f4a_7c15);
        for i in 0..1500u32 {
            fuzz_queue(&structured(&mut r, (i % 5) as u8));
        }
        for _ in 0..300 {
            let len = (r.next() % 0x3000) as usize;
            let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            fuzz_queue(&data);
        }
    }
}
