//! Guest RAM: one anonymous mapping per RAM range of the [`GuestLayout`].
//! Where RAM lives is the layout's business; this module only allocates.

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
        // The layout's ranges never overlap and never wrap, so the region is valid.
        let region = GuestRegionMmap::new(mapping, GuestAddress(w.start)).ok_or(
            MemoryError::Layout(vm_memory::GuestRegionCollectionError::NoMemoryRegion),
        )?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
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
