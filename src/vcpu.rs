//! vCPUs: per-vCPU setup, the run loop, and the set of running vCPU
//! threads (pause, resume, stop). The loop only forwards exits to the
//! buses; it knows no device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::x86_64::boot::BootEntry;
use crate::arch::x86_64::tsc::TscRate;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::bus::Buses;
use crate::exit::{ExitReason, ExitSignal};
use crate::sync::{lock, wait_timeout};

/// Errors creating or configuring vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("cannot set CPUID on vCPU {0}")]
    Cpuid(u8, #[source] kvm_ioctls::Error),
    /// Register setup failed.
    #[error("cannot set up registers of vCPU {0}")]
    Regs(u8, #[source] regs::RegsError),
    /// The vCPU thread could not be started.
    #[error("cannot start the vCPU {0} thread")]
    Spawn(u8, #[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// What the loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(ExitReason),
}

/// Handles one exit from `KVM_RUN`.
pub fn handle_exit(exit: VcpuExit<'_>, buses: &Buses) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                log::trace!("unhandled port write {port:#x} {data:?}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                log::debug!("unhandled MMIO read at {addr:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::debug!("unhandled MMIO write at {addr:#x}");
            }
        }
        VcpuExit::Hlt => return VcpuAction::Stop(ExitReason::PowerOff),
        VcpuExit::Shutdown => return VcpuAction::Stop(ExitReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) => {
            return VcpuAction::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestReset,
                other => ExitReason::VcpuError(format!("unknown system event {other}")),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return VcpuAction::Stop(ExitReason::VcpuError(format!(
                "KVM entry failed on CPU {cpu}: hardware reason {reason:#x}"
            )))
        }
        VcpuExit::InternalError => {
            return VcpuAction::Stop(ExitReason::VcpuError("KVM internal error".into()))
        }
        VcpuExit::Intr => {}
        other => log::debug!("unhandled vCPU exit {other:?}"),
    }
    VcpuAction::Continue
}

/// One configured vCPU, ready to run.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for the signal used to kick vCPUs out of `KVM_RUN`.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(SIGRTMIN(), kick_handler).map_err(VcpuError::Signal)
}

impl Vcpu {
    /// Creates and configures vCPU `id` of `count`; vCPU 0 gets the boot state.
    /// `tsc` says whether it may have the TSC-deadline timer.
    pub fn new(
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        supported_cpuid: &CpuId,
        (id, count): (u8, u8),
        tsc: &TscRate,
        boot: &BootEntry,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        let tsc_khz = TscRate::vcpu_khz(&fd);
        let tsc_deadline = tsc.deadline_for(tsc_khz);
        if tsc.deadline_timer && tsc.pinned_khz.is_some() && !tsc_deadline {
            log::warn!(
                "vCPU {id}: KVM reports {tsc_khz:?} kHz, not the pinned {:?}: no TSC-deadline timer",
                tsc.pinned_khz
            );
        }
        let extras = cpuid::CpuidExtras {
            tsc_khz,
            tsc_deadline,
        };
        fd.set_cpuid2(&cpuid::vcpu_cpuid(supported_cpuid, id, count, &extras))
            .map_err(|e| VcpuError::Cpuid(id, e))?;
        let r = |e| VcpuError::Regs(id, e);
        regs::setup_msrs(&fd).map_err(r)?;
        regs::setup_lint(&fd).map_err(r)?;
        if id == 0 {
            regs::setup_sregs(mem, &fd, boot.mode).map_err(r)?;
            regs::setup_regs(&fd, boot.mode, boot.entry, boot.boot_info).map_err(r)?;
            regs::setup_fpu(&fd).map_err(r)?;
        }
        Ok(Vcpu { id, fd })
    }

