//! The host side of the serial console: raw terminal mode while the guest
//! runs, and the thread that feeds stdin to the UART, with Ctrl-A x to quit.
//!
//! Both work on file descriptor 0 directly: Rust's `Stdin` lock would be
//! held by the blocked reader thread, and restoring the terminal at exit
//! must never wait for it.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crate::devices::serial::SerialConsole;
use crate::exit::{ExitReason, ExitSignal};

const STDIN_FD: libc::c_int = 0;

/// Raw mode on the controlling terminal, restored on drop.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Switches stdin to raw mode if stdin and stdout are both terminals
    /// (an interactive console); otherwise leaves everything alone.
    pub fn enter() -> Self {
        if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
            return RawTerminal { saved: None };
        }
        // SAFETY: termios is plain data; an all-zero value is valid to overwrite.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (it is a terminal) and `saved` is a valid termios.
        if unsafe { libc::tcgetattr(STDIN_FD, &mut saved) } != 0 {
            return RawTerminal { saved: None };
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios obtained from tcgetattr.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: as above; TCSANOW applies the settings immediately.
        if unsafe { libc::tcsetattr(STDIN_FD, libc::TCSANOW, &raw) } != 0 {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }

    /// True if the terminal is in raw mode (interactive console).
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings read from fd 0 in `enter`.
            unsafe { libc::tcsetattr(STDIN_FD, libc::TCSANOW, saved) };
        }
    }
}

/// Ctrl-A: the console escape character (as in QEMU).
pub const ESCAPE: u8 = 0x01;

/// What one input byte does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Send this byte to the guest.
    Forward(u8),
    /// Leave the VM (Ctrl-A x).
    Quit,
    /// Consumed by the escape sequence.
    Swallow,
}

/// Recognizes Ctrl-A x (quit) and Ctrl-A Ctrl-A (a literal Ctrl-A).
#[derive(Default)]
pub struct EscapeParser {
    escaped: bool,
}

impl EscapeParser {
    /// Feeds one byte.
    pub fn feed(&mut self, b: u8) -> Key {
        if std::mem::take(&mut self.escaped) {
            return match b {
                b'x' | b'X' => Key::Quit,
                other => Key::Forward(other),
            };
        }
        if b == ESCAPE {
            self.escaped = true;
            Key::Swallow
        } else {
            Key::Forward(b)
        }
    }
}

fn read_stdin(buf: &mut [u8]) -> isize {
    // SAFETY: reads at most buf.len() bytes into a valid, exclusively borrowed buffer.
    unsafe { libc::read(STDIN_FD, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Starts the thread that copies stdin to the UART until EOF. With `escapes`
/// (an interactive console), Ctrl-A x requests a stop.
pub fn spawn_input(
    serial: Arc<Mutex<SerialConsole>>,
    exit: Arc<ExitSignal>,
    escapes: bool,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut parser = EscapeParser::default();
            loop {
                let n = read_stdin(&mut buf);
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n <= 0 {
                    return;
                }
                let mut input = Vec::with_capacity(n as usize);
                for b in &buf[..n as usize] {
                    match if escapes {
                        parser.feed(*b)
                    } else {
                        Key::Forward(*b)
                    } {
                        Key::Forward(b) => input.push(b),
                        Key::Quit => {
                            exit.request(ExitReason::Signal(libc::SIGINT));
                            return;
                        }
                        Key::Swallow => {}
                    }
                }
                let mut rest = &input[..];
                while !rest.is_empty() && !exit.requested() {
                    let taken = crate::sync::lock(&serial).enqueue_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b'a'), Key::Forward(b'a'));
        assert_eq!(p.feed(ESCAPE), Key::Swallow);
        assert_eq!(
            p.feed(ESCAPE),
            Key::Forward(ESCAPE),
            "Ctrl-A Ctrl-A sends Ctrl-A"
        );
        assert_eq!(p.feed(b'x'), Key::Forward(b'x'), "x alone is just x");
        assert_eq!(p.feed(ESCAPE), Key::Swallow);
        assert_eq!(p.feed(b'x'), Key::Quit);
        assert_eq!(p.feed(ESCAPE), Key::Swallow);
        assert_eq!(p.feed(b'c'), Key::Forward(b'c'));
    }

    #[test]
    fn not_a_terminal_is_left_alone() {
        // Under `cargo test` stdout is captured or piped, so nothing changes.
        if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
            assert!(!RawTerminal::enter().is_raw());
        }
    }
}
