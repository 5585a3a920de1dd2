//! The ACPI Generic Event Device (`ACPI0013`): one event register the
//! guest's `_EVT` method reads when the GED interrupt fires. vflaunch uses
//! it for the power button (`PNP0C0C`), which a hardware-reduced platform
//! has no fixed event for: SIGTERM and `vm.power-button` press it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Event bit: the power button was pressed (the DSDT's `_EVT` tests it).
pub const EVENT_POWER_BUTTON: u8 = 1 << 3;

/// The pending events and the interrupt that announces them.
pub struct Ged {
    pending: Arc<AtomicU8>,
    irq: EventFd,
}

/// Raises GED events from outside the device (the main thread).
#[derive(Clone)]
pub struct GedTrigger {
    pending: Arc<AtomicU8>,
    irq: Arc<EventFd>,
}

impl Ged {
    /// A GED raising `irq` (an irqfd on [`crate::arch::x86_64::layout::ACPI_GED_IRQ`]).
    pub fn new(irq: EventFd) -> std::io::Result<(Self, GedTrigger)> {
        let pending = Arc::new(AtomicU8::new(0));
        let trigger = GedTrigger {
            pending: pending.clone(),
            irq: Arc::new(irq.try_clone()?),
        };
        Ok((Ged { pending, irq }, trigger))
    }
}

impl GedTrigger {
    /// Presses the power button: the guest sees a `Notify(PWRB, 0x80)`.
    pub fn power_button(&self) -> std::io::Result<()> {
        self.pending.fetch_or(EVENT_POWER_BUTTON, Ordering::SeqCst);
        self.irq.write(1)
    }
}

impl BusDevice for Ged {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            // Reading the events acknowledges them.
            if let Some(b) = data.first_mut() {
                *b = self.pending.swap(0, Ordering::SeqCst);
            }
        }
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

impl Drop for Ged {
    fn drop(&mut self) {
        // Nothing left to deliver once the guest is gone.
        let _ = self.irq.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_button_raises_the_interrupt_and_reads_once() {
        let (mut ged, trigger) = Ged::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()).unwrap();
        let mut b = [0xffu8; 4];
        ged.read(0, &mut b);
        assert_eq!(b, [0; 4], "nothing pending");
        trigger.power_button().unwrap();
        assert_eq!(ged.irq.read().unwrap(), 1, "the interrupt fired");
        ged.read(0, &mut b[..1]);
        assert_eq!(b[0], EVENT_POWER_BUTTON);
        ged.read(0, &mut b[..1]);
        assert_eq!(b[0], 0, "acknowledged by the read");
    }
}
