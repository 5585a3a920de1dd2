//! Guest RAM is pinned and mapped for device DMA on a background thread
//! while the vCPUs already run (pinning is most of the build time, and it
//! grows with RAM). A device can neither DMA nor send an interrupt before
//! the guest sets Bus Master Enable in its command register, so the vCPU
//! making that write waits here until the mapping is complete.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::exit::ExitSignal;
use crate::sync::lock;

/// Whether guest RAM is mapped for DMA yet.
pub struct DmaGate {
    /// `None` while mapping; then the outcome (the error line on failure).
    done: Mutex<Option<Result<(), String>>>,
    cv: Condvar,
    exit: Arc<ExitSignal>,
}

impl DmaGate {
    /// A closed gate; a stop request through `exit` releases its waiters.
    pub fn new(exit: Arc<ExitSignal>) -> Arc<Self> {
        Arc::new(DmaGate {
            done: Mutex::new(None),
            cv: Condvar::new(),
            exit,
        })
    }

    /// Records the mapping's outcome and releases every waiter.
    pub fn open(&self, outcome: Result<(), String>) {
        *lock(&self.done) = Some(outcome);
        self.cv.notify_all();
    }

    /// Waits for the mapping; `Err` if it failed or the VM is stopping.
    pub fn wait(&self) -> Result<(), String> {
        let mut done = lock(&self.done);
        loop {
            if let Some(r) = done.as_ref() {
                return r.clone();
            }
            if self.exit.requested() {
                return Err("the VM is stopping".into());
            }
            done = crate::sync::wait_timeout(&self.cv, done, Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;

    #[test]
    fn waiters_are_held_until_the_mapping_is_done() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let gate = DmaGate::new(exit.clone());
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "held while mapping");
        gate.open(Ok(()));
        assert_eq!(waiter.join().unwrap(), Ok(()));
        // Failures reach every later waiter too.
        let gate = DmaGate::new(exit.clone());
        gate.open(Err("cannot DMA-map".into()));
        assert_eq!(gate.wait(), Err("cannot DMA-map".into()));
        // A stop releases a waiter of a mapping that never ends.
        let gate = DmaGate::new(exit.clone());
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.wait());
        exit.request(ExitReason::Stopped);
        assert!(waiter.join().unwrap().is_err());
    }
}
