//! The filters on real threads: what each kind may and may not do, and that
//! the enforcing mode stops the process naming the syscall.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use super::*;

/// Runs `f` on a fresh thread whose filter is `kind` with EPERM on a mismatch.
fn filtered<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        apply_with(kind, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn vcpu_threads_may_seed_a_hash_map() {
    // A virtio device is activated on the vCPU thread that wrote DRIVER_OK;
    // vsock's Mux builds HashMaps there, whose RandomState calls getrandom.
    let (got, len) = filtered(ThreadKind::Vcpu, || {
        let mut buf = [0u8; 16];
        // SAFETY: getrandom writes at most buf.len() bytes into buf.
        let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        let map: std::collections::HashMap<u32, u32> = [(1, 2)].into_iter().collect();
        (got, map.len())
    });
    assert_eq!(got, 16, "getrandom passes the vCPU filter");
    assert_eq!(len, 1);
}

#[test]
fn vcpu_threads_cannot_open_exec_or_make_sockets() {
    let (mut rx, mut tx) = {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the fds are fresh and owned by these Files from here on.
        unsafe {
            (
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]),
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]),
            )
        }
    };
    let wfd = tx.as_raw_fd();
    let (open, socket, write, run, fionread, mmap_exec) = filtered(ThreadKind::Vcpu, move || {
        let open = errno_of(std::fs::File::open("/etc/hostname"));
        let socket = errno_of(std::os::unix::net::UnixStream::pair());
        let write = tx.write_all(b"ok").is_ok();
        // SAFETY: ioctl on our own pipe; KVM_RUN on it fails with ENOTTY if allowed.
        let run = unsafe { libc::ioctl(wfd, KVM_RUN() as _) };
        let run = (run < 0)
            .then(|| std::io::Error::last_os_error().raw_os_error())
            .flatten();
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on our pipe writes one int.
        let r = unsafe { libc::ioctl(wfd, libc::FIONREAD, &mut n) };
        let fionread = (r < 0)
            .then(|| std::io::Error::last_os_error().raw_os_error())
            .flatten();
        // SAFETY: an anonymous mapping request; refused or mapped and left.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let mmap_exec = (p == libc::MAP_FAILED)
            .then(|| std::io::Error::last_os_error().raw_os_error())
            .flatten();
        (open, socket, write, run, fionread, mmap_exec)
    });
    assert_eq!(open, Some(libc::EPERM), "open is not for vCPUs");
    assert_eq!(socket, Some(libc::EPERM), "no sockets");
    assert!(write, "eventfd/console writes are allowed");
    assert_eq!(
        run,
        Some(libc::ENOTTY),
        "KVM_RUN passes the filter (the pipe refuses it)"
    );
    assert_eq!(
        fionread,
        Some(libc::EPERM),
        "other ioctls are filtered by number"
    );
    assert_eq!(mmap_exec, Some(libc::EPERM), "no executable mappings");
    let mut got = [0u8; 2];
    rx.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ok");
}

#[test]
fn api_threads_talk_but_do_not_open_files() {
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (open, sent) = filtered(ThreadKind::Api, move || {
        let mut a = a;
        (
            errno_of(std::fs::File::open("/etc/hostname")),
            a.write_all(b"hi").is_ok(),
        )
    });
    assert_eq!(open, Some(libc::EPERM));
    assert!(sent);
    let mut got = [0u8; 2];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");
}

/// Run as a child by the test below: enforce, then break the vCPU list.
#[test]
#[ignore = "run by enforcing_mode_stops_the_process_naming_the_syscall"]
fn child_breaks_the_vcpu_filter() {
    if std::env::var_os("VFLAUNCH_SECCOMP_CHILD").is_none() {
        return;
    }
    set_mode(Mode::Enforce).unwrap();
    std::thread::spawn(|| {
        apply(ThreadKind::Vcpu).unwrap();
        let _ = std::fs::File::open("/etc/hostname");
    })
    .join()
    .unwrap();
    unreachable!("the filter let open through");
}

#[test]
fn enforcing_mode_stops_the_process_naming_the_syscall() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::child_breaks_the_vcpu_filter",
            "--ignored",
            "--nocapture",
        ])
        .env("VFLAUNCH_SECCOMP_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(crate::error::exit_code::VMM),
        "{stderr}"
    );
    let nr = libc::SYS_openat;
    assert!(
        stderr.contains(&format!(
            "seccomp: a thread made syscall {nr} outside its filter"
        )),
        "{stderr}"
    );
    assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
    assert!("yes".parse::<Mode>().is_err());
}

#[test]
fn device_threads_join_unix_sockets_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vsock_1024");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (unix, inet, open) = filtered(ThreadKind::Device, move || {
        let unix = std::os::unix::net::UnixStream::connect(&path).is_ok();
        let inet = errno_of(std::net::TcpListener::bind("127.0.0.1:0"));
        (unix, inet, errno_of(std::fs::File::open("/etc/hostname")))
    });
    assert!(unix, "vsock reaches unix sockets");
    assert_eq!(inet, Some(libc::EPERM), "no IP sockets");
    assert_eq!(
        open,
        Some(libc::EPERM),
        "images are opened before the guest runs"
    );
}
