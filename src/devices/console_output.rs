//! Where guest console output goes, without ever blocking a vCPU.
//!
//! The UART writes into a [`ConsoleWriter`], which only copies bytes into a
//! bounded in-memory buffer; a writer thread (`console-out`) drains the
//! buffer into the sink (stdout today; any `Write` can be a sink). When the
//! sink is slower than the guest (a log pipe nobody reads), bytes past the
//! bound are dropped and counted, and the count is logged at the end. The
//! sink may block for ever: [`ConsoleOutput::finish`] waits for the drain
//! only until its deadline, then leaves the writer thread behind.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sync::{lock, wait_timeout};

/// Guest output held while the sink is slow: 1 MiB.
pub const CONSOLE_BUFFER_BYTES: usize = 1 << 20;
/// Largest chunk handed to the sink in one write.
const CHUNK: usize = 64 << 10;
/// How long `finish` waits for buffered output to reach the sink.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// Bytes dropped because the buffer was full or the sink failed.
    dropped: u64,
    /// No more output will come; the writer exits once the buffer is empty.
    closed: bool,
    /// The sink failed; everything after is dropped.
    broken: bool,
    /// The writer thread is out of its loop (signalled on `done_cv`).
    done: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    done_cv: Condvar,
    capacity: usize,
}

/// Marks the writer thread done when dropped (also on a panic in the sink).
struct DoneGuard<'a>(&'a Shared);

impl Drop for DoneGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).done = true;
        self.0.done_cv.notify_all();
    }
}

/// The UART's side: a `Write` that never blocks on the sink.
#[derive(Clone)]
pub struct ConsoleWriter(Arc<Shared>);

impl Write for ConsoleWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut s = lock(&self.0.state);
        let room = if s.broken || s.closed {
            0
        } else {
            self.0.capacity.saturating_sub(s.buf.len())
        };
        let take = room.min(data.len());
        s.buf.extend(&data[..take]);
        s.dropped += (data.len() - take) as u64;
        drop(s);
        if take > 0 {
            self.0.cv.notify_one();
        }
        // The guest's bytes are accepted either way: a UART never stalls.
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink and the thread that drains guest output into it.
pub struct ConsoleOutput {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleOutput {
    /// Output to this process's stdout (a duplicate of fd 1, written
    /// unbuffered and without Rust's stdout lock); with no stdout (fd 1
    /// closed), output is discarded.
    pub fn stdout() -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match std::io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => Box::new(std::fs::File::from(fd)),
            Err(e) => {
                log::warn!("console: no stdout ({e}); guest output is discarded");
                Box::new(std::io::sink())
            }
        };
        Self::new(sink, CONSOLE_BUFFER_BYTES)
    }

    /// Output to `sink`, buffering at most `capacity` bytes.
    pub fn new(sink: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            done_cv: Condvar::new(),
            capacity,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("console-out".into())
            .spawn(move || drain(&s, sink))?;
        Ok(ConsoleOutput {
            shared,
            thread: Some(thread),
        })
    }

    /// A writer for the UART.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter(self.shared.clone())
    }

    /// Bytes dropped so far.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.state).dropped
    }

    /// Stops taking output and waits up to `deadline` for the buffer to
    /// reach the sink; what is still buffered then counts as dropped.
    /// Returns the number of bytes dropped in all. Idempotent.
    pub fn finish(&mut self, deadline: Duration) -> u64 {
        lock(&self.shared.state).closed = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let end = Instant::now() + deadline;
            let mut s = lock(&self.shared.state);
            while !s.done {
                let Some(left) = end.checked_duration_since(Instant::now()) else {
                    break;
                };
                s = wait_timeout(&self.shared.done_cv, s, left);
            }
            let done = s.done;
            drop(s);
            if done {
                let _ = t.join();
            }
            // Otherwise the sink is blocked: the thread is left behind.
        }
        let mut s = lock(&self.shared.state);
        let left = s.buf.len() as u64;
        s.buf.clear();
        s.dropped += left;
        s.dropped
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        let dropped = self.finish(DRAIN_DEADLINE);
        if dropped > 0 {
            log::warn!(
                "console: {dropped} bytes of guest output were dropped: the console output was not read fast enough"
            );
        }
    }
}

fn drain(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let _done = DoneGuard(shared);
    loop {
        let chunk: Vec<u8> = {
            let mut s = lock(&shared.state);
            while s.buf.is_empty() && !s.closed {
                s = shared.cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.buf.is_empty() {
                return;
            }
            let n = s.buf.len().min(CHUNK);
            s.buf.drain(..n).collect()
        };
        if let Err(e) = sink.write_all(&chunk).and_then(|()| sink.flush()) {
            let mut s = lock(&shared.state);
            log::warn!("console: cannot write guest output ({e}); dropping the rest");
            s.broken = true;
            s.dropped += chunk.len() as u64 + s.buf.len() as u64;
            s.buf.clear();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A sink that takes one chunk per message on `go`, recording the bytes.
    struct Gated {
        go: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.go.recv().is_err() {
                // The test hung up: block as a full pipe would.
                std::thread::sleep(Duration::from_secs(3600));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_writer_and_drops_past_the_bound() {
        let (tx, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Gated {
            go: rx,
            got: got.clone(),
        };
        let mut out = ConsoleOutput::new(Box::new(sink), 100).unwrap();
        let mut w = out.writer();
        let start = Instant::now();
        for _ in 0..1000 {
            assert_eq!(w.write(b"0123456789").unwrap(), 10);
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "writes never wait"
        );
        // The writer thread took at most one chunk and is stuck writing it;
        // at most 100 more bytes are buffered, the rest are dropped.
        let dropped = out.dropped();
        assert!(
            (10_000 - 200..=10_000 - 100).contains(&dropped),
            "{dropped}"
        );
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        let total = out.finish(Duration::from_secs(2));
        let got = got.lock().unwrap().clone();
        assert_eq!(
            total + got.len() as u64,
            10_000,
            "every byte written or counted"
        );
        assert!(got.starts_with(b"0123456789"), "in order");
    }

    #[test]
    fn finish_gives_up_on_a_sink_that_never_returns() {
        let (tx, rx) = mpsc::channel();
        let sink = Gated {
            go: rx,
            got: Arc::default(),
        };
        let mut out = ConsoleOutput::new(Box::new(sink), 1 << 10).unwrap();
        out.writer().write_all(b"stuck").unwrap();
        drop(tx);
        let start = Instant::now();
        assert_eq!(
            out.finish(Duration::from_millis(200)),
            0,
            "the chunk was taken"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        out.writer().write_all(b"late").unwrap();
        assert_eq!(out.dropped(), 4, "output after finish is dropped");
    }

    #[test]
    fn everything_reaches_a_sink_that_keeps_up() {
        let sink = crate::devices::SharedSink::default();
        let mut out = ConsoleOutput::new(Box::new(sink.clone()), 1 << 20).unwrap();
        let mut w = out.writer();
        for b in b"hello\n" {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(out.finish(Duration::from_secs(2)), 0);
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn a_failing_sink_drops_and_counts() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::EPIPE))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = ConsoleOutput::new(Box::new(Broken), 1 << 10).unwrap();
        out.writer().write_all(b"abc").unwrap();
        let start = Instant::now();
        while out.dropped() < 3 && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
        out.writer().write_all(b"de").unwrap();
        assert_eq!(out.finish(Duration::from_secs(1)), 5);
    }
}
