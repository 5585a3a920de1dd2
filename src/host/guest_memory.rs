//! Whether the host can provide guest RAM: free 2 MiB huge pages for
//! `--hugepages`, otherwise available memory (VFIO pins every page, so RAM
//! the host does not have ends in the OOM killer, not in an error).

use super::checks::{sys_text, HostError, HostPaths, HUGEPAGE_2M};
use crate::bounded::{read_text, Kind, PROCFS_MAX};

/// Free 2 MiB huge pages (the size `--hugepages` backs guest RAM with).
const FREE_HUGEPAGES_2M: &str = "kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// A `/proc/meminfo` field in bytes (the file gives kB).
fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    kb.checked_mul(1024)
}

/// Checks that the host can provide `guest_memory` bytes of guest RAM:
/// free 2 MiB huge pages with `hugepages`, otherwise MemAvailable (VFIO
/// pins every 4 KiB page, so RAM the host does not have ends in the OOM
/// killer, not in an error). A kernel without MemAvailable passes.
pub fn check_host_memory(
    p: &HostPaths,
    guest_memory: u64,
    hugepages: bool,
) -> Result<(), HostError> {
    if hugepages {
        // No such file: this host has no 2 MiB huge pages at all.
        let free: u64 = sys_text(&p.sys.join(FREE_HUGEPAGES_2M))
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        if free.saturating_mul(HUGEPAGE_2M) < guest_memory {
            return Err(HostError::HugePagesShort {
                need: guest_memory,
                free,
            });
        }
        return Ok(());
    }
    let path = p.proc.join("meminfo");
    let meminfo = read_text(&path, PROCFS_MAX, Kind::Pseudo)
        .map_err(|source| HostError::Sysfs { path, source })?;
    match meminfo_bytes(&meminfo, "MemAvailable") {
        Some(available) if available < guest_memory => Err(HostError::MemoryShort {
            need: guest_memory,
            available,
        }),
        _ => Ok(()),
    }
}