    /// Runs the vCPU on its own thread, named `vcpu<N>` (orchestrators
    /// find vCPU threads by that name to pin them), until a stop.
    fn spawn(
        mut self,
        buses: Arc<Buses>,
        control: Arc<VcpuControl>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let _end = EndGuard(&control);
                self.run(&buses, &control)
            })
            .map_err(|e| VcpuError::Spawn(id, e))
    }

    fn run(&mut self, buses: &Buses, control: &VcpuControl) {
        let exit = &control.exit;
        // The guest's input is handled from here on: only the vCPU syscalls.
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
            let why = crate::error::error_chain(&e);
            exit.request(ExitReason::VcpuError(format!("vCPU {}: {why}", self.id)));
            return;
        }
        loop {
            control.park_while_paused();
            // Checked after the park: a stop ends a park too, and then the
            // guest must not run again.
            if exit.requested() {
                break;
            }
            match self.fd.run() {
                Ok(VcpuExit::InternalError) => {
                    exit.request(ExitReason::VcpuError(self.internal_error()))
                }
                Ok(e) => {
                    control.exits[exit_kind(&e)].fetch_add(1, Ordering::Relaxed);
                    if let VcpuAction::Stop(reason) = handle_exit(e, buses) {
                        exit.request(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => exit.request(ExitReason::VcpuError(format!(
                    "vCPU {}: KVM_RUN: {e}",
                    self.id
                ))),
            }
        }
        if log::log_enabled!(log::Level::Debug) {
            if let Ok(r) = self.fd.get_regs() {
                log::debug!(
                    "vCPU {} stopped at rip={:#x} rsp={:#x} rflags={:#x}",
                    self.id,
                    r.rip,
                    r.rsp,
                    r.rflags
                );
            }
        }
    }
}

impl Vcpu {
    /// Describes a `KVM_EXIT_INTERNAL_ERROR` from the run structure.
    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel fills the `internal` member.
        let sub = unsafe { run.__bindgen_anon_1.internal.suberror };
        let what = match sub {
            1 => "instruction emulation failed",
            2 => "exception while delivering an exception",
            3 => "event delivery failed",
            4 => "unexpected exit reason",
            _ => "unknown",
        };
        format!(
            "KVM internal error on vCPU {} (suberror {sub}: {what}); this host's KVM could not run the guest",
            self.id
        )
    }
}

/// The exit kinds counted for `vm.counters`.
const EXIT_KINDS: [&str; 8] = [
    "io_in",
    "io_out",
    "mmio_read",
    "mmio_write",
    "hlt",
    "shutdown",
    "system_event",
    "other",
];

fn exit_kind(e: &VcpuExit<'_>) -> usize {
    match e {
        VcpuExit::IoIn(..) => 0,
        VcpuExit::IoOut(..) => 1,
        VcpuExit::MmioRead(..) => 2,
        VcpuExit::MmioWrite(..) => 3,
        VcpuExit::Hlt => 4,
        VcpuExit::Shutdown => 5,
        VcpuExit::SystemEvent(..) => 6,
        _ => 7,
    }
}

/// What the vCPU threads share with the VMM: the stop request, the pause
/// gate and the exit counters.
pub struct VcpuControl {
    exit: Arc<ExitSignal>,
    exits: [AtomicU64; EXIT_KINDS.len()],
    /// (pause wanted, vCPUs parked).
    pause: Mutex<(bool, usize)>,
    cv: Condvar,
    /// vCPU threads that returned from their run loop, and its signal: a
    /// stop wakes as soon as the last one is out, not at the next poll.
    ended: Mutex<usize>,
    ended_cv: Condvar,
}

/// Counts its vCPU thread as ended when dropped (also on a panic).
struct EndGuard<'a>(&'a VcpuControl);

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.ended) += 1;
        self.0.ended_cv.notify_all();
    }
}

impl VcpuControl {
    /// Control for vCPUs that stop when `exit` is requested.
    pub fn new(exit: Arc<ExitSignal>) -> Arc<Self> {
        Arc::new(VcpuControl {
            exit,
            exits: Default::default(),
            pause: Mutex::new((false, 0)),
            cv: Condvar::new(),
            ended: Mutex::new(0),
            ended_cv: Condvar::new(),
        })
    }

