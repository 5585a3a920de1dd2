//! The part of the i8042 keyboard controller Linux uses to reset the
//! machine (`reboot=k`): command 0xFE on port 0x64 pulses the reset line.

use std::sync::Arc;

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Offset of the status/command port from the data port (0x64 - 0x60).
const COMMAND_OFFSET: u64 = 4;
/// "Pulse output line 0" (CPU reset).
const CMD_RESET_CPU: u8 = 0xfe;

/// Minimal i8042: status always "ready", reset command ends the VM.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that reports resets to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Output buffer empty, input buffer empty: nothing to read, ready to write.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::I8042Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_exit() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut k = I8042::new(exit.clone());
        let mut s = [0xffu8];
        k.read(COMMAND_OFFSET, &mut s);
        assert_eq!(s[0] & 0x2, 0, "input buffer must read empty");
        k.write(0, &[CMD_RESET_CPU]);
        assert!(!exit.requested(), "data port write is not a reset");
        k.write(COMMAND_OFFSET, &[0xaa]);
        assert!(!exit.requested());
        k.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::I8042Reset));
    }
}
