//! Descriptors passed on the API socket (SCM_RIGHTS), as Kata's clh driver
//! sends a tap with `vm.add-net`. tiny_http reads its streams with plain
//! `read`, which drops ancillary data, so vflaunch owns the public socket:
//! each connection is read with `recvmsg` up to the end of the first
//! request's headers, collecting any descriptors; they go into a
//! [`FdMailbox`] and the request reaches tiny_http (on a socket in a private
//! 0700 directory) with one more header, [`FD_HEADER`], naming the mailbox
//! entry. After that the connection is relayed byte for byte both ways;
//! descriptors on later requests of a keep-alive connection are closed.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::sync::lock;

/// The header that carries a mailbox entry to the request handler.
pub const FD_HEADER: &str = "X-Vflaunch-Fds";
/// Longest request head read before relaying (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Descriptors taken from one message; more are closed by the kernel.
const MAX_FDS: usize = 8;
/// Mailbox entries kept for handlers that have not taken them.
const MAX_ENTRIES: usize = 64;
/// Connections relayed at once.
const MAX_CONNS: usize = 64;
/// How long a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors waiting for the handler of the request they came with.
#[derive(Default)]
pub struct FdMailbox(Mutex<(u64, BTreeMap<u64, Fds>)>);

/// The descriptors of one request.
type Fds = Vec<Arc<OwnedFd>>;

impl FdMailbox {
    /// Keeps `fds`; returns the entry's number. The oldest entry goes when full.
    pub fn put(&self, fds: Vec<OwnedFd>) -> u64 {
        let mut m = lock(&self.0);
        let id = m.0;
        m.0 += 1;
        if m.1.len() >= MAX_ENTRIES {
            m.1.pop_first();
        }
        m.1.insert(id, fds.into_iter().map(Arc::new).collect());
        id
    }

    /// Takes entry `id` (empty if there is none).
    pub fn take(&self, id: u64) -> Vec<Arc<OwnedFd>> {
        lock(&self.0).1.remove(&id).unwrap_or_default()
    }
}

/// Reads from `s` with the descriptors that come along.
fn recv(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, which is ours to overwrite.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    for fd in raw.iter().take(nfds) {
        // SAFETY: recvmsg gave us these descriptors; nothing else owns them.
        fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
    }
    Ok(n)
}

/// The head of the first request with [`FD_HEADER`] after the request line.
fn inject(head: &[u8], id: &str) -> Vec<u8> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .map_or(head.len(), |p| p + 2);
    let mut out = head[..line_end].to_vec();
    out.extend_from_slice(format!("{FD_HEADER}: {id}\r\n").as_bytes());
    out.extend_from_slice(&head[line_end..]);
    out
}

fn relay(
    client: UnixStream,
    upstream: &std::path::Path,
    mailbox: &FdMailbox,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let mut head = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match recv(&client, &mut buf, &mut fds)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.is_empty() {
        return Ok(());
    }
    client.set_read_timeout(None)?;
    let mut up = UnixStream::connect(upstream)?;
    // Always injected, so a client cannot name another request's entry.
    let id = if fds.is_empty() {
        "none".to_string()
    } else {
        log::debug!("api: {} descriptor(s) came with a request", fds.len());
        mailbox.put(fds).to_string()
    };
    head = inject(&head, &id);
    up.write_all(&head)?;
    let (mut up_r, mut client_w) = (up.try_clone()?, client.try_clone()?);
    let back = std::thread::Builder::new()
        .name("api-relay".into())
        .spawn(move || {
            let _ = std::io::copy(&mut up_r, &mut client_w);
            let _ = client_w.shutdown(std::net::Shutdown::Write);
        })?;
    loop {
        let mut later = Vec::new();
        let n = match recv(&client, &mut buf, &mut later) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if !later.is_empty() {
            log::warn!("api: descriptors on a later request of a connection are ignored: send them on a connection of their own");
        }
        if n == 0 || up.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up.shutdown(std::net::Shutdown::Write);
    let _ = back.join();
    Ok(())
}

/// The public side: accepts clients and relays each on a thread of its own.
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relays connections on `public` to tiny_http on `upstream`.
    pub fn start(
        public: UnixListener,
        upstream: PathBuf,
        mailbox: Arc<FdMailbox>,
    ) -> std::io::Result<Self> {
        public.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let conns = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || accept_loop(&public, &upstream, &mailbox, &s, &conns))?;
        Ok(Relay {
            stop,
            thread: Some(thread),
        })
    }
}

fn accept_loop(
    public: &UnixListener,
    upstream: &std::path::Path,
    mailbox: &Arc<FdMailbox>,
    stop: &AtomicBool,
    conns: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: public.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok((client, _)) = public.accept() else {
            continue;
        };
        if conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS
            || client.set_nonblocking(false).is_err()
        {
            conns.fetch_sub(1, Ordering::SeqCst);
            log::warn!("api: too many connections; one was closed");
            continue;
        }
        let (up, mb, n) = (upstream.to_path_buf(), mailbox.clone(), conns.clone());
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                if let Err(e) = relay(client, &up, &mb) {
                    log::debug!("api: connection ended: {e}");
                }
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            conns.fetch_sub(1, Ordering::SeqCst);
            log::warn!("api: cannot start a connection thread");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_after_the_request_line_and_mailbox_is_bounded() {
        let h = inject(b"PUT /api/v1/vm.add-net HTTP/1.1\r\nHost: x\r\n\r\n{}", "7");
        assert_eq!(
            h,
            b"PUT /api/v1/vm.add-net HTTP/1.1\r\nX-Vflaunch-Fds: 7\r\nHost: x\r\n\r\n{}".to_vec()
        );
        let m = FdMailbox::default();
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let first = m.put(vec![null()]);
        for _ in 0..MAX_ENTRIES {
            m.put(vec![null()]);
        }
        assert!(m.take(first).is_empty(), "the oldest entry went");
        assert_eq!(m.take(first + 1).len(), 1);
        assert!(m.take(first + 1).is_empty(), "taken once");
    }
}
