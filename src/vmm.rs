//! The build sequence: one linear function that reads like the boot
//! procedure, then the wait for the guest to stop and the clean-up.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

use crate::arch::x86_64::acpi::{self, PciWindows};
use crate::arch::x86_64::{boot, layout};
use crate::config::VmConfig;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::console::{self, RawTerminal};
use crate::devices::i8042::I8042;
use crate::devices::serial::{SerialConsole, Unbuffered};
use crate::exit::{ExitReason, ExitSignal};
use crate::interrupts::KvmMsiRouter;
use crate::memory;
use crate::pci::bar::MmioAllocator;
use crate::pci::root::{PciEcam, PciRoot};
use crate::vcpu::{self, Buses, Vcpu};
use crate::vfio::container::Container;
use crate::vfio::host::HostDevice;
use crate::vfio::pci_device::VfioPciDevice;
use crate::vfio::VfioBackend;
use crate::vm::{self, KvmGuestMapper};

/// Errors building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm could not be opened.
    #[error("Cannot open /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("KVM: cannot {0}")]
    VmSetup(&'static str, #[source] kvm_ioctls::Error),
    /// VM creation or its address space.
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    /// Device registration.
    #[error("Cannot register device: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    /// PCI.
    #[error(transparent)]
    Pci(#[from] crate::pci::root::PciError),
    /// VFIO container/device.
    #[error(transparent)]
    Container(#[from] crate::vfio::container::ContainerError),
    /// VFIO device model.
    #[error(transparent)]
    VfioPci(#[from] crate::vfio::pci_device::VfioPciError),
    /// Eventfd/thread/OS plumbing.
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
}

/// Signal number caught by the SIGINT/SIGTERM handler (0: none).
static CAUGHT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Eventfd the signal handler writes to wake the main thread (-1: none).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    CAUGHT_SIGNAL.store(num, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Boots the VM described by `cfg` with the checked `devices`, waits for it
/// to stop, cleans up, and returns why it stopped.
pub fn run(cfg: &VmConfig, devices: &[HostDevice]) -> Result<ExitReason, VmmError> {
    let build_start = std::time::Instant::now();
    let kvm = Kvm::new().map_err(VmmError::Kvm)?;
    let vm = Arc::new(vm::create_vm(&kvm)?);
    let mem = memory::create_guest_memory(cfg.memory, cfg.hugepages)?;
    log::info!(
        "guest RAM: {} MiB in {}",
        cfg.memory >> 20,
        if cfg.hugepages {
            "2 MiB huge pages"
        } else {
            "4 KiB pages"
        }
    );
    let exit =
        Arc::new(ExitSignal::new().map_err(|e| VmmError::Os("cannot create an eventfd", e))?);

    // The kernel and the firmware tables, before any device is touched: a
    // bad kernel path or format fails here, with nothing to undo.
    let entry = boot::load(
        &mem,
        cfg.memory,
        &cfg.kernel,
        cfg.initramfs.as_deref(),
        &cfg.cmdline,
    )?;
    log::info!("kernel entry {:#x} ({:?})", entry.entry, entry.mode);
    let windows = PciWindows {
        mmio32: (layout::PCI_MMIO32_START.0, layout::PCI_MMIO32_SIZE),
        mmio64: (
            layout::pci_mmio64_start(memory::ram_end(cfg.memory)),
            layout::PCI_MMIO64_SIZE,
        ),
    };
    acpi::write_tables(&mem, cfg.cpus, windows)?;

    // The guest physical address space: RAM slots now, BARs and traps below.
    let buses = Arc::new(Buses::default());
    let mapper = Arc::new(KvmGuestMapper::new(
        vm.clone(),
        &buses.mmio,
        vec![windows.mmio32, windows.mmio64],
    ));
    mapper.register_ram(&mem)?;

    // Legacy devices on the port I/O bus.
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| VmmError::Os("cannot create an eventfd", e))?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(|e| VmmError::VmSetup("wire the serial interrupt", e))?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        serial_irq,
        Box::new(Unbuffered(std::io::stdout())),
    )));
    buses.pio.insert(
        u64::from(layout::SERIAL_PORT),
        u64::from(layout::SERIAL_PORT_LEN),
        serial.clone(),
    )?;
    buses.pio.insert(
        u64::from(layout::I8042_PORT),
        u64::from(layout::I8042_PORT_LEN),
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
    )?;
    buses.pio.insert(
        u64::from(layout::ACPI_PM_PORT),
        u64::from(layout::ACPI_PM_PORT_LEN),
        Arc::new(Mutex::new(AcpiPm::new(exit.clone()))),
    )?;

    // PCI: host bridge plus one slot per passed-through function.
    let mut mmio32 = MmioAllocator::new(windows.mmio32.0, windows.mmio32.1);
    let mut mmio64 = MmioAllocator::new(windows.mmio64.0, windows.mmio64.1);
    let mut root = PciRoot::new();
    let mut container = None;
    let mut vfio_devices = Vec::new();
    if !devices.is_empty() {
        let mut c = Container::new(&vm)?;
        let router = Arc::new(KvmMsiRouter::new(vm.clone()));
        for d in devices {
            let name = d.bdf.to_string();
            let backend: Arc<dyn VfioBackend> = Arc::new(c.open_device(&name, &d.sysfs)?);
            let pci = VfioPciDevice::new(&name, backend, router.clone(), &mut mmio32, &mut mmio64)?;
            let pci = Arc::new(Mutex::new(pci));
            VfioPciDevice::attach(&pci, mapper.clone())?;
            let slot = root.add_device(pci.clone())?;
            log::info!("{name}: passed through as guest PCI 0000:00:{slot:02x}.0");
            vfio_devices.push(pci);
        }
        let t = std::time::Instant::now();
        c.map_guest_memory(&mem)?;
        log::info!(
            "guest RAM ({} MiB) pinned and mapped for device DMA in {} ms",
            cfg.memory >> 20,
            t.elapsed().as_millis()
        );
        container = Some(c);
    }
    let root = Arc::new(Mutex::new(root));
    buses.pio.insert(
        u64::from(layout::PCI_CONFIG_PORT),
        u64::from(layout::PCI_CONFIG_PORT_LEN),
        root.clone(),
    )?;
    buses.mmio.insert(
        layout::PCI_ECAM_START.0,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam(root))),
    )?;

    // vCPUs.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::VmSetup("read supported CPUID", e))?;
    let vcpus = (0..cfg.cpus)
        .map(|id| Vcpu::new(&vm, &mem, &supported, id, cfg.cpus, &entry))
        .collect::<Result<Vec<_>, _>>()?;
    vcpu::install_kick_handler()?;
    WAKE_FD.store(
        std::os::fd::AsRawFd::as_raw_fd(exit.eventfd()),
        Ordering::SeqCst,
    );
    for sig in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(sig, on_terminate).map_err(|e| {
            VmmError::Os(
                "cannot install signal handlers",
                std::io::Error::from_raw_os_error(e.errno()),
            )
        })?;
    }

    let term = RawTerminal::enter();
    console::spawn_input(serial, exit.clone(), term.is_raw())
        .map_err(|e| VmmError::Os("cannot start the console input thread", e))?;
    let started = std::time::Instant::now();
    log::info!(
        "VM built in {} ms; starting {} vCPU(s)",
        build_start.elapsed().as_millis(),
        cfg.cpus
    );
    let mut handles = Vec::new();
    for v in vcpus {
        handles.push(v.spawn(buses.clone(), exit.clone())?);
    }

    // Wait for a stop request.
    loop {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(exit.eventfd()),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        let _ = exit.eventfd().read();
        let sig = CAUGHT_SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            exit.request(ExitReason::Signal(sig));
        }
        if exit.requested() {
            break;
        }
    }
    log::debug!("stop requested: {:?}; stopping vCPUs", exit.reason());
    vcpu::stop_all(handles);
    log::debug!("vCPUs stopped");
    drop(term);
    log::info!("guest ran for {:.3} s", started.elapsed().as_secs_f64());

    // Tear down: quiesce and reset devices, release DMA pins.
    for d in &vfio_devices {
        d.lock().unwrap_or_else(|e| e.into_inner()).quiesce();
    }
    log::debug!("devices quiesced");
    if let Some(c) = container.as_mut() {
        c.unmap_guest_memory(&mem);
    }
    log::debug!("guest memory unmapped from the IOMMU");
    WAKE_FD.store(-1, Ordering::SeqCst);
    Ok(exit.reason().unwrap_or(ExitReason::PowerOff))
}
