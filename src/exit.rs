//! Stopping: why the VM stopped ([`ExitReason`]), the one-shot stop request
//! that devices, vCPUs and signal handlers raise ([`ExitSignal`], an eventfd
//! underneath), the SIGINT/SIGTERM handlers, and the wait for a stop.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

use crate::error::exit_code;
use crate::sync::lock;

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
    /// The VMM itself stopped the guest (tear-down after an error, or a
    /// controller's request).
    Stopped,
}

impl ExitReason {
    /// Process exit code for this reason (see README "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::I8042Reset | ExitReason::Stopped => exit_code::OK,
            ExitReason::VcpuError(_) => exit_code::VMM,
            ExitReason::GuestReset | ExitReason::TripleFault => exit_code::GUEST_RESET,
            ExitReason::Signal(s) => exit_code::SIGNAL_BASE + s,
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
            ExitReason::Stopped => write!(f, "the VMM stopped the guest"),
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
        let mut r = lock(&self.reason);
        if r.is_none() {
            log::info!("stopping: {reason}");
            *r = Some(reason);
        }
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if a stop was requested.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
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

/// Signal number caught by the SIGINT/SIGTERM handler (0: none).
static CAUGHT_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Eventfd the signal handler writes to wake the waiting thread (-1: none).
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

/// SIGINT and SIGTERM are recorded and wake whoever polls `wake` while this lives.
pub struct SignalHandlers(());

impl SignalHandlers {
    /// Installs the handlers, waking `wake` (an eventfd) on each signal.
    pub fn install(wake: &EventFd) -> std::io::Result<Self> {
        WAKE_FD.store(wake.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            register_signal_handler(sig, on_terminate)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(SignalHandlers(()))
    }
}

impl Drop for SignalHandlers {
    fn drop(&mut self) {
        // The handlers stay (a late signal is then only recorded); the
        // eventfd may close after this.
        WAKE_FD.store(-1, Ordering::SeqCst);
    }
}

/// The signal caught since the last call, if any.
pub fn take_signal() -> Option<i32> {
    match CAUGHT_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Blocks until a stop is requested (by a device or a vCPU); returns the reason.
#[cfg(test)]
pub fn wait(exit: &ExitSignal) -> ExitReason {
    loop {
        let mut pfd = libc::pollfd {
            fd: exit.eventfd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd array of length 1.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        let _ = exit.eventfd().read();
        if let Some(reason) = exit.reason() {
            return reason;
        }
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
        assert_eq!(ExitReason::Stopped.exit_code(), 0);
    }

    #[test]
    fn wait_returns_the_first_reason() {
        let s = std::sync::Arc::new(ExitSignal::new().unwrap());
        let t = {
            let s = s.clone();
            std::thread::spawn(move || wait(&s))
        };
        s.request(ExitReason::I8042Reset);
        assert_eq!(t.join().unwrap(), ExitReason::I8042Reset);
    }
}
