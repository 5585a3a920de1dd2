//! vflaunch: a minimal x86_64 VMM that boots a Linux guest with SR-IOV
//! virtual functions passed through via VFIO.
//!
//! The modules are private; the binary sees [`Cli`] and [`execute`]. The
//! running VM is owned by `vmm::Vmm`, built in named steps: KVM VM and
//! irqchip, guest memory, kernel and ACPI tables, legacy devices (serial,
//! i8042, ACPI PM), the PCI host bridge and the VFIO functions (BARs
//! mmapped into the guest, MSI-X table trapped, vectors routed through KVM
//! irqfd), DMA mapping, vCPUs.

mod api;
mod app;
mod arch;
mod bounded;
mod cli;
mod cli_tools;
mod config;
mod control;
mod devices;
mod error;
mod events;
mod exit;
mod generate;
mod host;
mod intake;
mod interrupts;
mod memory;
mod pci;
mod seccomp;
mod sync;
#[cfg(any(test, feature = "fuzzing"))]
mod testing;
mod vcpu;
mod vfio;
mod virtio;
mod vm;
mod vmm;

/// Harnesses for the cargo-fuzz targets in `fuzz/` (feature `fuzzing`):
/// each takes the fuzzer's bytes, drives one guest-facing surface or one
/// parser of outside input against the mock backend, and panics when an
/// invariant breaks. Not an API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use app::execute;
pub use cli::{Cli, LogFormat};
/// The virtio queue fuzz entry point, for a cargo-fuzz target.
#[cfg(feature = "fuzzing")]
pub use virtio::fuzz::fuzz_queue;
