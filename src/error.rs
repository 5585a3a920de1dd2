//! Failures as the operator sees them: the process exit codes, and an
//! error's whole cause chain on one line.

/// Process exit codes (README "Exit codes").
pub mod exit_code {
    /// The guest powered off, or reset through the i8042 controller.
    pub const OK: i32 = 0;
    /// The VMM failed while building or running the VM.
    pub const VMM: i32 = 1;
    /// Bad command line or configuration.
    pub const USAGE: i32 = 2;
    /// A host pre-flight check failed.
    pub const HOST: i32 = 3;
    /// The guest rebooted, triple-faulted or panicked.
    pub const GUEST_RESET: i32 = 4;
    /// Stopped by a signal: this plus the signal number.
    pub const SIGNAL_BASE: i32 = 128;
}

/// An error and its causes on one line. Our errors say their own part and
/// leave the cause to `source()`, so the parts are joined; some crates'
/// errors (vfio-ioctls) also print their cause, which is then not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open VFIO device 0000:03:02.1")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to open group: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn chain_joins_each_part_once() {
        let e = Repeats(std::io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(
            error_chain(&e),
            "failed to open group: Device or resource busy (os error 16)"
        );
        let e = Outer(std::io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(
            error_chain(&e),
            "cannot open VFIO device 0000:03:02.1: Device or resource busy (os error 16)"
        );
    }
}
