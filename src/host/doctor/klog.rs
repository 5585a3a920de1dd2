//! Hints from the kernel log (`<dev>/kmsg`, read without blocking): VFs that
//! could not be created, with the kernel parameter that fixes it, and
//! DMAR/IVRS (IOMMU) faults.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Line;
use crate::host::checks::HostPaths;

/// The most of the log that is read.
const MAX_LOG: usize = 4 << 20;
/// One read; a /dev/kmsg record is at most about 1 KiB.
const CHUNK: usize = 16 << 10;

/// Reads the log: /dev/kmsg gives one record per read until EAGAIN; a plain
/// file (tests, a saved dmesg) until EOF.
fn read_log(path: &Path) -> io::Result<String> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut all = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    while all.len() < MAX_LOG {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: records were overwritten while reading; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// A log line's message: without the /dev/kmsg `prio,seq,time,flags;`
/// header or dmesg's `[ time]` stamp. Continuation lines are None.
fn message(line: &str) -> Option<&str> {
    if line.starts_with(' ') || line.is_empty() {
        return None;
    }
    if let Some((head, msg)) = line.split_once(';') {
        if head.split(',').count() >= 3
            && head
                .split(',')
                .take(3)
                .all(|f| f.chars().all(|c| c.is_ascii_digit() || c == '-'))
        {
            return Some(msg);
        }
    }
    if let Some(rest) = line.strip_prefix('[') {
        if let Some((_, msg)) = rest.split_once("] ") {
            return Some(msg);
        }
    }
    Some(line)
}

/// A kind of log message worth a line.
struct Hint {
    check: &'static str,
    matches: fn(&str) -> bool,
    failed: bool,
    what: &'static str,
    fix: &'static str,
}

const HINTS: [Hint; 3] = [
    Hint {
        check: "kernel log: SR-IOV bus numbers",
        matches: |m| m.contains(" out of range") && m.contains("bus "),
        failed: true,
        what: "VFs could not be created: the firmware left no bus numbers for them",
        fix: "add pci=assign-busses to the kernel command line and reboot",
    },
    Hint {
        check: "kernel log: SR-IOV BAR space",
        matches: |m| m.contains("not enough MMIO resources for SR-IOV"),
        failed: true,
        what: "VFs could not be created: the firmware left no address space for their BARs",
        fix: "add pci=realloc to the kernel command line and reboot (or enable SR-IOV / Above 4G Decoding in the firmware setup)",
    },
    Hint {
        check: "kernel log: IOMMU faults",
        matches: |m| {
            m.contains("DMAR: [DMA ") || m.contains("DMAR: DRHD: handling fault") || m.contains("IO_PAGE_FAULT") || m.contains("DMAR: [INTR-REMAP")
        },
        failed: false,
        what: "a device did DMA (or sent an interrupt) the IOMMU does not allow",
        fix: "find the device in the line (its address, e.g. [02:10.0]); usually its driver or a guest misprogrammed it, or it was reset while in use",
    },
];

pub(super) fn check(p: &HostPaths, out: &mut Vec<Line>) {
    let path = p.dev.join("kmsg");
    let text = match read_log(&path) {
        Ok(t) => t,
        Err(e) => {
            out.push(Line::warn(
                "kernel log",
                format!("cannot read {}: {e}", path.display()),
                "run as root, or `sysctl kernel.dmesg_restrict=0`",
            ));
            return;
        }
    };
    let messages: Vec<&str> = text.lines().filter_map(message).collect();
    let mut found = false;
    for h in &HINTS {
        let hits: Vec<&&str> = messages.iter().filter(|m| (h.matches)(m)).collect();
        let Some(last) = hits.last() else { continue };
        found = true;
        let saw = format!(
            "{} ({} lines, last: \"{}\")",
            h.what,
            hits.len(),
            last.trim()
        );
        out.push(if h.failed {
            Line::failed(h.check, saw, h.fix)
        } else {
            Line::warn(h.check, saw, h.fix)
        });
    }
    if !found {
        out.push(Line::ok(
            "kernel log",
            format!(
                "no SR-IOV or IOMMU fault messages in {} lines",
                messages.len()
            ),
        ));
    }
}
