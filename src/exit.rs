//! Why the VM stopped, and the one-shot signal devices and vCPUs use to ask
//! the VMM to stop.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the guest stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 (guest `poweroff`).
    PowerOff,
    /// Reset through the i8042 controller (`reboot=k`), the conventional
    /// "stop the microVM" request.
    I8042Reset,
    /// ACPI reset register (guest `reboot`, or a panic with `panic=-1`).
    GuestReset,
    /// Triple fault or KVM shutdown exit.
    TripleFault,
    /// A vCPU failed; the string says how.
    VcpuError(String),
    /// The VMM was asked to stop (SIGINT/SIGTERM).
    Signal(i32),
}

impl ExitReason {
    /// Process exit code for this reason (see README "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::I8042Reset => 0,
            ExitReason::VcpuError(_) => 1,
            ExitReason::GuestReset | ExitReason::TripleFault => 4,
            ExitReason::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::I8042Reset => write!(f, "guest reset through the i8042 controller"),
            ExitReason::GuestReset => write!(f, "guest rebooted (or panicked with panic=-1)"),
            ExitReason::TripleFault => write!(f, "guest triple-faulted"),
            ExitReason::VcpuError(e) => write!(f, "vCPU error: {e}"),
            ExitReason::Signal(s) => write!(f, "stopped by signal {s}"),
        }
    }
}

/// Records the first exit request and wakes whoever waits on `eventfd()`.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// Creates the signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Requests a stop; only the first reason is kept.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            log::info!("stopping: {reason}");
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if a stop was requested.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.reason().is_some()
    }

    /// The eventfd written on every request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_differ() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.requested());
        s.request(ExitReason::PowerOff);
        s.request(ExitReason::TripleFault);
        assert_eq!(s.reason(), Some(ExitReason::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 2);
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::I8042Reset.exit_code(), 0);
        assert_eq!(ExitReason::GuestReset.exit_code(), 4);
        assert_eq!(ExitReason::VcpuError("x".into()).exit_code(), 1);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
    }
}