    /// vCPU exits so far, by kind, over all vCPUs.
    pub fn exit_counts(&self) -> Vec<(&'static str, u64)> {
        EXIT_KINDS
            .iter()
            .zip(&self.exits)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    fn park_while_paused(&self) {
        let mut p = lock(&self.pause);
        if !p.0 {
            return;
        }
        p.1 += 1;
        self.cv.notify_all();
        while p.0 && !self.exit.requested() {
            p = wait_timeout(&self.cv, p, Duration::from_millis(100));
        }
        p.1 -= 1;
    }
}

/// How long `pause` and `stop` wait for vCPU threads before giving up on them.
const VCPU_DEADLINE: Duration = Duration::from_secs(5);

/// The running vCPU threads.
pub struct VcpuSet {
    handles: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
    /// `control.ended` when this set started (the count is the control's).
    ended_before: usize,
}

impl VcpuSet {
    /// Starts one thread per vCPU.
    pub fn start(
        vcpus: Vec<Vcpu>,
        buses: &Arc<Buses>,
        control: Arc<VcpuControl>,
    ) -> Result<Self, VcpuError> {
        let ended_before = *lock(&control.ended);
        let mut set = VcpuSet {
            handles: Vec::new(),
            control,
            ended_before,
        };
        for v in vcpus {
            // On an error the threads already started stop when `set` drops.
            set.handles
                .push(v.spawn(buses.clone(), set.control.clone())?);
        }
        Ok(set)
    }

    fn kick(&self) {
        for h in self.handles.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(SIGRTMIN());
        }
    }

    /// Parks every vCPU outside `KVM_RUN`; false if they did not all park in time.
    pub fn pause(&self) -> bool {
        lock(&self.control.pause).0 = true;
        let start = Instant::now();
        loop {
            let parked = lock(&self.control.pause).1;
            if parked == self.handles.len() {
                return true;
            }
            if start.elapsed() > VCPU_DEADLINE {
                return false;
            }
            self.kick();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        lock(&self.control.pause).0 = false;
        self.control.cv.notify_all();
    }

    /// Stops every vCPU thread (the stop must have been requested) and
    /// joins them; a thread that does not return within the deadline is
    /// left behind, so that tear-down still goes on. Returns how many stopped.
    pub fn stop(&mut self) -> usize {
        self.control.cv.notify_all();
        let n = self.handles.len() + self.ended_before;
        let start = Instant::now();
        let mut ended = lock(&self.control.ended);
        while *ended < n && start.elapsed() < VCPU_DEADLINE {
            drop(ended);
            self.kick();
            ended = lock(&self.control.ended);
            // Woken by the last vCPU's end; re-kick one that was not in KVM_RUN yet.
            ended = wait_timeout(&self.control.ended_cv, ended, Duration::from_millis(2));
        }
        // Every thread is out of its loop: what is left of each is its drop.
        let all_ended = *ended >= n;
        drop(ended);
        let mut stopped = 0;
        for h in self.handles.drain(..) {
            if all_ended || h.is_finished() {
                let _ = h.join();
                stopped += 1;
            } else {
                log::error!(
                    "a vCPU thread did not stop within {VCPU_DEADLINE:?}; going on without it"
                );
            }
        }
        stopped
    }
}

impl Drop for VcpuSet {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.control.exit.request(ExitReason::Stopped);
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::bus::BusDevice;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, _o: u64, d: &mut [u8]) {
            d.fill(0x42);
        }
        fn write(&mut self, _o: u64, d: &[u8]) {
            self.0.extend_from_slice(d);
        }
    }

    #[test]
    fn exits_are_dispatched_to_buses() {
        let buses = Buses::default();
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        buses.pio.insert(0x3f8, 8, dev.clone()).unwrap();
        buses.mmio.insert(0xd000_0000, 0x1000, dev.clone()).unwrap();
        let mut d = [0u8; 1];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x3f8, &mut d), &buses),
            VcpuAction::Continue
        );
        assert_eq!(d, [0x42]);
        handle_exit(VcpuExit::IoIn(0x80, &mut d), &buses);
        assert_eq!(d, [0xff], "unclaimed ports float high");
        handle_exit(VcpuExit::IoOut(0x3f9, b"a"), &buses);
        handle_exit(VcpuExit::MmioWrite(0xd000_0010, b"bc"), &buses);
        assert_eq!(dev.lock().unwrap().0, b"abc");
        let mut m = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut m), &buses);
        assert_eq!(m, [0xff; 4]);
    }

    #[test]
    fn stop_exits_map_to_reasons() {
        let buses = Buses::default();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &buses),
            VcpuAction::Stop(ExitReason::TripleFault)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &buses
            ),
            VcpuAction::Stop(ExitReason::PowerOff)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &buses),
            VcpuAction::Stop(ExitReason::GuestReset)
        );
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &buses),
            VcpuAction::Stop(ExitReason::VcpuError(_))
        ));
    }
}
