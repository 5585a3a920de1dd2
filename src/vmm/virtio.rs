//! The virtio build steps of a [`Vmm`]: one per device kind, each placing
//! a virtio-pci function's BAR like a passed-through function's and putting
//! it in a slot. The device thread starts with the first device.

use std::sync::{Arc, Mutex};

use super::{Vmm, VmmError};
use crate::interrupts::KvmMsiRouter;
use crate::sync::lock;
use crate::virtio::options::VirtioConfig;
use crate::virtio::pci::{self, VirtioPciDevice, Wiring};
use crate::virtio::pci_layout::KvmIoEvents;
use crate::virtio::thread::DeviceThread;
use crate::virtio::VirtioDevice;

impl Vmm {
    /// Every virtio device of `cfg`, in a fixed order: rng, disks, vsock, net.
    pub(super) fn attach_virtio_devices(&mut self, cfg: &VirtioConfig) -> Result<(), VmmError> {
        self.attach_rng(cfg)?;
        self.attach_disks(cfg)?;
        self.attach_vsock(cfg)?;
        self.attach_net(cfg)?;
        Ok(())
    }

    /// `--rng`.
    pub(super) fn attach_rng(&mut self, cfg: &VirtioConfig) -> Result<(), VmmError> {
        if cfg.rng {
            self.attach_virtio(Box::new(crate::virtio::rng::Rng))?;
        }
        Ok(())
    }

    /// `--disk`, each image opened and locked here.
    pub(super) fn attach_disks(&mut self, cfg: &VirtioConfig) -> Result<(), VmmError> {
        for d in &cfg.disks {
            let disk = crate::virtio::block::Block::open(d)?;
            self.attach_virtio(Box::new(disk))?;
        }
        Ok(())
    }

    /// `--vsock`: the hybrid socket is bound here.
    pub(super) fn attach_vsock(&mut self, cfg: &VirtioConfig) -> Result<(), VmmError> {
        if let Some(v) = &cfg.vsock {
            let dev = crate::virtio::vsock::Vsock::new(v)?;
            self.attach_virtio(Box::new(dev))?;
        }
        Ok(())
    }

    /// `--net`: each tap opened (or taken over) here.
    pub(super) fn attach_net(&mut self, cfg: &VirtioConfig) -> Result<(), VmmError> {
        for n in &cfg.net {
            let dev = crate::virtio::net::Net::open(n)?;
            self.attach_virtio(Box::new(dev))?;
        }
        Ok(())
    }

    /// Places the BAR of one virtio function, builds it and puts it in a slot.
    pub(super) fn attach_virtio(&mut self, dev: Box<dyn VirtioDevice>) -> Result<(), VmmError> {
        let router = self
            .router
            .get_or_insert_with(|| Arc::new(KvmMsiRouter::new(self.vm.clone())))
            .clone();
        if self.virtio_thread.is_none() {
            let t = DeviceThread::start()
                .map_err(|e| VmmError::Os("cannot start the virtio device thread", e))?;
            self.virtio_thread = Some(t);
        }
        let (Some(root), Some(bars), Some(thread)) = (
            self.root.clone(),
            self.bars.as_mut(),
            self.virtio_thread.as_ref(),
        ) else {
            return Err(VmmError::State(
                self.state,
                "attach a device before the PCI root",
            ));
        };
        let name = dev.name().to_string();
        let placed = bars
            .place(&pci::bar_request())
            .map_err(|e| VmmError::BarSpace(name.clone(), e))?;
        let wiring = Wiring {
            mem: self.mem.clone(),
            thread: thread.handle(),
            router,
            ioevents: Arc::new(KvmIoEvents(self.vm.clone())),
        };
        let dev = Arc::new(Mutex::new(VirtioPciDevice::new(dev, placed, wiring)?));
        self.virtio.push(dev.clone());
        let slot = lock(&root).add_device(dev)?;
        log::info!("{name}: guest PCI 0000:00:{slot:02x}.0");
        self.slots.push((name, slot));
        Ok(())
    }

    /// Stops every virtio worker and the device thread (after the vCPUs,
    /// before guest memory goes).
    pub(super) fn stop_virtio(&mut self) -> bool {
        for d in &self.virtio {
            lock(d).deactivate();
        }
        match self.virtio_thread.take() {
            Some(mut t) => {
                t.stop();
                true
            }
            None => false,
        }
    }
}
