//! Guest RAM: one anonymous mapping per RAM range of the [`GuestLayout`].
//! Where RAM lives is the layout's business; this module only allocates.
//!
//! Without `--hugepages` the mappings are advised for transparent huge
//! pages (`MADV_HUGEPAGE`, as qemu and Cloud Hypervisor do): where the host
//! has free 2 MiB blocks, one fault, one pin and one IOMMU and nested-paging
//! entry cover 2 MiB instead of 4 KiB.

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::GuestLayout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// Not enough huge pages reserved.
    #[error("cannot allocate {0} MiB of guest memory from 2 MiB huge pages: reserve them first (echo {1} > /proc/sys/vm/nr_hugepages) or drop --hugepages")]
    HugePages(u64, u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The regions could not be assembled (a bug in the layout).
    #[error("invalid guest memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
}

/// Allocates guest RAM for `layout`, from 2 MiB huge pages if `hugepages`.
/// Huge pages are reserved at mmap time, so a shortage fails here, not in the guest.
pub fn create_guest_memory(
    layout: &GuestLayout,
    hugepages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size: u64 = layout.ram().iter().map(|w| w.size).sum();
    let mut regions = Vec::new();
    for w in layout.ram() {
        let flags = libc::MAP_ANONYMOUS
            | libc::MAP_PRIVATE
            | if hugepages {
                libc::MAP_HUGETLB
            } else {
                libc::MAP_NORESERVE
            };
        let mapping = MmapRegionBuilder::new(w.size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(flags)
            .with_hugetlbfs(hugepages)
            .build()
            .map_err(|e| {
                if hugepages {
                    MemoryError::HugePages(size >> 20, size.div_ceil(2 << 20), e)
                } else {
                    MemoryError::Allocate(size >> 20, e)
                }
            })?;
        if !hugepages {
            advise_huge_pages(&mapping);
        }
        // The layout's ranges never overlap and never wrap, so the region is valid.
        let region = GuestRegionMmap::new(mapping, GuestAddress(w.start)).ok_or(
            MemoryError::Layout(vm_memory::GuestRegionCollectionError::NoMemoryRegion),
        )?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

/// Asks the host for transparent huge pages behind `mapping`. Advice only:
/// a host without them (or with them set to `never`) keeps 4 KiB pages.
fn advise_huge_pages(mapping: &vm_memory::mmap::MmapRegion) {
    // SAFETY: the range is exactly the live anonymous mapping `mapping` owns;
    // MADV_HUGEPAGE changes only how the kernel backs it, not its contents.
    let r = unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), libc::MADV_HUGEPAGE) };
    if r != 0 {
        log::debug!(
            "guest RAM stays in 4 KiB pages: madvise(MADV_HUGEPAGE): {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn creates_one_region_per_ram_range() {
        let m = create_guest_memory(&GuestLayout::new(64 << 20), false).unwrap();
        assert_eq!(m.num_regions(), 1);
        // A guest above 3 GiB: two regions, the upper one at 4 GiB. NORESERVE
        // keeps this cheap; only the touched pages are allocated.
        let m = create_guest_memory(&GuestLayout::new(4 << 30), false).unwrap();
        assert_eq!(m.num_regions(), 2);
        m.write_obj(0x5au8, GuestAddress((5 << 30) - 1)).unwrap();
        assert!(
            m.write_obj(0u8, GuestAddress(3 << 30)).is_err(),
            "the hole is not RAM"
        );
    }

    /// The VmFlags of the mapping that starts at `addr`, from /proc/self/smaps.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.next()?;
        lines
            .take_while(|l| !l.contains('-') || l.starts_with("VmFlags"))
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .map(str::to_string)
    }

    #[test]
    fn ram_without_hugetlb_is_advised_for_transparent_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            println!("SKIPPED: this kernel has no transparent huge pages");
            return;
        }
        let m = create_guest_memory(&GuestLayout::new(64 << 20), false).unwrap();
        let host = m.get_host_address(GuestAddress(0)).unwrap() as usize;
        let flags = vm_flags(host).expect("guest RAM is in /proc/self/smaps");
        // "hg": the mapping carries MADV_HUGEPAGE.
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "VmFlags:{flags}"
        );
    }

    fn free_hugepages() -> u64 {
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn hugepages_succeed_or_fail_up_front_with_a_hint() {
        let size = 64 << 20;
        let layout = GuestLayout::new(size);
        if free_hugepages() >= 32 {
            let m = create_guest_memory(&layout, true).unwrap();
            m.write_obj(0xabu8, GuestAddress(size - 1)).unwrap();
            assert_eq!(m.num_regions(), 1);
        } else {
            let err = create_guest_memory(&layout, true).unwrap_err();
            assert!(matches!(err, MemoryError::HugePages(64, 32, _)), "{err}");
            assert!(err.to_string().contains("nr_hugepages"));
        }
    }
}
