//! Locking shared device state.

use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

/// Locks `m`, taking the data even if a thread panicked while holding it:
/// device state stays consistent between accesses, and a panic on one vCPU
/// thread must not also stop the tear-down that resets the devices.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cv` for at most `timeout`, taking the data back like [`lock`]
/// even if a thread panicked while holding it.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(g, timeout)
        .map_or_else(|e| e.into_inner().0, |(g, _)| g)
}

/// Locks `m` like [`lock`], but gives up after `deadline`: tear-down uses
/// it where a vCPU thread that did not stop may still hold the lock.
pub fn lock_within<T: ?Sized>(m: &Mutex<T>, deadline: Duration) -> Option<MutexGuard<'_, T>> {
    let start = Instant::now();
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(TryLockError::WouldBlock) if start.elapsed() >= deadline => return None,
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn lock_within_gives_up_on_a_held_lock() {
        let m = Arc::new(Mutex::new(1));
        let (held, release) = (
            Arc::new(std::sync::Barrier::new(2)),
            Arc::new(Mutex::new(())),
        );
        let gate = lock(&release);
        let t = {
            let (m, held, release) = (m.clone(), held.clone(), release.clone());
            std::thread::spawn(move || {
                let _g = lock(&m);
                held.wait();
                drop(lock(&release));
            })
        };
        held.wait();
        let start = Instant::now();
        assert!(lock_within(&m, Duration::from_millis(50)).is_none());
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(gate);
        t.join().unwrap();
        assert_eq!(*lock_within(&m, Duration::from_millis(50)).unwrap(), 1);
    }
}
