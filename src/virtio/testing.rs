//! Test doubles for virtio: split queues laid out in test guest memory, a
//! router that keeps the vector eventfds, and a driver that brings a
//! [`VirtioPciDevice`] up through its BAR the way Linux's virtio-pci does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::common::off;
use super::pci::{VirtioPciDevice, Wiring};
use super::pci_layout::{bar, IoEvents};
use super::thread::DeviceThread;
use super::VirtioDevice;
use crate::interrupts::{InterruptError, MsiMessage, MsiRouter};
use crate::pci::bar::BarInfo;
use crate::pci::{regs, PciDevice};

/// Test guest memory: `size` bytes at 0.
pub fn memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

/// Descriptor flags.
pub const NEXT: u16 = 1;
/// The device writes this buffer.
pub const WRITE: u16 = 2;

/// A split queue in test memory: descriptor table, available and used rings.
pub struct TestQueue {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` at `base` (0x1000-aligned, 16 * size + 0x2000 bytes).
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        TestQueue {
            mem: mem.clone(),
            size,
            desc: base,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// Writes descriptor `i` raw.
    pub fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Makes head `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        let m = &self.mem;
        m.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Sets the available index as a (possibly lying) driver would.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Adds a chain of (address, length, device-writable) buffers; returns its head.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
            self.write_desc(i, addr, len, flags, (i + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used ring entry `i`: (descriptor head, bytes written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// A ready `Queue` over this layout (for driving a worker directly).
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }
}

/// Keeps a clone of each routed vector eventfd, by GSI.
#[derive(Default)]
pub struct VectorRouter {
    /// Live routes: GSI → (message, eventfd).
    pub routes: Mutex<BTreeMap<u32, (MsiMessage, EventFd)>>,
    next: Mutex<u32>,
}

impl MsiRouter for VectorRouter {
    fn allocate_gsis(&self, count: u32) -> Result<u32, InterruptError> {
        let mut n = self.next.lock().unwrap();
        let first = 100 + *n;
        *n += count;
        Ok(first)
    }

    fn route(&self, gsi: u32, msg: Option<MsiMessage>, fd: &EventFd) -> Result<(), InterruptError> {
        let mut r = self.routes.lock().unwrap();
        match msg {
            Some(m) => r.insert(gsi, (m, fd.try_clone().unwrap())),
            None => r.remove(&gsi),
        };
        Ok(())
    }
}

/// Records ioeventfd registrations: (address, registered).
#[derive(Default)]
pub struct RecordingIoEvents(pub Mutex<Vec<(u64, bool)>>);

impl IoEvents for RecordingIoEvents {
    fn register(&self, _fd: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.0.lock().unwrap().push((addr, true));
        Ok(())
    }
    fn unregister(&self, _fd: &EventFd, addr: u64) {
        self.0.lock().unwrap().push((addr, false));
    }
}

/// Where the test BAR lives.
pub const BAR_ADDR: u64 = 0xc000_0000;

/// A device on its transport, with a device thread, driven through its BAR.
pub struct Driver {
    /// The function.
    pub dev: VirtioPciDevice,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Routes (vector eventfds).
    pub router: Arc<VectorRouter>,
    /// ioeventfd registrations.
    pub ioevents: Arc<RecordingIoEvents>,
    /// The device thread (dropped last).
    pub _thread: DeviceThread,
}

impl Driver {
    /// `dev` on a transport over 4 MiB of test memory.
    pub fn new(dev: Box<dyn VirtioDevice>) -> Self {
        let mem = memory(4 << 20);
        let thread = DeviceThread::start().unwrap();
        let router = Arc::new(VectorRouter::default());
        let ioevents = Arc::new(RecordingIoEvents::default());
        let placed = BarInfo {
            index: 0,
            size: bar::SIZE,
            is_64: true,
            prefetchable: false,
            addr: BAR_ADDR,
        };
        let wiring = Wiring {
            mem: mem.clone(),
            thread: thread.handle(),
            router: router.clone(),
            ioevents: ioevents.clone(),
        };
        let mut dev = VirtioPciDevice::new(dev, placed, wiring).unwrap();
        let _ = dev.write_config(1, 0, &regs::COMMAND_MEMORY.to_le_bytes());
        Driver {
            dev,
            mem,
            router,
            ioevents,
            _thread: thread,
        }
    }

    /// Reads `N` bytes of BAR0 at `off`.
    pub fn read(&mut self, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(BAR_ADDR + off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// Writes `len` bytes of `v` at BAR0 offset `off`.
    pub fn write(&mut self, off: u64, len: usize, v: u64) {
        self.dev.write_bar(BAR_ADDR + off, &v.to_le_bytes()[..len]);
    }

    /// Device status.
    pub fn status(&mut self) -> u8 {
        self.read(off::DEVICE_STATUS, 1) as u8
    }

    /// Offered features.
    pub fn device_features(&mut self) -> u64 {
        self.write(off::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = self.read(off::DEVICE_FEATURE, 4);
        self.write(off::DEVICE_FEATURE_SELECT, 4, 1);
        lo | (self.read(off::DEVICE_FEATURE, 4) << 32)
    }

    /// Enables MSI-X with vector `i` → data `0x40 + i`, all unmasked.
    pub fn enable_msix(&mut self, n: u16) {
        for i in 0..u64::from(n) {
            let t = bar::MSIX_TABLE + 16 * i;
            self.write(t, 4, 0xfee0_0000);
            self.write(t + 4, 4, 0);
            self.write(t + 8, 4, 0x40 + i);
            self.write(t + 12, 4, 0);
        }
        let _ = self.dev.write_config(0x10, 2, &0x8000u16.to_le_bytes());
    }

    /// Brings the device up like Linux: reset, ACKNOWLEDGE|DRIVER, features,
    /// FEATURES_OK, the queues (queue `i` on vector `i + 1`), DRIVER_OK.
    /// Returns the status read back after DRIVER_OK.
    pub fn init(&mut self, features: u64, queues: &[&TestQueue]) -> u8 {
        self.write(off::DEVICE_STATUS, 1, 0);
        self.write(off::DEVICE_STATUS, 1, 1 | 2);
        self.write(off::DRIVER_FEATURE_SELECT, 4, 0);
        self.write(off::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.write(off::DRIVER_FEATURE_SELECT, 4, 1);
        self.write(off::DRIVER_FEATURE, 4, features >> 32);
        self.write(off::DEVICE_STATUS, 1, 1 | 2 | 8);
        if self.status() & 8 == 0 {
            return self.status();
        }
        self.enable_msix(queues.len() as u16 + 1);
        self.write(off::CONFIG_MSIX_VECTOR, 2, 0);
        for (i, q) in queues.iter().enumerate() {
            self.write(off::QUEUE_SELECT, 2, i as u64);
            self.write(off::QUEUE_SIZE, 2, u64::from(q.size));
            self.write(off::QUEUE_MSIX_VECTOR, 2, i as u64 + 1);
            self.write(off::QUEUE_DESC, 8, q.desc);
            self.write(off::QUEUE_DRIVER, 4, q.avail);
            self.write(off::QUEUE_DRIVER + 4, 4, 0);
            self.write(off::QUEUE_DEVICE, 8, q.used);
            self.write(off::QUEUE_ENABLE, 2, 1);
        }
        self.write(off::DEVICE_STATUS, 1, 1 | 2 | 8 | 4);
        self.status()
    }

    /// Kicks queue `q` through the notify area.
    pub fn kick(&mut self, q: u16) {
        self.write(bar::NOTIFY + 4 * u64::from(q), 2, u64::from(q));
    }

    /// Waits (up to 5 s) until vector `v` fires; true if it did.
    pub fn wait_vector(&self, v: u32) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_secs() < 5 {
            if let Some((_, fd)) = self.router.routes.lock().unwrap().get(&(100 + v)) {
                if fd.read().is_ok() {
                    return true;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }
}

impl TestQueue {
    /// Waits (up to 5 s) until the used index reaches `n`; returns it.
    pub fn wait_used(&self, n: u16) -> u16 {
        let t0 = std::time::Instant::now();
        while self.used_idx() < n && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.used_idx()
    }
}
