//! `--serial socket=PATH`: the guest console on a unix socket that a client
//! (the way `virtctl console` reaches a VM) attaches to and detaches from at
//! any time. Guest output goes into a bounded buffer that a console thread
//! drains to the client; with no client, or a slow one, the oldest output
//! is dropped, so the vCPU writing to the UART never waits. What the client
//! types goes to the UART's receive FIFO.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::serial::SerialConsole;
use crate::sync::lock;

/// Guest output kept while no client reads it.
const BUFFER: usize = 64 << 10;

/// The buffer between the UART and the console thread.
struct Pipe {
    buf: Mutex<VecDeque<u8>>,
    wake: EventFd,
    dropped: AtomicU64,
}

/// The UART's output side: appends to the buffer and returns at once.
pub struct SocketOutput(Arc<Pipe>);

/// The console socket and its thread; stopped and removed on drop.
pub struct ConsoleSocket {
    path: PathBuf,
    pipe: Arc<Pipe>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A writer for the UART and the pipe it feeds, for [`ConsoleSocket::start`].
pub fn output() -> std::io::Result<(SocketOutput, Arc<PipeHandle>)> {
    let pipe = Arc::new(Pipe {
        buf: Mutex::new(VecDeque::new()),
        wake: EventFd::new(libc::EFD_NONBLOCK)?,
        dropped: AtomicU64::new(0),
    });
    Ok((SocketOutput(pipe.clone()), Arc::new(PipeHandle(pipe))))
}

/// The console thread's end of the pipe.
pub struct PipeHandle(Arc<Pipe>);

impl Write for SocketOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock(&self.0.buf);
        buf.extend(data);
        let over = buf.len().saturating_sub(BUFFER);
        if over > 0 {
            buf.drain(..over);
            self.0.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
        drop(buf);
        let _ = self.0.wake.write(1);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ConsoleSocket {
    /// Serves the console on `path` (mode 0600; a stale socket is replaced)
    /// for the UART `serial`, whose output feeds `pipe`.
    pub fn start(
        path: &Path,
        pipe: &PipeHandle,
        serial: Arc<Mutex<SerialConsole>>,
    ) -> std::io::Result<Self> {
        if std::fs::symlink_metadata(path).is_ok() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    ErrorKind::AddrInUse,
                    "in use by a running process",
                ));
            }
            std::fs::remove_file(path)?;
        }
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener = listener?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pipe.0.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("console-socket".into())
            .spawn(move || serve(&listener, &p, &serial, &s))?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            pipe: pipe.0.clone(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.pipe.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let dropped = self.pipe.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            log::info!("console socket: {dropped} bytes of guest output were dropped (no client, or a slow one)");
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &UnixListener, pipe: &Pipe, serial: &Mutex<SerialConsole>, stop: &AtomicBool) {
    let mut client: Option<UnixStream> = None;
    let mut input = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = vec![
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pipe.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if let Some(c) = &client {
            fds.push(libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        let _ = pipe.wake.read();
        if let Ok((c, _)) = listener.accept() {
            // A new client takes the console over.
            if c.set_nonblocking(true).is_ok() {
                client = Some(c);
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let mut gone = false;
        match c.read(&mut input) {
            Ok(0) => gone = true,
            Ok(n) => feed(serial, &input[..n], stop),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => gone = true,
        }
        let mut buf = lock(&pipe.buf);
        while !gone && !buf.is_empty() {
            let (head, _) = buf.as_slices();
            match c.write(head) {
                Ok(n) => {
                    buf.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => gone = true,
            }
        }
        drop(buf);
        if gone {
            client = None;
        }
    }
}

/// Queues client input for the guest, waiting while the UART FIFO is full.
fn feed(serial: &Mutex<SerialConsole>, mut bytes: &[u8], stop: &AtomicBool) {
    while !bytes.is_empty() && !stop.load(Ordering::SeqCst) {
        let taken = lock(serial).enqueue_input(bytes);
        bytes = &bytes[taken..];
        if !bytes.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_bounded_kept_for_a_late_client_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let (mut out, pipe) = output().unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            irq,
            Box::new(std::io::sink()),
        )));
        let sock = ConsoleSocket::start(&path, &pipe, serial).unwrap();
        // No client: 200 KiB of output returns at once, the last 64 KiB are kept.
        let chunk: Vec<u8> = (0..=255u8).cycle().take(200 << 10).collect();
        let t = std::time::Instant::now();
        assert_eq!(out.write(&chunk).unwrap(), chunk.len());
        assert!(t.elapsed() < std::time::Duration::from_millis(200));
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = vec![0u8; BUFFER];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, chunk[chunk.len() - BUFFER..]);
        // Live output reaches the attached client.
        out.write_all(b"hello\n").unwrap();
        let mut line = [0u8; 6];
        c.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hello\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(sock);
        assert!(!path.exists());
    }

    use std::os::unix::fs::PermissionsExt;
}
