//! Tests for the BAR map: what is mapped, what traps, and moves.

use super::*;
use crate::pci::msix::MsixCap;
use crate::testing::{MockMapper, MockVfio, W32};

fn bar(index: usize, addr: u64) -> BarInfo {
    BarInfo {
        index,
        size: 0x4000,
        is_64: true,
        prefetchable: true,
        addr,
    }
}

/// igbvf's layout: MSI-X table at BAR3+0, PBA at BAR3+0x2000, 3 vectors.
fn igbvf_msix() -> MsixCap {
    MsixCap::parse(0x70, 2, 3, 0x2003)
}

fn igbvf_map(mapper: &MockMapper) -> BarMap {
    let mock = MockVfio::igbvf();
    let regions: Vec<RegionInfo> = (0..6).map(|i| mock.region(i)).collect();
    let bars = vec![bar(0, W32), bar(3, W32 + 0x4000)];
    BarMap::new("vf", bars, &regions, Some(igbvf_msix()), &*mock, mapper).unwrap()
}

#[test]
fn only_msix_pages_trap_and_the_rest_is_mapped() {
    let m = MockMapper::default();
    let map = igbvf_map(&m);
    let bar3 = W32 + 0x4000;
    assert_eq!(
        *m.slots.lock().unwrap(),
        vec![
            (W32, 0x4000),
            (bar3 + 0x1000, 0x1000),
            (bar3 + 0x3000, 0x1000)
        ]
    );
    let traps: Vec<(usize, u64, u64)> = map
        .trapped_ranges()
        .iter()
        .map(|t| (t.bar, t.addr, t.len))
        .collect();
    assert_eq!(traps, vec![(3, bar3, 0x1000), (3, bar3 + 0x2000, 0x1000)]);
    assert_eq!(map.classify(bar3 + 0x18), Some(Trapped::MsixTable(0x18)));
    assert_eq!(map.classify(bar3 + 0x2000), Some(Trapped::Pba));
    assert_eq!(map.classify(bar3 + 0x800), Some(Trapped::Device(3, 0x800)));
    assert_eq!(map.classify(W32 - 1), None);
}

#[test]
fn a_move_takes_the_slots_along() {
    let m = MockMapper::default();
    let mut map = igbvf_map(&m);
    let new = W32 + 0x10_0000;
    let mut shadow = BarShadow::new(map.bars());
    assert!(map.proposed_moves(&shadow).is_empty(), "nothing moved yet");
    shadow.write(3, new as u32);
    shadow.write(4, 0);
    let moves = map.proposed_moves(&shadow);
    assert_eq!(
        moves,
        vec![BarMove {
            bar: 3,
            from: W32 + 0x4000,
            to: new,
            size: 0x4000
        }]
    );
    map.move_bar(&moves[0], &m).unwrap();
    assert_eq!(
        *m.moves.lock().unwrap(),
        vec![(1, new + 0x1000), (2, new + 0x3000)]
    );
    assert_eq!(map.bars()[1].addr, new);
    assert_eq!(map.trapped_ranges()[0].addr, new);
    assert_eq!(map.classify(new + 8), Some(Trapped::MsixTable(8)));
    assert!(map.proposed_moves(&shadow).is_empty());
}

#[test]
fn a_refused_move_leaves_every_slot_where_it_was() {
    let m = MockMapper::default();
    let mut map = igbvf_map(&m);
    let (old, new) = (W32 + 0x4000, W32 + 0x10_0000);
    // The first of BAR3's two slots moves, the second is refused.
    m.refuse.lock().unwrap().push(new + 0x3000);
    let mv = BarMove {
        bar: 3,
        from: old,
        to: new,
        size: 0x4000,
    };
    assert!(map.move_bar(&mv, &m).is_err());
    assert_eq!(
        m.slots.lock().unwrap()[1..],
        [(old + 0x1000, 0x1000), (old + 0x3000, 0x1000)],
        "the slot that moved went back"
    );
    assert_eq!(map.bars()[1].addr, old);
    assert_eq!(map.trapped_ranges()[0].addr, old);
    assert_eq!(map.classify(old + 8), Some(Trapped::MsixTable(8)));
}

#[test]
fn an_access_running_into_the_msix_table_never_reaches_the_device() {
    // The table at BAR3+0x800, in the middle of its trapped page.
    let mock = MockVfio::igbvf();
    let regions: Vec<RegionInfo> = (0..6).map(|i| mock.region(i)).collect();
    let bars = vec![bar(0, W32), bar(3, W32 + 0x4000)];
    let cap = MsixCap::parse(0x70, 2, 0x803, 0x2003);
    let m = MockMapper::default();
    let map = BarMap::new("vf", bars, &regions, Some(cap), &*mock, &m).unwrap();
    let bar3 = W32 + 0x4000;
    assert_eq!(
        map.classify_access(bar3 + 0x7f8, 8),
        Some(Trapped::Device(3, 0x7f8))
    );
    assert_eq!(
        map.classify_access(bar3 + 0x7fc, 8),
        None,
        "runs into the table"
    );
    assert_eq!(
        map.classify_access(bar3 + 0x7fc, 4),
        Some(Trapped::Device(3, 0x7fc))
    );
    assert_eq!(
        map.classify_access(bar3 + 0x800, 8),
        Some(Trapped::MsixTable(0))
    );
    assert_eq!(
        map.classify_access(bar3 + 0x1ffc, 8),
        None,
        "runs out of the trap"
    );
}

#[test]
fn mmap_plan_respects_sparse_areas_and_old_kernels() {
    let bar = BarInfo {
        prefetchable: false,
        addr: 0,
        ..bar(3, 0)
    };
    let cap = igbvf_msix();
    let old = RegionInfo {
        size: 0x4000,
        mmap: true,
        ..Default::default()
    };
    assert!(
        mmap_plan(&bar, &old, Some(&cap)).is_empty(),
        "no MSIX_MAPPABLE: trap the whole BAR"
    );
    let sparse = RegionInfo {
        size: 0x4000,
        mmap: true,
        sparse: Some(vec![(0x1000, 0x1000), (0x3000, 0x1000)]),
        ..Default::default()
    };
    assert_eq!(
        mmap_plan(&bar, &sparse, Some(&cap)),
        vec![(0x1000, 0x1000), (0x3000, 0x1000)]
    );
    let none = RegionInfo {
        size: 0x4000,
        ..Default::default()
    };
    assert!(mmap_plan(&bar, &none, None).is_empty());
    // Sub-page BARs cannot be mapped.
    let small = BarInfo { size: 0x100, ..bar };
    let small_info = RegionInfo {
        size: 0x100,
        mmap: true,
        ..Default::default()
    };
    assert!(mmap_plan(&small, &small_info, None).is_empty());
    assert_eq!(
        trap_ranges(0x4000, &[(0x1000, 0x1000)]),
        vec![(0, 0x1000), (0x2000, 0x2000)]
    );
    assert_eq!(trap_ranges(0x1000, &[]), vec![(0, 0x1000)]);
}

#[test]
fn msix_table_next_to_hot_registers_is_mapped_around() {
    // An mlx5/NVMe-style BAR0: 16 KiB, the MSI-X table at 0x2000, PBA at 0x3000.
    let cap = MsixCap::parse(0x70, 7, 0x2000, 0x3000);
    let info = RegionInfo {
        size: 0x4000,
        mmap: true,
        msix_mappable: true,
        ..Default::default()
    };
    let b = BarInfo {
        index: 0,
        ..bar(0, 0)
    };
    assert_eq!(mmap_plan(&b, &info, Some(&cap)), vec![(0, 0x2000)]);
}
