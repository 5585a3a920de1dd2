//! The device thread: one epoll loop that runs every active virtio worker.
//! vCPU threads never run device code; they add a worker when the driver
//! sets DRIVER_OK and take it back (synchronously) on reset. Each epoll
//! entry carries the worker's slot and a token the worker chose.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::sync::lock;

/// The token of the thread's own wake-up eventfd.
const WAKE: u64 = u64::MAX;

/// A device's queue processing, run on the device thread.
pub trait Worker: Send {
    /// Registers the worker's file descriptors (kick eventfds, sockets, files).
    fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()>;
    /// One of its descriptors is ready.
    fn event(&mut self, token: u32, events: EventSet, reg: &mut Registrar);
}

/// Lets a worker add and remove its descriptors on the epoll set.
pub struct Registrar<'a> {
    epoll: &'a Epoll,
    slot: u32,
    fds: &'a mut Vec<RawFd>,
}

impl Registrar<'_> {
    /// Watches `fd` for `events`; `token` comes back in [`Worker::event`].
    pub fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        let data = (u64::from(self.slot) << 32) | u64::from(token);
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))?;
        self.fds.push(fd);
        Ok(())
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        let data = (u64::from(self.slot) << 32) | u64::from(token);
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, data))
    }

    /// Stops watching `fd` (call before closing it).
    pub fn remove(&mut self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.fds.retain(|f| *f != fd);
    }
}

/// Runs `f` with a registrar on a throwaway epoll set (fuzzing and tests
/// drive workers' packet handling without the device thread).
#[cfg(any(test, feature = "fuzzing"))]
pub fn with_scratch_registrar<R>(f: impl FnOnce(&mut Registrar) -> R) -> std::io::Result<R> {
    let epoll = Epoll::new()?;
    let mut fds = Vec::new();
    let mut reg = Registrar {
        epoll: &epoll,
        slot: 0,
        fds: &mut fds,
    };
    Ok(f(&mut reg))
}

enum Cmd {
    Add(Box<dyn Worker>, SyncSender<std::io::Result<u32>>),
    Remove(u32, SyncSender<()>),
    Stop,
}

struct Shared {
    cmds: Mutex<(VecDeque<Cmd>, bool)>,
    wake: EventFd,
}

/// A handle to post work to the device thread (devices hold one).
#[derive(Clone)]
pub struct DeviceThreadHandle(Arc<Shared>);

impl DeviceThreadHandle {
    fn post(&self, cmd: Cmd) -> bool {
        let mut q = lock(&self.0.cmds);
        if q.1 {
            return false;
        }
        q.0.push_back(cmd);
        drop(q);
        self.0.wake.write(1).is_ok()
    }

    /// Starts running `worker`; returns its slot.
    pub fn add(&self, worker: Box<dyn Worker>) -> std::io::Result<u32> {
        let (tx, rx) = sync_channel(1);
        if !self.post(Cmd::Add(worker, tx)) {
            return Err(std::io::Error::other("the device thread has stopped"));
        }
        rx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the device thread has stopped")))
    }

    /// Stops and drops the worker in `slot`; when this returns, it no longer
    /// touches guest memory.
    pub fn remove(&self, slot: u32) {
        let (tx, rx) = sync_channel(1);
        if self.post(Cmd::Remove(slot, tx)) {
            let _ = rx.recv();
        }
    }
}

struct Entry {
    worker: Box<dyn Worker>,
    fds: Vec<RawFd>,
}

/// The device thread; stopping it (or dropping it) drops every worker.
pub struct DeviceThread {
    handle: DeviceThreadHandle,
    join: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            cmds: Mutex::new((VecDeque::new(), false)),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            shared.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let s = shared.clone();
        let join = std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || run(&epoll, &s))?;
        Ok(DeviceThread {
            handle: DeviceThreadHandle(shared),
            join: Some(join),
        })
    }

    /// A handle for devices.
    pub fn handle(&self) -> DeviceThreadHandle {
        self.handle.clone()
    }

    /// Stops the loop and joins the thread; idempotent.
    pub fn stop(&mut self) {
        self.handle.post(Cmd::Stop);
        if let Some(j) = self.join.take() {
            if j.join().is_err() {
                log::error!("the virtio device thread panicked");
            }
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(epoll: &Epoll, shared: &Shared) {
    // Guest queues are handled from here on: only the device syscalls.
    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Device) {
        log::error!(
            "virtio: {}; the devices stay stopped",
            crate::error::error_chain(&e)
        );
        return;
    }
    let mut workers: BTreeMap<u32, Entry> = BTreeMap::new();
    let mut next_slot = 0u32;
    let mut events = vec![EpollEvent::default(); 64];
    'outer: loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("virtio device thread: epoll failed: {e}");
                break;
            }
        };
        for ev in &events[..n] {
            if ev.data() == WAKE {
                let _ = shared.wake.read();
                continue;
            }
            let (slot, token) = ((ev.data() >> 32) as u32, ev.data() as u32);
            if let Some(e) = workers.get_mut(&slot) {
                let mut reg = Registrar {
                    epoll,
                    slot,
                    fds: &mut e.fds,
                };
                e.worker.event(token, ev.event_set(), &mut reg);
            }
        }
        loop {
            let Some(cmd) = lock(&shared.cmds).0.pop_front() else {
                break;
            };
            match cmd {
                Cmd::Add(mut worker, tx) => {
                    let slot = next_slot;
                    next_slot = next_slot.wrapping_add(1);
                    let mut fds = Vec::new();
                    let mut reg = Registrar {
                        epoll,
                        slot,
                        fds: &mut fds,
                    };
                    let r = worker.start(&mut reg);
                    if r.is_ok() {
                        workers.insert(slot, Entry { worker, fds });
                    } else {
                        unregister(epoll, &fds);
                    }
                    let _ = tx.send(r.map(|()| slot));
                }
                Cmd::Remove(slot, tx) => {
                    if let Some(e) = workers.remove(&slot) {
                        unregister(epoll, &e.fds);
                    }
                    let _ = tx.send(());
                }
                Cmd::Stop => break 'outer,
            }
        }
    }
    for e in workers.values() {
        unregister(epoll, &e.fds);
    }
    drop(workers);
    // Refuse new work; answer what is queued (the senders drop here).
    let mut q = lock(&shared.cmds);
    q.1 = true;
    q.0.clear();
}

fn unregister(epoll: &Epoll, fds: &[RawFd]) {
    for fd in fds {
        let _ = epoll.ctl(ControlOperation::Delete, *fd, EpollEvent::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Counter {
        kick: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl Worker for Counter {
        fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()> {
            reg.add(self.kick.as_raw_fd(), 7, EventSet::IN)
        }
        fn event(&mut self, token: u32, _: EventSet, _: &mut Registrar) {
            assert_eq!(token, 7);
            let _ = self.kick.read();
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn runs_workers_until_removed_and_refuses_after_stop() {
        let mut t = DeviceThread::start().unwrap();
        let h = t.handle();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let w = Counter {
            kick: kick.try_clone().unwrap(),
            seen: seen.clone(),
        };
        let slot = h.add(Box::new(w)).unwrap();
        kick.write(1).unwrap();
        let t0 = std::time::Instant::now();
        while seen.load(Ordering::SeqCst) == 0 && t0.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        h.remove(slot);
        kick.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "a removed worker sees nothing"
        );
        t.stop();
        let w = Counter {
            kick,
            seen: seen.clone(),
        };
        assert!(h.add(Box::new(w)).is_err(), "a stopped thread refuses work");
        h.remove(0); // does not hang
    }
}
