//! Guest RAM: one anonymous mapping per contiguous range, split around the
//! 32-bit PCI hole, and the matching e820 map.

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of guest RAM failed.
    #[error("Cannot allocate {0} MiB of guest memory")]
    Allocate(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// Not enough huge pages reserved.
    #[error("Cannot allocate {0} MiB of guest memory from 2 MiB huge pages: reserve them first (echo {1} > /proc/sys/vm/nr_hugepages) or drop --hugepages")]
    HugePages(u64, u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The regions could not be assembled (a bug in the layout).
    #[error("Invalid guest memory layout")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
}

/// The (start, size) RAM ranges for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low_end = layout::MMIO32_HOLE_START.0;
    if size <= low_end {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), low_end),
            (layout::RAM_64BIT_START, size - low_end),
        ]
    }
}

/// Allocates guest RAM, from 2 MiB huge pages if `hugepages`. Huge pages
/// are reserved at mmap time, so a shortage fails here, not in the guest.
pub fn create_guest_memory(size: u64, hugepages: bool) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let flags = libc::MAP_ANONYMOUS
            | libc::MAP_PRIVATE
            | if hugepages {
                libc::MAP_HUGETLB
            } else {
                libc::MAP_NORESERVE
            };
        let mapping = MmapRegionBuilder::new(len as usize)
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
        // The ranges never overlap and never wrap, so the region is valid.
        let region = GuestRegionMmap::new(mapping, addr).ok_or(MemoryError::Layout(
            vm_memory::GuestRegionCollectionError::NoMemoryRegion,
        ))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

/// One e820 entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved (BIOS area, ACPI tables).
    Reserved,
}

/// The e820 map for `size` bytes of RAM: (start, length, kind).
pub fn e820_map(size: u64) -> Vec<(u64, u64, E820Kind)> {
    let mut map = vec![
        (0, layout::EBDA_START.0, E820Kind::Ram),
        (
            layout::EBDA_START.0,
            0xa0000 - layout::EBDA_START.0,
            E820Kind::Reserved,
        ),
        (
            layout::BIOS_AREA_START.0,
            layout::BIOS_AREA_END.0 - layout::BIOS_AREA_START.0,
            E820Kind::Reserved,
        ),
        // Linux uses ECAM only where the firmware reserved it.
        (
            layout::PCI_ECAM_START.0,
            layout::PCI_ECAM_SIZE,
            E820Kind::Reserved,
        ),
    ];
    for (start, len) in ram_ranges(size) {
        if start.0 == 0 {
            map.push((
                layout::HIMEM_START.0,
                len - layout::HIMEM_START.0,
                E820Kind::Ram,
            ));
        } else {
            map.push((start.0, len, E820Kind::Ram));
        }
    }
    map
}

/// The end of guest RAM (exclusive) in guest-physical addresses.
pub fn ram_end(size: u64) -> u64 {
    ram_ranges(size).last().map(|(a, s)| a.0 + s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        assert_eq!(ram_end(512 << 20), 512 << 20);
    }

    #[test]
    fn large_guest_is_split_around_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
        assert_eq!(ram_end(4 << 30), 5 << 30);
    }

    #[test]
    fn e820_covers_ram_and_reserves_bios() {
        let m = e820_map(256 << 20);
        let ram: u64 = m.iter().filter(|e| e.2 == E820Kind::Ram).map(|e| e.1).sum();
        assert_eq!(
            ram,
            (256 << 20) - (layout::HIMEM_START.0 - layout::EBDA_START.0)
        );
        assert!(m
            .iter()
            .any(|e| e.0 == layout::RSDP_START.0 && e.2 == E820Kind::Reserved));
        assert!(m
            .iter()
            .any(|e| e.0 == layout::PCI_ECAM_START.0 && e.2 == E820Kind::Reserved));
        let mut sorted = m.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap in {w:?}");
        }
    }

    #[test]
    fn creates_memory() {
        use vm_memory::GuestMemoryBackend;
        let m = create_guest_memory(64 << 20, false).unwrap();
        assert_eq!(m.num_regions(), 1);
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
        use vm_memory::{Bytes, GuestMemoryBackend};
        let size = 64 << 20;
        if free_hugepages() >= 32 {
            let m = create_guest_memory(size, true).unwrap();
            m.write_obj(0xabu8, GuestAddress(size - 1)).unwrap();
            assert_eq!(m.num_regions(), 1);
        } else {
            let err = create_guest_memory(size, true).unwrap_err();
            assert!(matches!(err, MemoryError::HugePages(64, 32, _)), "{err}");
            assert!(err.to_string().contains("nr_hugepages"));
        }
    }
}
