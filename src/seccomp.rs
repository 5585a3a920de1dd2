//! Syscall filters (seccomp-bpf, with the `seccompiler` crate), one allow
//! list per kind of thread, installed by each thread on itself before it
//! handles anything from the guest or from a client:
//!
//! - vCPU threads (guest exits, trapped PCI/MSI-X/BAR accesses) get about 25
//!   syscalls: `KVM_RUN` and the few other ioctls an exit may need, filtered
//!   by request number; the VFIO region reads and writes; eventfd writes;
//!   memory management without `PROT_EXEC`. They never open, exec, clone or
//!   create sockets.
//! - API request threads (outside input) get what HTTP on a unix socket and
//!   thread start-up need, and still never open files or exec.
//!
//! `--seccomp true` (the default) stops the process on a syscall outside the
//! list, naming it on stderr; `log` only logs it (kernel audit log);
//! `false` installs nothing.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

/// What `--seccomp` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Stop on a syscall outside the list.
    #[default]
    Enforce,
    /// Log it and let it through.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "true" => Ok(Mode::Enforce),
            "log" => Ok(Mode::Log),
            "false" => Ok(Mode::Off),
            _ => Err(format!("{s:?}: use true, false or log")),
        }
    }
}

/// The kinds of thread with a list of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs a vCPU.
    Vcpu,
    /// Handles one API request.
    Api,
    /// Runs the virtio devices (guest queues, disk images, taps, vsock sockets).
    Device,
}

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a bug in the list).
    #[error("cannot build the {0:?} syscall filter")]
    Build(ThreadKind, #[source] seccompiler::BackendError),
    /// The kernel refused it.
    #[error("cannot install the {0:?} syscall filter")]
    Install(ThreadKind, #[source] seccompiler::Error),
    /// The kernel has no seccomp filters.
    #[error("the host kernel has no seccomp filters (CONFIG_SECCOMP_FILTER): pass --seccomp false to run without syscall filters")]
    Unsupported,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the process-wide mode, once, before any thread installs a filter;
/// fails up front when filters are asked for and the kernel has none.
pub fn set_mode(mode: Mode) -> Result<(), SeccompError> {
    // SAFETY: PR_GET_SECCOMP takes no pointer; it fails with EINVAL on a
    // kernel without seccomp.
    if mode != Mode::Off && unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } < 0 {
        return Err(SeccompError::Unsupported);
    }
    let _ = MODE.set(mode);
    if mode == Mode::Enforce {
        install_sigsys_handler();
    }
    Ok(())
}

fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::Off)
}

const KVMIO: u32 = 0xae;
const VFIO_TYPE: u32 = b';' as u32;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, 110);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, 111);

fn cond(
    arg: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
}

/// Rules allowing `nr` only when argument `arg` is one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|v| SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]))
        .collect()
}

/// mmap/mprotect without PROT_EXEC.
fn no_exec(arg: u8) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let prot_exec = libc::PROT_EXEC as u64;
    Ok(vec![SeccompRule::new(vec![cond(
        arg,
        SeccompCmpOp::MaskedEq(prot_exec),
        0,
    )?])?])
}

/// Syscalls every filtered thread needs: memory, locks, signals, time, exit.
const COMMON: [libc::c_long; 21] = [
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_exit,
    // The SIGSYS handler ends the process from the offending thread.
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
];

