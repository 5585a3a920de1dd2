//! The event monitor (`--event-monitor path=PATH|fd=N`): one JSON object
//! per line in Cloud Hypervisor's shape — `timestamp` (since the VMM
//! started), `source`, `event`, `properties` — for whoever supervises the
//! VMM. Writes never block the VMM for long and never fail it: a monitor
//! that went away is dropped with one warning.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

/// Where events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTarget {
    /// A file, created or appended to.
    Path(PathBuf),
    /// A file descriptor the caller opened for us.
    Fd(RawFd),
}

/// Errors opening the event monitor.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The argument is neither `path=PATH` nor `fd=N`.
    #[error("--event-monitor {0:?}: use path=PATH or fd=N")]
    Syntax(String),
    /// The file could not be opened.
    #[error("cannot open the event monitor {0}")]
    Open(String, #[source] std::io::Error),
    /// The descriptor is not open.
    #[error("--event-monitor fd={0}: no such open file descriptor")]
    BadFd(RawFd),
}

/// Parses `path=PATH` or `fd=N`.
pub fn parse_target(s: &str) -> Result<EventTarget, EventError> {
    if let Some(p) = s.strip_prefix("path=").filter(|p| !p.is_empty()) {
        return Ok(EventTarget::Path(PathBuf::from(p)));
    }
    if let Some(n) = s.strip_prefix("fd=").and_then(|n| n.parse::<RawFd>().ok()) {
        if n >= 0 {
            return Ok(EventTarget::Fd(n));
        }
    }
    Err(EventError::Syntax(s.to_string()))
}

/// The event stream; without a target every event is only logged at debug.
pub struct EventMonitor {
    out: Option<File>,
    start: Instant,
}

impl EventMonitor {
    /// A monitor writing to `target`.
    pub fn open(target: Option<&EventTarget>) -> Result<Self, EventError> {
        let out = match target {
            None => None,
            Some(EventTarget::Path(p)) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| EventError::Open(p.display().to_string(), e))?,
            ),
            Some(EventTarget::Fd(fd)) => {
                // SAFETY: fcntl(F_GETFD) only queries the descriptor table.
                if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                    return Err(EventError::BadFd(*fd));
                }
                // SAFETY: the caller handed this descriptor to vflaunch for
                // the event stream; from here on this File owns it.
                Some(unsafe { File::from_raw_fd(*fd) })
            }
        };
        Ok(EventMonitor {
            out,
            start: Instant::now(),
        })
    }

    /// Records `event` from `source` with `properties`.
    pub fn emit(&mut self, source: &str, event: &str, properties: Option<Value>) {
        let t = self.start.elapsed();
        let line = json!({
            "timestamp": {"secs": t.as_secs(), "nanos": t.subsec_nanos()},
            "source": source,
            "event": event,
            "properties": properties,
        });
        log::debug!("event: {line}");
        if let Some(out) = self.out.as_mut() {
            let mut text = line.to_string();
            text.push('\n');
            if let Err(e) = out.write_all(text.as_bytes()) {
                log::warn!("event monitor: {e}; no more events are written");
                self.out = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_lines() {
        assert_eq!(parse_target("fd=3").unwrap(), EventTarget::Fd(3));
        assert_eq!(
            parse_target("path=/x").unwrap(),
            EventTarget::Path("/x".into())
        );
        for bad in ["", "fd=", "fd=-1", "path=", "/x", "fd=x"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            EventMonitor::open(Some(&EventTarget::Fd(987_654))),
            Err(EventError::BadFd(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let mut m = EventMonitor::open(Some(&EventTarget::Path(path.clone()))).unwrap();
        m.emit("vmm", "starting", None);
        m.emit(
            "vm",
            "device-added",
            Some(json!({"host_bdf": "0000:03:02.1"})),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "starting");
        assert_eq!(lines[1]["properties"]["host_bdf"], "0000:03:02.1");
        assert!(lines[1]["timestamp"]["nanos"].is_u64());
    }
}
