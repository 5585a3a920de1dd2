//! The host side: device addresses (`bdf`), the host checks (`checks`,
//! `guest_memory`) and the one pre-flight sequence over them (`preflight`), the whole-host
//! report of `vflaunch doctor` (`doctor`), moving devices to vfio-pci and
//! back (`bind`), and the terminal the guest console runs on (`terminal`).

pub mod backend;
pub mod bdf;
pub mod bind;
pub mod checks;
pub mod console_socket;
pub mod doctor;
#[cfg(test)]
pub mod fake;
pub mod guest_memory;
pub mod preflight;
pub mod privileges;
pub mod terminal;
