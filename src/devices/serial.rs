//! COM1: a 16550A UART (vm-superio) whose interrupt line is an eventfd wired
//! to an irqfd, and whose output goes to a writer (for the console, a
//! [`super::console_output::ConsoleWriter`], which never blocks).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// An eventfd used as the UART's interrupt line.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Number of UART registers (port offsets 0..8).
const UART_REGS: u64 = 8;

/// The console UART.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

/// A wider access is split into byte accesses to consecutive registers, as
/// the ISA bus does for an 8-bit device; bytes past the last register read
/// as 0xff and writes there are dropped.
impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let reg = offset + i as u64;
            *b = if reg < UART_REGS {
                self.uart.read(reg as u8)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let reg = offset + i as u64;
            if reg >= UART_REGS {
                break;
            }
            if let Err(e) = self.uart.write(reg as u8, *b) {
                log::debug!("serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::devices::SharedSink;

    use super::*;

    #[test]
    fn transmits_to_writer_and_raises_irq_on_input() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = SharedSink::default();
        let mut s = SerialConsole::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"ok\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");
        // Enable the "received data available" interrupt, then feed input.
        s.write(1, &[0x01]);
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut d = [0u8];
        s.read(0, &mut d);
        assert_eq!(d[0], b'x');
    }

    #[test]
    fn wide_accesses_cover_consecutive_registers() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = SharedSink::default();
        let mut s = SerialConsole::new(irq, Box::new(sink.clone()));
        // Line control (3) with DLAB clear, then a 4-byte read at 2: IIR,
        // LCR, MCR, LSR; nothing is left as the caller's stale bytes.
        s.write(3, &[0x03]);
        let mut d = [0xaa; 4];
        s.read(2, &mut d);
        assert_eq!(d[1], 0x03, "LCR as written");
        assert_ne!(d[3], 0xaa, "LSR is read, not left stale");
        assert_eq!(d[3] & 0x60, 0x60, "transmitter empty");
        let mut d = [0xaa; 4];
        s.read(6, &mut d);
        assert_eq!(&d[2..], &[0xff, 0xff], "past the last register");
        // A 2-byte write at 0 is THR then IER.
        s.write(0, &[b'z', 0x01]);
        assert_eq!(&*sink.0.lock().unwrap(), b"z");
        let mut ier = [0u8];
        s.read(1, &mut ier);
        assert_eq!(ier[0], 0x01);
    }
}
