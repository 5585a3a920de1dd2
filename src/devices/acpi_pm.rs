//! ACPI hardware-reduced power management: one I/O port serves as the FADT
//! sleep control, sleep status and reset register.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// SLP_TYP value the DSDT's `_S5_` package advertises.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Value the guest writes to the reset register.
pub const RESET_VALUE: u8 = 1;
/// SLP_EN bit of the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field position in the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// What a write to the PM register means.
pub fn decode(value: u8) -> Option<ExitReason> {
    if value & SLP_EN != 0 {
        let typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        return (typ == S5_SLEEP_TYPE).then_some(ExitReason::PowerOff);
    }
    (value == RESET_VALUE).then_some(ExitReason::GuestReset)
}

/// The PM register device.
pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    /// A device that reports power-off and reset to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        log::debug!("acpi pm: write {data:x?}");
        if let Some(reason) = data.first().and_then(|v| decode(*v)) {
            self.exit.request(reason);
        } else {
            log::debug!("acpi pm: ignored write {data:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_s5_and_reset() {
        // Linux writes (SLP_TYP << 2) | SLP_EN.
        assert_eq!(decode((5 << 2) | 0x20), Some(ExitReason::PowerOff));
        assert_eq!(decode((3 << 2) | 0x20), None, "S3 is not supported");
        assert_eq!(decode(5 << 2), None, "without SLP_EN nothing happens");
        assert_eq!(decode(RESET_VALUE), Some(ExitReason::GuestReset));
        assert_eq!(decode(0), None);
    }

    #[test]
    fn write_requests_exit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPm::new(exit.clone());
        pm.write(0, &[0x34]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }
}
