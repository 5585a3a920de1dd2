//! vflaunch: a minimal x86_64 VMM that boots a Linux guest with SR-IOV
//! virtual functions passed through via VFIO.
//!
//! The build sequence lives in [`vmm::run`]: KVM VM and irqchip, guest
//! memory, legacy devices (serial, i8042, ACPI PM), the PCI host bridge and
//! the VFIO functions (BARs mmapped into the guest, MSI-X table trapped,
//! vectors routed through KVM irqfd), ACPI tables, the kernel, vCPUs.
//!
//! Exit codes: see [`Error::exit_code`] and [`exit::ExitReason::exit_code`].

pub mod arch;
pub mod check;
pub mod cli;
pub mod config;
pub mod devices;
pub mod exit;
pub mod intake;
pub mod interrupts;
pub mod memory;
pub mod pci;
pub mod pci_addr;
pub mod vcpu;
pub mod vfio;
pub mod vm;
pub mod vmm;

/// An error and its causes on one line, each message once (sources often
/// repeat their cause in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Top-level error: which stage failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line or configuration.
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    /// Bad configuration values.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A host pre-flight check failed.
    #[error(transparent)]
    Host(#[from] vfio::host::HostError),
    /// Building or running the VM failed.
    #[error(transparent)]
    Vmm(#[from] vmm::VmmError),
}

impl Error {
    /// Process exit code: 2 usage/configuration, 3 host not ready, 1 VMM failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Cli(_) | Error::Config(_) => 2,
            Error::Host(_) => 3,
            Error::Vmm(_) => 1,
        }
    }
}
