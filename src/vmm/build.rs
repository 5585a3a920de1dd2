//! The build steps of a [`Vmm`], in boot order. Each step adds what it
//! builds to the `Vmm` at once, so a failure in a later step leaves a value
//! whose `Drop` tears down exactly what exists.

use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::{VmState, Vmm, VmmError};
use crate::arch::x86_64::boot::BootEntry;
use crate::arch::x86_64::layout::{self, GuestLayout};
use crate::arch::x86_64::tsc::TscRate;
use crate::arch::x86_64::{acpi, boot};
use crate::config::{SerialMode, VmConfig};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::bus::{Buses, SharedDevice};
use crate::devices::console_output::{ConsoleOutput, CONSOLE_BUFFER_BYTES};
use crate::devices::ged::Ged;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialConsole;
use crate::exit::ExitReason;
use crate::exit::ExitSignal;
use crate::host::backend::Backend;
use crate::host::console_socket::{self, ConsoleSocket};
use crate::host::preflight::Checked;
use crate::interrupts::KvmMsiRouter;
use crate::memory;
use crate::pci::bar::BarAllocator;
use crate::pci::bar_space::BarSpace;
use crate::pci::root::{PciEcam, PciRoot};
use crate::sync::lock;
use crate::vcpu::{Vcpu, VcpuControl};
use crate::vfio::container::{Container, ContainerError, DmaSpace};
use crate::vfio::dma_gate::DmaGate;
use crate::vfio::iommufd::IommufdSpace;
use crate::vfio::pci_device::{VfioPciDevice, VfioProbe};
use crate::vfio::VfioBackend;
use crate::vm::{self, KvmGuestMapper};

fn eventfd() -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Os("cannot create an eventfd", e))
}

