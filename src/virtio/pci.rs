//! The virtio-pci modern transport (virtio 1.2, 4.1; no legacy interface):
//! a type-0 function with vendor-specific capabilities pointing into BAR0
//! (common configuration, notifications, ISR, device configuration) and an
//! MSI-X capability whose table is in the same BAR. The whole BAR traps;
//! the notify area is also backed by KVM ioeventfds, so a kick from the
//! driver only wakes the device thread.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::common::{CommonConfig, StatusChange, STATUS_NEEDS_RESET};
use super::pci_layout::{self as layout, bar, IoEvents, CAP_MSIX, MAX_VECTORS};
use super::thread::DeviceThreadHandle;
use super::{Activation, Interrupt, VirtioDevice};
use crate::interrupts::{InterruptError, MsiRouter};
use crate::pci::bar::{BarInfo, BarRequest, BarShadow};
use crate::pci::msix::MsixState;
use crate::pci::{merge_write, regs, BarMove, ConfigWriteResult, PciDevice, TrapRange};
use crate::vm::{GuestMapper, VmError};

/// Errors building a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device asked for impossible queues.
    #[error("{0}: a queue size is zero, over 32768 or not a power of two")]
    Queues(String),
    /// Eventfds.
    #[error("cannot create the device's eventfds")]
    EventFd(#[source] std::io::Error),
    /// GSIs for the MSI-X vectors.
    #[error("cannot allocate interrupt routes")]
    Interrupts(#[source] InterruptError),
    /// An ioeventfd.
    #[error("cannot register a queue notification ioeventfd")]
    IoEvent(#[source] kvm_ioctls::Error),
}

/// The BAR a virtio-pci function asks for.
pub fn bar_request() -> BarRequest {
    BarRequest {
        index: 0,
        size: bar::SIZE,
        is_64: true,
        prefetchable: false,
    }
}

/// What a virtio-pci function is built with besides its device.
pub struct Wiring {
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// The device thread.
    pub thread: DeviceThreadHandle,
    /// MSI routes.
    pub router: Arc<dyn MsiRouter>,
    /// KVM ioeventfds.
    pub ioevents: Arc<dyn IoEvents>,
}

/// One virtio device on the PCI bus.
pub struct VirtioPciDevice {
    name: String,
    dev: Box<dyn VirtioDevice>,
    common: CommonConfig,
    header: [u8; regs::CONFIG_SPACE_SIZE],
    command: u16,
    bar: BarInfo,
    shadow: BarShadow,
    msix: MsixState,
    vectors: Arc<Vec<EventFd>>,
    gsi_base: u32,
    kicks: Vec<EventFd>,
    isr: Arc<AtomicU8>,
    needs_reset: Arc<AtomicBool>,
    wiring: Wiring,
    worker: Option<u32>,
}

impl VirtioPciDevice {
    /// A function for `dev` with BAR0 at `placed`.
    pub fn new(
        dev: Box<dyn VirtioDevice>,
        placed: BarInfo,
        wiring: Wiring,
    ) -> Result<Self, VirtioPciError> {
        let name = dev.name().to_string();
        let common = CommonConfig::new(dev.features(), dev.queue_max_sizes())
            .map_err(|_| VirtioPciError::Queues(name.clone()))?;
        let nq = common.queues.len();
        let nvec = (nq + 1).min(MAX_VECTORS);
        let fds = |n| {
            (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(VirtioPciError::EventFd)
        };
        let vectors = Arc::new(fds(nvec)?);
        let kicks = fds(nq)?;
        let gsi_base = wiring
            .router
            .allocate_gsis(nvec as u32)
            .map_err(VirtioPciError::Interrupts)?;
        let header = layout::header(dev.device_type(), nq, nvec);
        let mut d = VirtioPciDevice {
            name,
            common,
            header,
            command: 0,
            bar: placed,
            shadow: BarShadow::new(&[placed]),
            msix: MsixState::new(nvec as u16),
            vectors,
            gsi_base,
            kicks,
            isr: Arc::default(),
            needs_reset: Arc::default(),
            wiring,
            worker: None,
            dev,
        };
        d.register_ioevents().map_err(VirtioPciError::IoEvent)?;
        Ok(d)
    }

    fn notify_addr(&self, q: usize) -> u64 {
        self.bar.addr + bar::NOTIFY + q as u64 * bar::NOTIFY_MULTIPLIER
    }

    fn register_ioevents(&mut self) -> Result<(), kvm_ioctls::Error> {
        for (q, fd) in self.kicks.iter().enumerate() {
            self.wiring.ioevents.register(fd, self.notify_addr(q))?;
        }
        Ok(())
    }

    fn unregister_ioevents(&self) {
        for (q, fd) in self.kicks.iter().enumerate() {
            self.wiring.ioevents.unregister(fd, self.notify_addr(q));
        }
    }

    fn route(&self, i: usize) {
        let Some(fd) = self.vectors.get(i) else {
            return;
        };
        let msg = self
            .msix
            .vector_live(i)
            .then(|| self.msix.entries[i].message());
        if let Err(e) = self.wiring.router.route(self.gsi_base + i as u32, msg, fd) {
            log::error!("{}: MSI-X vector {i}: {e}", self.name);
        }
    }

    fn memory_enabled(&self) -> bool {
        self.command & regs::COMMAND_MEMORY != 0
    }

    fn proposed_moves(&self) -> Vec<BarMove> {
        let to = self.shadow.address(&self.bar);
        if self.memory_enabled() && to != self.bar.addr {
            vec![BarMove {
                bar: 0,
                from: self.bar.addr,
                to,
                size: self.bar.size,
            }]
        } else {
            Vec::new()
        }
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u8 {
        let nr = if self.needs_reset.load(Ordering::SeqCst) {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        self.common.status | nr
    }

    fn fail(&self, interrupt: &Interrupt, why: &str) {
        interrupt.needs_reset(&format!("{}: {why}", self.name));
    }

    fn activate(&mut self) {
        let interrupt = Interrupt::new(
            self.vectors.clone(),
            self.common.queue_vectors.clone(),
            self.common.config_vector,
            self.isr.clone(),
            self.needs_reset.clone(),
        );
        let mem = &self.wiring.mem;
        let mut queues = Vec::new();
        for (i, q) in self.common.queues.iter().enumerate() {
            if self.common.bad_size.get(i) == Some(&true) || (q.ready() && !q.is_valid(mem)) {
                return self.fail(&interrupt, &format!("queue {i} is set up wrong"));
            }
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => return self.fail(&interrupt, &format!("queue {i}: {e}")),
            }
        }
        let kicks = match self.kicks.iter().map(EventFd::try_clone).collect() {
            Ok(k) => k,
            Err(e) => return self.fail(&interrupt, &format!("cannot clone eventfds: {e}")),
        };
        let act = Activation {
            mem: mem.clone(),
            queues,
            kicks,
            features: self.common.driver_features,
            interrupt: interrupt.clone(),
        };
        let worker = match self.dev.activate(act) {
            Ok(w) => w,
            Err(e) => return self.fail(&interrupt, &crate::error::error_chain(&e)),
        };
        match self.wiring.thread.add(worker) {
            Ok(slot) => {
                self.worker = Some(slot);
                log::info!("{}: driver ready", self.name);
            }
            Err(e) => self.fail(&interrupt, &format!("cannot start the worker: {e}")),
        }
    }

    /// Stops the worker (it no longer touches guest memory when this returns).
    pub fn deactivate(&mut self) {
        if let Some(slot) = self.worker.take() {
            self.wiring.thread.remove(slot);
        }
    }

    fn reset(&mut self) {
        self.deactivate();
        self.common.reset();
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
        for fd in self.kicks.iter().chain(self.vectors.iter()) {
            super::drain(fd);
        }
        log::debug!("{}: reset by the driver", self.name);
    }

    fn write_common(&mut self, off: u64, data: &[u8]) {
        let max_vector = self.vectors.len() as u16;
        match self.common.write(off, data, max_vector) {
            StatusChange::None => {}
            StatusChange::DriverOk => self.activate(),
            StatusChange::Reset => self.reset(),
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_config(&mut self, reg: usize) -> u32 {
        let at = reg * 4;
        match reg {
            1 => u32::from(self.command) | (u32::from(regs::STATUS_CAP_LIST) << 16),
            4..=9 => self.shadow.read(reg - 4),
            _ if at + 4 <= self.header.len() => {
                let mut v = u32::from_le_bytes([
                    self.header[at],
                    self.header[at + 1],
                    self.header[at + 2],
                    self.header[at + 3],
                ]);
                if at == CAP_MSIX {
                    v |= u32::from(self.msix.control_bits()) << 16;
                }
                v
            }
            _ => 0,
        }
    }

    fn write_config(&mut self, reg: usize, offset: usize, data: &[u8]) -> ConfigWriteResult {
        match reg {
            1 if offset < 2 => {
                let v = merge_write(u32::from(self.command), offset, data) as u16;
                // Memory decode and bus mastering are the bits that mean anything here.
                self.command = v & (regs::COMMAND_MEMORY | 0x4 | 0x400);
                return ConfigWriteResult {
                    bar_moves: self.proposed_moves(),
                };
            }
            4..=9 => {
                let v = merge_write(self.shadow.read(reg - 4), offset, data);
                self.shadow.write(reg - 4, v);
                return ConfigWriteResult {
                    bar_moves: self.proposed_moves(),
                };
            }
            r if r * 4 == CAP_MSIX && offset + data.len() > 2 => {
                let cur = u32::from(self.msix.control_bits()) << 16;
                let ctl = (merge_write(cur, offset, data) >> 16) as u16;
                if self.msix.write_control(ctl) {
                    for i in 0..self.vectors.len() {
                        self.route(i);
                    }
                }
            }
            _ => {}
        }
        ConfigWriteResult::default()
    }

    fn read_bar(&mut self, addr: u64, data: &mut [u8]) {
        let off = addr.wrapping_sub(self.bar.addr);
        data.fill(0);
        let len = data.len() as u64;
        if len == 0 {
            return;
        }
        match off {
            o if o
                .checked_add(len)
                .is_some_and(|e| e <= super::common::off::LEN) =>
            {
                self.common.read(o, data);
                if o == super::common::off::DEVICE_STATUS {
                    data[0] = self.status();
                }
            }
            bar::ISR => data[0] = self.isr.swap(0, Ordering::SeqCst),
            o if (bar::DEVICE..bar::DEVICE + bar::DEVICE_LEN).contains(&o) => {
                self.dev.read_config(o - bar::DEVICE, data)
            }
            o if (bar::MSIX_TABLE..bar::MSIX_PBA).contains(&o) => {
                self.msix.read_table(o - bar::MSIX_TABLE, data)
            }
            _ => {}
        }
    }

    fn write_bar(&mut self, addr: u64, data: &[u8]) {
        let off = addr.wrapping_sub(self.bar.addr);
        let len = data.len() as u64;
        match off {
            o if o
                .checked_add(len)
                .is_some_and(|e| e <= super::common::off::LEN) =>
            {
                self.write_common(o, data)
            }
            o if (bar::DEVICE..bar::DEVICE + bar::DEVICE_LEN).contains(&o) => {
                self.dev.write_config(o - bar::DEVICE, data)
            }
            o if (bar::NOTIFY..bar::MSIX_TABLE).contains(&o) => {
                // Reached only without an ioeventfd there (KVM takes them first).
                let q = ((o - bar::NOTIFY) / bar::NOTIFY_MULTIPLIER) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            o if (bar::MSIX_TABLE..bar::MSIX_PBA).contains(&o) => {
                // Every entry the write touched (a qword may straddle two).
                for i in self.msix.write_table(o - bar::MSIX_TABLE, data) {
                    self.route(i);
                }
            }
            _ => {}
        }
    }

    fn trapped_ranges(&self) -> Vec<TrapRange> {
        vec![TrapRange {
            bar: 0,
            addr: self.bar.addr,
            len: self.bar.size,
        }]
    }

    fn move_bar(&mut self, mv: &BarMove, _mapper: &dyn GuestMapper) -> Result<(), VmError> {
        self.unregister_ioevents();
        self.bar.addr = mv.to;
        if let Err(e) = self.register_ioevents() {
            log::error!("{}: queue notifications after the BAR move: {e}", self.name);
        }
        Ok(())
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.deactivate();
        self.unregister_ioevents();
        for (i, fd) in self.vectors.iter().enumerate() {
            let _ = self.wiring.router.route(self.gsi_base + i as u32, None, fd);
        }
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
