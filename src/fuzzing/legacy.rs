//! The legacy devices on the port bus, as the VMM wires them: COM1, the
//! i8042 reset port and the ACPI PM register.
//!
//! Invariants: a stop is requested only by the accesses that mean one (the
//! i8042 reset command, an ACPI PM sleep/reset value), with the matching
//! reason; what COM1 sends to the console is a subsequence of the bytes
//! the guest wrote to its data register, in order; unclaimed ports read
//! all ones.

use std::sync::{Arc, Mutex};

use super::Input;
use crate::arch::x86_64::layout;
use crate::devices::acpi_pm::{self, AcpiPm};
use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialConsole;
use crate::exit::{ExitReason, ExitSignal};

/// `small` is a subsequence of `big`.
fn subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|x| x == b))
}

/// The legacy devices driven by `data`.
pub fn legacy(data: &[u8]) {
    let mut input = Input::new(data);
    let pio = Bus::default();
    let exit = Arc::new(ExitSignal::new().expect("an eventfd"));
    let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("an eventfd");
    let sink = crate::devices::SharedSink::default();
    let serial = Arc::new(Mutex::new(SerialConsole::new(irq, Box::new(sink.clone()))));
    let com1 = u64::from(layout::SERIAL_PORT);
    let i8042 = u64::from(layout::I8042_PORT);
    let pm = u64::from(layout::ACPI_PM_PORT);
    pio.insert(com1, u64::from(layout::SERIAL_PORT_LEN), serial.clone())
        .unwrap();
    let kbd = Arc::new(Mutex::new(I8042::new(exit.clone())));
    pio.insert(i8042, u64::from(layout::I8042_PORT_LEN), kbd)
        .unwrap();
    let acpi = Arc::new(Mutex::new(AcpiPm::new(exit.clone())));
    pio.insert(pm, u64::from(layout::ACPI_PM_PORT_LEN), acpi)
        .unwrap();
    let mut thr = Vec::new();
    let mut want: Option<ExitReason> = None;
    for _ in 0..2000 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let base = [com1, com1, com1, i8042, pm, 0x80][usize::from(op >> 1) % 6];
        let port = base + u64::from(input.u8() % 8);
        let n = input.size(false);
        if op & 1 == 0 {
            let mut d = vec![0u8; n];
            let claimed = pio.read(port, &mut d);
            if !claimed {
                d.fill(0xff); // what the vCPU loop does
            }
            assert!(claimed || d.iter().all(|b| *b == 0xff));
        } else {
            let d = input.bytes(n);
            // Only accesses that fit a device's range reach it (the i8042
            // command and the PM register are one byte wide).
            if pio.write(port, &d) {
                if port == com1 {
                    thr.push(d[0]);
                }
                if port == i8042 + 4 && d[0] == 0xfe {
                    want.get_or_insert(ExitReason::I8042Reset);
                }
                if port == pm {
                    if let Some(r) = acpi_pm::decode(d[0]) {
                        want.get_or_insert(r);
                    }
                }
            }
            if input.u8() & 3 == 0 {
                serial.lock().unwrap().enqueue_input(&input.bytes(2));
            }
        }
        assert_eq!(
            exit.reason(),
            want,
            "stop requests match the guest's writes"
        );
    }
    let out = sink.0.lock().unwrap().clone();
    assert!(
        subsequence(&out, &thr),
        "console output is what the guest sent"
    );
}