/// The allow list of `kind`.
fn rules(kind: ThreadKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut r: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|n| (*n, Vec::new())).collect();
    r.insert(libc::SYS_mmap, no_exec(2)?);
    r.insert(libc::SYS_mprotect, no_exec(2)?);
    match kind {
        ThreadKind::Vcpu => {
            r.insert(libc::SYS_pread64, Vec::new());
            r.insert(libc::SYS_pwrite64, Vec::new());
            // The driver's DRIVER_OK write activates a virtio device on the
            // vCPU thread; a HashMap built there (vsock's Mux) seeds its
            // RandomState with getrandom.
            r.insert(libc::SYS_getrandom, Vec::new());
            let ioctls = [
                KVM_RUN(),
                KVM_GET_REGS(),
                KVM_SET_GSI_ROUTING(),
                KVM_IRQFD(),
                KVM_SET_USER_MEMORY_REGION(),
                // A moved virtio BAR takes its notify ioeventfds along.
                KVM_IOEVENTFD(),
                VFIO_DEVICE_SET_IRQS(),
                VFIO_DEVICE_RESET(),
            ];
            let ioctls: Vec<u64> = ioctls.to_vec();
            r.insert(libc::SYS_ioctl, one_of(1, &ioctls)?);
        }
        ThreadKind::Device => {
            for n in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_poll,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_preadv,
                libc::SYS_pwritev,
                libc::SYS_readv,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_fallocate,
                libc::SYS_getrandom,
                libc::SYS_accept,
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_recvmsg,
                libc::SYS_sendto,
                libc::SYS_sendmsg,
                libc::SYS_shutdown,
                libc::SYS_getsockopt,
                libc::SYS_setsockopt,
                libc::SYS_fstat,
                libc::SYS_newfstatat,
                libc::SYS_statx,
            ] {
                r.insert(n, Vec::new());
            }
            // vsock joins unix sockets only.
            r.insert(libc::SYS_socket, one_of(0, &[libc::AF_UNIX as u64])?);
            r.insert(
                libc::SYS_ioctl,
                one_of(1, &[libc::FIONBIO, libc::FIONREAD])?,
            );
        }
        ThreadKind::Api => {
            for n in [
                libc::SYS_recvfrom,
                libc::SYS_recvmsg,
                libc::SYS_sendto,
                libc::SYS_sendmsg,
                libc::SYS_shutdown,
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_getrandom,
                libc::SYS_set_robust_list,
                libc::SYS_rseq,
                libc::SYS_sched_getaffinity,
                libc::SYS_prctl,
                libc::SYS_ioctl,
            ] {
                r.insert(n, Vec::new());
            }
        }
    }
    Ok(r)
}

/// The compiled filter of `kind`; on a mismatch it takes `action`.
fn program(kind: ThreadKind, action: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(kind).map_err(|e| SeccompError::Build(kind, e))?,
        action,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Build(kind, e))?;
    filter.try_into().map_err(|e| SeccompError::Build(kind, e))
}

/// Installs `kind`'s filter on the calling thread, as the mode says.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let action = match mode() {
        Mode::Off => return Ok(()),
        Mode::Log => SeccompAction::Log,
        Mode::Enforce => SeccompAction::Trap,
    };
    apply_with(kind, action)
}

fn apply_with(kind: ThreadKind, action: SeccompAction) -> Result<(), SeccompError> {
    let bpf = program(kind, action)?;
    seccompiler::apply_filter(&bpf).map_err(|e| SeccompError::Install(kind, e))
}

/// SIGSYS from a filter: say which syscall, then stop the whole process
/// (a thread that made a forbidden call is compromised or buggy).
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; for seccomp traps
    // `si_syscall` (an int at byte 24 on x86_64, after the signal fields) is
    // the offending syscall number.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut digits = [0u8; 10];
    let (mut n, mut at) = (nr.unsigned_abs(), digits.len());
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [
        b"vflaunch: seccomp: a thread made syscall ",
        &digits[at..],
        b" outside its filter; stopping (--seccomp log to see every such call)\n",
    ];
    for p in parts {
        // SAFETY: write(2) is async-signal-safe; `p` is a valid buffer.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(crate::error::exit_code::VMM) };
}

fn install_sigsys_handler() {
    if let Err(e) = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys) {
        log::warn!("cannot install the SIGSYS handler: {e}");
    }
}

#[cfg(test)]
#[path = "seccomp_tests.rs"]
mod tests;