impl Vmm {
    /// KVM, the VM with its irqchip, and guest RAM in its memory slots.
    pub(super) fn create_vm(cfg: &VmConfig) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::Kvm)?;
        let vm = Arc::new(vm::create_vm(&kvm)?);
        let guest = GuestLayout::new(cfg.memory);
        let mem = memory::create_guest_memory(&guest, cfg.hugepages)?;
        let pages = if cfg.hugepages {
            "2 MiB huge pages"
        } else {
            "4 KiB pages, transparent huge pages advised"
        };
        log::info!("guest RAM: {} MiB in {pages}", cfg.memory >> 20);
        // One mapper for the VM: it hands out the memory slot numbers.
        let mapper = Arc::new(KvmGuestMapper::new(vm.clone()));
        // RAM first, then the irqchip (see `vm::create_irqchip`).
        mapper.register_ram(&mem)?;
        vm::create_irqchip(&vm)?;
        let exit =
            Arc::new(ExitSignal::new().map_err(|e| VmmError::Os("cannot create an eventfd", e))?);
        Ok(Vmm {
            state: VmState::Created,
            cpus: cfg.cpus,
            memory: cfg.memory,
            layout: guest,
            boot_entry: None,
            vcpus: Vec::new(),
            running: None,
            control: VcpuControl::new(exit.clone()),
            terminal: None,
            console: None,
            serial: None,
            power_button: None,
            console_socket: None,
            vfio: Vec::new(),
            virtio: Vec::new(),
            virtio_thread: None,
            slots: Vec::new(),
            backend: None,
            dma_gate: None,
            dma_thread: None,
            router: None,
            bars: None,
            container: None,
            root: None,
            buses: Arc::new(Buses::default()),
            exit,
            started: None,
            teardown: Arc::default(),
            #[cfg(test)]
            fail_after_vcpus_start: false,
            mapper,
            mem,
            vm,
            _kvm: kvm,
        })
    }

    /// The kernel and the firmware tables (tests build a VM step by step;
    /// `Vmm::new` loads the kernel while the devices open).
    #[cfg(test)]
    pub(super) fn load_kernel(&mut self, cfg: &VmConfig) -> Result<(), VmmError> {
        self.boot_entry = Some(self.kernel_entry(cfg)?);
        Ok(())
    }

    /// Loads the kernel and the firmware tables into guest RAM; the boot entry.
    fn kernel_entry(&self, cfg: &VmConfig) -> Result<BootEntry, VmmError> {
        let entry = boot::load(
            &self.mem,
            &self.layout,
            &cfg.kernel,
            cfg.initramfs.as_deref(),
            &cfg.cmdline,
        )?;
        log::info!("kernel entry {:#x} ({:?})", entry.entry, entry.mode);
        acpi::write_tables(&self.mem, cfg.cpus, self.layout.pci())?;
        Ok(entry)
    }

    fn add_pio(&self, port: u16, len: u16, dev: SharedDevice) -> Result<(), VmmError> {
        self.buses
            .pio
            .insert(u64::from(port), u64::from(len), dev)
            .map_err(VmmError::Bus)
    }

    /// COM1 (console on stdout, a file or a socket; stdout and files through
    /// a bounded buffer, so that a slow reader never blocks a vCPU), the
    /// i8042 reset port, the ACPI PM register and the Generic Event Device
    /// with its power button.
    pub(super) fn attach_legacy_devices(&mut self, cfg: &VmConfig) -> Result<(), VmmError> {
        let os = |what| move |e| VmmError::Os(what, e);
        let mut socket = None;
        let out: Box<dyn std::io::Write + Send> = match &cfg.serial {
            SerialMode::Socket(_) => {
                let (out, pipe) =
                    console_socket::output().map_err(os("cannot create an eventfd"))?;
                socket = Some(pipe);
                Box::new(out)
            }
            SerialMode::Tty => {
                let c = ConsoleOutput::stdout()
                    .map_err(os("cannot start the console output thread"))?;
                Box::new(self.console.insert(c).writer())
            }
            SerialMode::Null => Box::new(std::io::sink()),
            SerialMode::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| VmmError::Os("cannot open the serial output file", e))?;
                let c = ConsoleOutput::new(Box::new(f), CONSOLE_BUFFER_BYTES)
                    .map_err(os("cannot start the console output thread"))?;
                Box::new(self.console.insert(c).writer())
            }
            SerialMode::Off => Box::new(std::io::sink()),
        };
        if cfg.serial != SerialMode::Off {
            let serial_irq = eventfd()?;
            self.vm
                .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
                .map_err(|e| VmmError::VmSetup("wire the serial interrupt", e))?;
            let serial = Arc::new(Mutex::new(SerialConsole::new(serial_irq, out)));
            self.add_pio(layout::SERIAL_PORT, layout::SERIAL_PORT_LEN, serial.clone())?;
            if let (SerialMode::Socket(path), Some(pipe)) = (&cfg.serial, &socket) {
                let s = ConsoleSocket::start(path, pipe, serial.clone())
                    .map_err(os("cannot serve the console socket"))?;
                log::info!("serial console on {}", path.display());
                self.console_socket = Some(s);
            }
            // Only a terminal console reads the keyboard.
            if cfg.serial == SerialMode::Tty {
                self.serial = Some(serial);
            }
        }
        let i8042 = Arc::new(Mutex::new(I8042::new(self.exit.clone())));
        self.add_pio(layout::I8042_PORT, layout::I8042_PORT_LEN, i8042)?;
        let pm = Arc::new(Mutex::new(AcpiPm::new(self.exit.clone())));
        self.add_pio(layout::ACPI_PM_PORT, layout::ACPI_PM_PORT_LEN, pm)?;
        let ged_irq = eventfd()?;
        self.vm
            .register_irqfd(&ged_irq, layout::ACPI_GED_IRQ)
            .map_err(|e| VmmError::VmSetup("wire the GED interrupt", e))?;
        let (ged, trigger) =
            Ged::new(ged_irq).map_err(|e| VmmError::Os("cannot create an eventfd", e))?;
        self.buses
            .mmio
            .insert(
                layout::ACPI_GED_START.0,
                layout::ACPI_GED_SIZE,
                Arc::new(Mutex::new(ged)),
            )
            .map_err(VmmError::Bus)?;
        self.power_button = Some(trigger);
        Ok(())
    }

    /// The PCI host bridge on the config ports and ECAM, its BARs in the
    /// windows of the guest layout.
    pub(super) fn attach_pci(&mut self) -> Result<(), VmmError> {
        let windows = self.layout.pci();
        let space = BarSpace::new(windows, self.mapper.clone(), &self.buses.mmio);
        let root = Arc::new(Mutex::new(PciRoot::new(space)));
        let port = (layout::PCI_CONFIG_PORT, layout::PCI_CONFIG_PORT_LEN);
        self.add_pio(port.0, port.1, root.clone())?;
        let ecam = Arc::new(Mutex::new(PciEcam(root.clone())));
        self.buses
            .mmio
            .insert(layout::PCI_ECAM_START.0, layout::PCI_ECAM_SIZE, ecam)
            .map_err(VmmError::Bus)?;
        self.root = Some(root);
        self.bars = Some(BarAllocator::new(windows));
        Ok(())
    }

    /// Opens each device through one DMA space (a VFIO container, or an
    /// iommufd IOAS) and puts it on the bus; loads the kernel and creates the
    /// vCPUs meanwhile. Opening a device makes vfio-pci reset it, and an FLR
    /// sleeps 100 ms: the devices open side by side, on their own threads,
    /// while this thread does the VM's other work. A kernel or vCPU error is
    /// reported first, then the first device error in command-line order;
    /// what was opened is torn down when `self` drops.
    pub(super) fn load_kernel_opening_devices(
        &mut self,
        cfg: &VmConfig,
        checked: &Checked,
    ) -> Result<(), VmmError> {
        if !checked.devices.is_empty() {
            let space: Box<dyn DmaSpace> = match checked.backend {
                Backend::Group => Box::new(Container::new(&self.vm)?),
                Backend::Iommufd => Box::new(IommufdSpace::new(&self.vm, cfg.preopened.iommufd)?),
            };
            self.backend = Some(space.backend());
            self.container = Some(space);
        }
        let this = &*self;
        let (built, results): (Result<_, VmmError>, Vec<_>) = std::thread::scope(|s| {
            let opening: Vec<_> = match this.container.as_deref() {
                Some(space) => checked
                    .devices
                    .iter()
                    .map(|d| s.spawn(move || space.open(d)))
                    .collect(),
                None => Vec::new(),
            };
            let built = this
                .kernel_entry(cfg)
                .and_then(|entry| Ok((entry, this.new_vcpus(cfg, &entry)?)));
            let results = opening
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(ContainerError::OpenPanicked)))
                .collect();
            (built, results)
        });
        let (entry, vcpus) = built?;
        self.boot_entry = Some(entry);
        self.vcpus = vcpus;
        let mut opened = Vec::new();
        for (d, r) in checked.devices.iter().zip(results) {
            opened.push((d.bdf.to_string(), Arc::new(r?), d.group));
        }
        for (name, backend, group) in opened {
            self.attach_backend(&name, backend)?;
            log::info!("{name}: IOMMU group {group}, {}", checked.backend.name());
        }
        Ok(())
    }

    /// Places the BARs of one function, builds its model and puts it in a slot.
    pub(super) fn attach_backend(
        &mut self,
        name: &str,
        backend: Arc<dyn VfioBackend>,
    ) -> Result<(), VmmError> {
        let router = self
            .router
            .get_or_insert_with(|| Arc::new(KvmMsiRouter::new(self.vm.clone())))
            .clone();
        let (Some(root), Some(bars)) = (self.root.clone(), self.bars.as_mut()) else {
            return Err(VmmError::State(
                self.state,
                "attach a device before the PCI root",
            ));
        };
        let probe = VfioProbe::new(name, &*backend);
        let placed = probe
            .bar_requests()
            .iter()
            .map(|r| bars.place(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| VmmError::BarSpace(name.to_string(), e))?;
        let mut root = lock(&root);
        let gate = self
            .dma_gate
            .get_or_insert_with(|| DmaGate::new(self.exit.clone()))
            .clone();
        let dev = VfioPciDevice::new(name, backend, probe, placed, router, root.space().mapper())?
            .with_dma_gate(gate);
        let dev = Arc::new(Mutex::new(dev));
        self.vfio.push(dev.clone());
        let slot = root.add_device(dev)?;
        log::info!("{name}: passed through as guest PCI 0000:00:{slot:02x}.0");
        self.slots.push((name.to_string(), slot));
        Ok(())
    }

    /// Pins guest RAM and maps it for device DMA (IOVA = guest physical).
    pub(super) fn map_dma(&mut self) -> Result<(), VmmError> {
        let Some(mut space) = self.container.take() else {
            return Ok(());
        };
        let gate = self
            .dma_gate
            .get_or_insert_with(|| DmaGate::new(self.exit.clone()))
            .clone();
        let (mem, exit, mib) = (self.mem.clone(), self.exit.clone(), self.memory >> 20);
        let pin = move || {
            let t = std::time::Instant::now();
            let r = space.map_guest_memory(&mem);
            let s = t.elapsed().as_secs_f64();
            match &r {
                Ok(()) => log::info!(
                    "guest RAM ({mib} MiB) pinned and mapped for device DMA in {} ms ({:.2} GiB/s), while the vCPUs ran",
                    (s * 1000.0) as u64,
                    mib as f64 / 1024.0 / s.max(1e-6)
                ),
                Err(e) => {
                    let line = crate::error::error_chain(e);
                    exit.request(ExitReason::Failed(line));
                }
            }
            gate.open(r.map_err(|e| crate::error::error_chain(&e)));
            space
        };
        let thread = std::thread::Builder::new()
            .name("dma-map".into())
            .spawn(pin)
            .map_err(|e| VmmError::Os("cannot start the DMA mapping thread", e))?;
        self.dma_thread = Some(thread);
        Ok(())
    }

    /// Creates and configures the vCPUs; vCPU 0 gets the boot state (tests;
    /// `Vmm::new` creates them while the devices open).
    #[cfg(test)]
    pub(super) fn create_vcpus(&mut self, cfg: &VmConfig) -> Result<(), VmmError> {
        let entry = self.boot_entry.ok_or(VmmError::State(
            self.state,
            "create vCPUs before loading the kernel",
        ))?;
        self.vcpus = self.new_vcpus(cfg, &entry)?;
        Ok(())
    }

    /// The VM's vCPUs, configured; vCPU 0 starts at `entry`.
    fn new_vcpus(&self, cfg: &VmConfig, entry: &BootEntry) -> Result<Vec<Vcpu>, VmmError> {
        let supported = self
            ._kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::VmSetup("read supported CPUID", e))?;
        let tsc = TscRate::pin_to_host(&self.vm);
        (0..cfg.cpus)
            .map(|id| {
                Vcpu::new(&self.vm, &self.mem, &supported, (id, cfg.cpus), &tsc, entry)
                    .map_err(VmmError::from)
            })
            .collect()
    }
}
