//! The owner of the running VM. [`Vmm`] holds every resource — KVM and the
//! VM fd, guest memory, the buses, the PCI root, the VFIO container and
//! devices, the vCPU threads — and tears them down in one order on every
//! path: an explicit [`Vmm::shutdown`], or its `Drop` after an error. It is
//! built in named steps (`build.rs`), then booted, paused and resumed,
//! waited on, and shut down; these are the states an API server drives.

mod build;
#[cfg(test)]
mod tests;
mod virtio;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::boot::BootEntry;
use crate::arch::x86_64::layout::GuestLayout;
use crate::config::VmConfig;
use crate::devices::bus::Buses;
use crate::devices::console_output::ConsoleOutput;
use crate::devices::ged::GedTrigger;
use crate::devices::serial::SerialConsole;
use crate::exit::{ExitReason, ExitSignal};
use crate::host::preflight::Checked;
use crate::host::terminal::{self, RawTerminal};
use crate::interrupts::KvmMsiRouter;
use crate::pci::bar::BarAllocator;
use crate::pci::root::PciRoot;
use crate::sync::{lock, lock_within};
use crate::vcpu::{self, Vcpu, VcpuControl, VcpuSet};
use crate::vfio::container::DmaSpace;
use crate::vfio::pci_device::VfioPciDevice;
use crate::vm::KvmGuestMapper;

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("kvm: cannot {0}")]
    VmSetup(&'static str, #[source] kvm_ioctls::Error),
    /// VM creation or its memory slots.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] crate::arch::x86_64::boot::BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] crate::arch::x86_64::acpi::AcpiError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Device registration.
    #[error("cannot register a device")]
    Bus(#[source] crate::devices::bus::BusError),
    /// PCI.
    #[error(transparent)]
    Pci(#[from] crate::pci::root::PciError),
    /// BAR placement.
    #[error("{0}")]
    BarSpace(String, #[source] crate::pci::bar::NoBarSpace),
    /// VFIO container/device.
    #[error(transparent)]
    Container(#[from] crate::vfio::container::ContainerError),
    /// VFIO device model.
    #[error(transparent)]
    VfioPci(#[from] crate::vfio::pci_device::VfioPciError),
    /// The request does not fit the VM's state.
    #[error("the VM is {0:?}: cannot {1}")]
    State(VmState, &'static str),
    /// A virtio-pci function.
    #[error(transparent)]
    VirtioPci(#[from] crate::virtio::pci::VirtioPciError),
    /// A disk image.
    #[error(transparent)]
    Disk(#[from] crate::virtio::block::DiskError),
    /// The vsock socket.
    #[error(transparent)]
    Vsock(#[from] crate::virtio::vsock::VsockError),
    /// A tap.
    #[error(transparent)]
    Tap(#[from] crate::virtio::tap::TapError),
    /// Eventfd/thread/OS plumbing.
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
}

/// How long tear-down waits for a device lock before going on without it.
const DEVICE_LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked outside the guest.
    Paused,
    /// Torn down.
    Stopped,
}

/// The running VM and everything it owns.
pub struct Vmm {
    state: VmState,
    cpus: u8,
    memory: u64,
    /// The guest physical memory map, computed once from the RAM size.
    layout: GuestLayout,
    boot_entry: Option<BootEntry>,
    vcpus: Vec<Vcpu>,
    running: Option<VcpuSet>,
    control: Arc<VcpuControl>,
    terminal: Option<RawTerminal>,
    /// Guest console output: the bounded buffer and its writer thread.
    console: Option<ConsoleOutput>,
    serial: Option<Arc<Mutex<SerialConsole>>>,
    power_button: Option<GedTrigger>,
    console_socket: Option<crate::host::console_socket::ConsoleSocket>,
    vfio: Vec<Arc<Mutex<VfioPciDevice>>>,
    virtio: Vec<Arc<Mutex<crate::virtio::pci::VirtioPciDevice>>>,
    virtio_thread: Option<crate::virtio::thread::DeviceThread>,
    slots: Vec<(String, u8)>,
    /// The VFIO backend's name, once devices are open.
    backend: Option<&'static str>,
    router: Option<Arc<KvmMsiRouter>>,
    bars: Option<BarAllocator>,
    container: Option<Box<dyn DmaSpace>>,
    /// Closed until guest RAM is mapped for DMA; devices' Bus Master Enable waits on it.
    dma_gate: Option<Arc<crate::vfio::dma_gate::DmaGate>>,
    /// The thread mapping guest RAM; it hands the DMA space back when done.
    dma_thread: Option<std::thread::JoinHandle<Box<dyn DmaSpace>>>,
    root: Option<Arc<Mutex<PciRoot>>>,
    buses: Arc<Buses>,
    exit: Arc<ExitSignal>,
    started: Option<Instant>,
    /// Tear-down steps done, in order (tests read it after the drop).
    teardown: Arc<Mutex<Vec<&'static str>>>,
    #[cfg(test)]
    fail_after_vcpus_start: bool,
    // Declared last: dropped after everything that maps or pins them.
    mapper: Arc<KvmGuestMapper>,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    _kvm: Kvm,
}

impl Vmm {
    /// Builds the VM described by `cfg` with the checked `devices`: memory,
    /// legacy devices, PCI, VFIO (the kernel, firmware tables and vCPUs while
    /// the devices reset), virtio, DMA map.
    pub fn new(cfg: &VmConfig, checked: &Checked) -> Result<Self, VmmError> {
        let started = Instant::now();
        let mut vmm = Vmm::create_vm(cfg)?;
        vmm.attach_legacy_devices(cfg)?;
        vmm.attach_pci()?;
        vmm.load_kernel_opening_devices(cfg, checked)?;
        vmm.attach_virtio_devices(&cfg.virtio)?;
        vmm.map_dma()?;
        log::info!("VM built in {} ms", started.elapsed().as_millis());
        Ok(vmm)
    }

    /// The VM's state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The stop request that devices, vCPUs, signals and callers share.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    /// Starts the vCPUs and the console: Created → Running.
    pub fn boot(&mut self) -> Result<(), VmmError> {
        if self.state != VmState::Created {
            return Err(VmmError::State(self.state, "boot"));
        }
        vcpu::install_kick_handler()?;
        let term = RawTerminal::enter();
        let raw = term.is_raw();
        self.terminal = Some(term);
        log::info!("starting {} vCPU(s)", self.cpus);
        self.started = Some(Instant::now());
        let vcpus = std::mem::take(&mut self.vcpus);
        self.running = Some(VcpuSet::start(vcpus, &self.buses, self.control.clone())?);
        self.state = VmState::Running;
        #[cfg(test)]
        if self.fail_after_vcpus_start {
            let e = std::io::Error::other("injected by a test");
            return Err(VmmError::Os("cannot start the console input thread", e));
        }
        if let Some(serial) = &self.serial {
            terminal::spawn_input(serial.clone(), self.exit.clone(), raw)
                .map_err(|e| VmmError::Os("cannot start the console input thread", e))?;
        }
        Ok(())
    }

    /// Parks the vCPUs: Running → Paused.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        match (&self.running, self.state) {
            (Some(set), VmState::Running) => {
                if !set.pause() {
                    log::warn!("not every vCPU parked in time");
                }
                self.state = VmState::Paused;
                Ok(())
            }
            _ => Err(VmmError::State(self.state, "pause")),
        }
    }

    /// Lets the vCPUs run again: Paused → Running.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        match (&self.running, self.state) {
            (Some(set), VmState::Paused) => {
                set.resume();
                self.state = VmState::Running;
                Ok(())
            }
            _ => Err(VmmError::State(self.state, "resume")),
        }
    }

    /// Presses the guest's ACPI power button (an orderly shutdown request).
    pub fn power_button(&self) -> Result<(), VmmError> {
        match (&self.power_button, self.state) {
            (Some(b), VmState::Running) => b
                .power_button()
                .map_err(|e| VmmError::Os("cannot raise the GED interrupt", e)),
            _ => Err(VmmError::State(self.state, "press the power button")),
        }
    }

    /// Blocks until the guest stops or a stop is requested; returns why.
    #[cfg(test)]
    pub fn wait(&self) -> ExitReason {
        crate::exit::wait(&self.exit)
    }

    /// The passed-through devices: host name and guest slot on bus 0.
    pub fn devices(&self) -> &[(String, u8)] {
        &self.slots
    }

    /// How the devices reach the IOMMU (`vfio-group` or `iommufd`), if there are devices.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// vCPU exits so far, by kind.
    pub fn exit_counts(&self) -> Vec<(&'static str, u64)> {
        self.control.exit_counts()
    }

    /// Tears everything down, in order: vCPUs stopped, terminal restored,
    /// devices quiesced and reset, guest RAM unmapped from the IOMMU, devices
    /// and buses dropped (BAR mappings before device files), groups closed.
    /// Idempotent; also run by `Drop`.
    pub fn shutdown(&mut self) {
        if self.state == VmState::Stopped {
            return;
        }
        let journal = self.teardown.clone();
        let step = |s: &'static str| {
            log::debug!("tear-down: {s}");
            lock(&journal).push(s);
        };
        if let Some(mut set) = self.running.take() {
            if !self.exit.requested() {
                self.exit.request(ExitReason::Stopped);
            }
            set.stop();
            step("vcpus stopped");
        }
        self.vcpus.clear();
        if let Some(t) = self.started {
            let exits: Vec<String> = self
                .exit_counts()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            log::info!(
                "guest ran for {:.3} s; vCPU exits: {}",
                t.elapsed().as_secs_f64(),
                exits.join(" ")
            );
        }
        self.terminal = None;
        self.console_socket = None;
        // Whatever the guest printed gets a moment to reach the sink; the
        // number of bytes dropped is logged.
        self.console = None;
        if self.stop_virtio() {
            step("virtio stopped");
        }
        // The mapping runs to its end (pins cannot be cancelled half-way),
        // then the DMA space comes back for the unmap.
        if let Some(t) = self.dma_thread.take() {
            match t.join() {
                Ok(space) => self.container = Some(space),
                Err(_) => log::error!("the DMA mapping thread panicked"),
            }
        }
        for d in &self.vfio {
            // A vCPU thread left behind by `stop` may hold the device.
            match lock_within(d, DEVICE_LOCK_DEADLINE) {
                Some(mut d) => d.quiesce(),
                None => log::error!(
                    "a passed-through device is held by a vCPU that did not stop: not quiesced here (vfio-pci resets it when its group closes)"
                ),
            }
        }
        step("devices quiesced");
        if let Some(c) = self.container.as_mut() {
            c.unmap_guest_memory(&self.mem);
            step("dma unmapped");
        }
        self.buses.mmio.clear();
        self.buses.pio.clear();
        self.root = None;
        self.serial = None;
        self.virtio.clear();
        for d in self.vfio.drain(..) {
            if Arc::strong_count(&d) != 1 {
                log::warn!("a passed-through device is still referenced at tear-down");
            }
        }
        step("devices dropped");
        if self.container.take().is_some() {
            step("groups closed");
        }
        self.state = VmState::Stopped;
    }

    /// The tear-down steps done so far.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the API server drives these; tests do now")
    )]
    pub fn teardown_steps(&self) -> Arc<Mutex<Vec<&'static str>>> {
        self.teardown.clone()
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
