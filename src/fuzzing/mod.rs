//! Fuzz harnesses (README.md, "Fuzzing"; targets in `fuzz/`). Each public function takes the
//! fuzzer's bytes, drives one surface and panics when an invariant breaks,
//! so a fuzzer reports broken invariants as crashes, not only panics:
//!
//! - [`pci_bus`]: the PCI root with the igbvf-shaped mock VF, through
//!   0xCF8/0xCFC, ECAM and the trapped BAR pages (config space, BAR sizing
//!   and moves, MSI, MSI-X capability and table);
//! - [`device_config`]: the same with the device's own configuration space
//!   fuzzed (a buggy or hostile function's capability lists);
//! - [`legacy`]: COM1, the i8042 and the ACPI PM register on the port bus;
//! - [`cli_values`], [`config_json`], [`intake_env`], [`network_info`]: the
//!   parsers of outside input.
//!
//! The unit tests below replay the committed seeds and every input that
//! once broke an invariant, so `cargo test` keeps them fixed.

mod legacy;
mod parsers;
mod pci;

pub use legacy::legacy;
pub use parsers::{cli_values, config_json, intake_env, network_info};
pub use pci::{device_config, pci_bus};

/// Reads the fuzzer's bytes as a stream of small values; past the end
/// everything reads as zero, so every input is a valid program.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    /// An access size: 1, 2, 4 or (with `qword`) 8 bytes.
    pub(crate) fn size(&mut self, qword: bool) -> usize {
        let sizes: &[usize] = if qword { &[1, 2, 4, 8] } else { &[1, 2, 4] };
        sizes[usize::from(self.u8()) % sizes.len()]
    }

    /// `n` bytes of data.
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.u8()).collect()
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests;
