//! Reading the small text files vflaunch takes from outside — the JSON
//! config, KubeVirt's network-info, API request bodies given by path
//! (`vflaunch api ... @FILE`), sysfs and procfs attributes — with a
//! size cap, so that `/dev/zero`, a FIFO or a runaway file ends in an error
//! instead of eating memory or blocking. Kernels and initramfs images are
//! not read through this (they are sized by guest RAM).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::format_size;

/// Cap on a `--config` file: 1 MiB.
pub const CONFIG_MAX: u64 = 1 << 20;
/// Cap on a network-info file: 1 MiB (a pod has a handful of interfaces).
pub const NETWORK_INFO_MAX: u64 = 1 << 20;
/// Cap on an API request body read from a file: 1 MiB.
pub const BODY_MAX: u64 = 1 << 20;
/// Cap on one sysfs attribute: 64 KiB (they are at most a page).
pub const SYSFS_MAX: u64 = 64 << 10;
/// Cap on a procfs file (`/proc/interrupts` grows with CPUs and IRQs): 16 MiB.
pub const PROCFS_MAX: u64 = 16 << 20;

/// Why a capped read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path is a device, FIFO, socket or directory.
    #[error("not a regular file: give the path of a file")]
    NotAFile,
    /// The file has more bytes than the cap.
    #[error("it is larger than {}, more than such a file ever needs: check the path", format_size(*.0))]
    TooLarge(u64),
    /// The file is not UTF-8 text.
    #[error("it is not UTF-8 text")]
    NotText,
    /// Opening or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How the file must look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (config, network-info): anything else is refused
    /// before a byte is read. Opened non-blocking, so a FIFO cannot hang.
    Regular,
    /// A pseudo-file (sysfs, procfs) whose reported size means nothing:
    /// only the cap applies.
    Pseudo,
}

/// Reads `path` as UTF-8 text of at most `max` bytes.
pub fn read_text(path: &Path, max: u64, kind: Kind) -> Result<String, ReadError> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if kind == Kind::Regular {
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(ReadError::NotAFile);
        }
        if meta.len() > max {
            return Err(ReadError::TooLarge(max));
        }
    }
    read_capped(&mut f, max)
}

fn read_capped(f: &mut File, max: u64) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    String::from_utf8(buf).map_err(|_| ReadError::NotText)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "{}\n").unwrap();
        assert_eq!(read_text(&p, 3, Kind::Regular).unwrap(), "{}\n");
        assert!(matches!(
            read_text(&p, 2, Kind::Regular),
            Err(ReadError::TooLarge(2))
        ));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_text(&p, 10, Kind::Regular),
            Err(ReadError::NotText)
        ));
        assert!(matches!(
            read_text(&dir.path().join("missing"), 10, Kind::Regular),
            Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_text(Path::new("/dev/zero"), CONFIG_MAX, Kind::Regular),
            Err(ReadError::NotAFile)
        ));
        assert!(matches!(
            read_text(dir.path(), CONFIG_MAX, Kind::Regular),
            Err(ReadError::NotAFile)
        ));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a FIFO with no writer would block without O_NONBLOCK.
        assert!(matches!(
            read_text(&fifo, CONFIG_MAX, Kind::Regular),
            Err(ReadError::NotAFile)
        ));
    }

    #[test]
    fn pseudo_files_stop_at_the_cap() {
        // /dev/zero never ends: the cap is what stops the read.
        assert!(matches!(
            read_text(Path::new("/dev/zero"), 4096, Kind::Pseudo),
            Err(ReadError::TooLarge(4096))
        ));
        let meminfo = read_text(Path::new("/proc/meminfo"), PROCFS_MAX, Kind::Pseudo).unwrap();
        assert!(meminfo.contains("MemTotal:"));
        let msg = ReadError::TooLarge(CONFIG_MAX).to_string();
        assert!(msg.contains("1 MiB"), "{msg}");
    }
}
