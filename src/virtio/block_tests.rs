use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::virtio::testing::{Driver, TestQueue};

const HDR: u64 = 0x100000;
const DATA: u64 = 0x110000;
const STATUS: u64 = 0x1f0000;

fn image(sectors: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(sectors * SECTOR).unwrap();
    f
}

fn cfg(f: &tempfile::NamedTempFile) -> DiskConfig {
    DiskConfig {
        path: f.path().to_path_buf(),
        id: Some("disk-7".into()),
        ..Default::default()
    }
}

/// Puts a request on `q`: header, `data` bytes at DATA (device-writable for
/// reads), the status byte. The status goes at STATUS + 16 * head.
fn request(d: &Driver, q: &mut TestQueue, t: u32, sector: u64, data: u32, writable: bool) -> u16 {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&t.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    let slot = u64::from(q.used_idx()) + 64 * u64::from(t % 16);
    d.mem
        .write_slice(&h, GuestAddress(HDR + 16 * slot))
        .unwrap();
    let mut bufs = vec![(HDR + 16 * slot, 16, false)];
    if data > 0 {
        bufs.push((DATA, data, writable));
    }
    bufs.push((STATUS + slot, 1, true));
    q.add_chain(&bufs)
}

fn status_of(d: &Driver, q: &TestQueue, t: u32) -> u8 {
    let slot = u64::from(q.used_idx() - 1) + 64 * u64::from(t % 16);
    d.mem.read_obj(GuestAddress(STATUS + slot)).unwrap()
}

fn run(d: &mut Driver, q: &mut TestQueue, t: u32, sector: u64, data: u32, w: bool) -> (u8, u32) {
    let n = q.used_idx();
    request(d, q, t, sector, data, w);
    d.kick(0);
    assert_eq!(q.wait_used(n + 1), n + 1, "request served");
    (status_of(d, q, t), q.used_elem(n).1)
}

#[test]
fn write_read_flush_get_id_through_the_transport() {
    let img = image(64);
    let mut d = Driver::new(Box::new(Block::open(&cfg(&img)).unwrap()));
    let mut q = TestQueue::new(&d.mem, 0x10000, 64);
    assert_eq!(
        d.read(super::super::pci_layout::bar::DEVICE, 8),
        64,
        "capacity in sectors"
    );
    let f = d.device_features();
    let want = (1 << 32)
        | (1 << VIRTIO_BLK_F_FLUSH)
        | (1 << VIRTIO_BLK_F_DISCARD)
        | (1 << VIRTIO_BLK_F_SEG_MAX);
    assert_eq!(f, want, "flush, discard, seg_max, writable");
    assert_eq!(
        d.read(super::super::pci_layout::bar::DEVICE + 12, 4),
        254,
        "seg_max: the queue but header and status"
    );
    assert_eq!(d.init(f, &[&q]), 0xf);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    d.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_OUT, 8, 4096, false),
        (0, 1)
    );
    assert_eq!(run(&mut d, &mut q, VIRTIO_BLK_T_FLUSH, 0, 0, false), (0, 1));
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(
        &on_disk[8 * 512..8 * 512 + 4096],
        &pattern[..],
        "the image has it"
    );
    d.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_IN, 8, 4096, true),
        (0, 4097)
    );
    let mut back = vec![0u8; 4096];
    d.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_GET_ID, 0, 20, true),
        (0, 21)
    );
    let mut id = [0u8; 20];
    d.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..6], b"disk-7");
    assert_eq!(id[6..], [0; 14]);
    assert!(d.wait_vector(1));
}

#[test]
fn bad_requests_get_error_statuses() {
    let img = image(16);
    let mut d = Driver::new(Box::new(Block::open(&cfg(&img)).unwrap()));
    let mut q = TestQueue::new(&d.mem, 0x10000, 64);
    let f = d.device_features();
    assert_eq!(d.init(f, &[&q]), 0xf);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Past the end, straddling the end, a sector number that overflows.
    assert_eq!(run(&mut d, &mut q, VIRTIO_BLK_T_IN, 16, 512, true).0, ioerr);
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_OUT, 15, 1024, false).0,
        ioerr
    );
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_IN, u64::MAX / 2, 512, true).0,
        ioerr
    );
    // Not a multiple of the sector size.
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_OUT, 0, 100, false).0,
        ioerr
    );
    // Write-zeroes is not offered; unknown types.
    assert_eq!(
        run(&mut d, &mut q, 13, 0, 16, false).0,
        VIRTIO_BLK_S_UNSUPP as u8
    );
    assert_eq!(
        run(&mut d, &mut q, 0x7777, 0, 0, false).0,
        VIRTIO_BLK_S_UNSUPP as u8
    );
    // A chain with no writable byte at all is dropped without a status.
    let n = q.used_idx();
    q.add_chain(&[(HDR, 16, false)]);
    d.kick(0);
    assert_eq!(q.wait_used(n + 1), n + 1);
    assert_eq!(q.used_elem(n).1, 0);
    // Data outside RAM.
    let n = q.used_idx();
    q.add_chain(&[
        (HDR, 16, false),
        (0x7fff_0000, 512, true),
        (STATUS, 1, true),
    ]);
    d.kick(0);
    assert_eq!(q.wait_used(n + 1), n + 1);
    assert_eq!(q.used_elem(n).1, 0);
    assert_eq!(d.status() & 0x40, 0, "bad requests do not break the device");
}

#[test]
fn host_io_errors_become_ioerr() {
    let img = image(8);
    let mem = crate::virtio::testing::memory(4 << 20);
    // The disk claims more sectors than the file has: reads past EOF fail.
    let mut disk = Disk {
        file: std::fs::File::open(img.path()).unwrap(),
        capacity: 1024,
        readonly: false,
        discard: false,
        id: Vec::new(),
        buf: AlignedBuf::new(CHUNK),
    };
    let mut q = TestQueue::new(&mem, 0x10000, 16);
    let mut h = [0u8; 16];
    h[8..].copy_from_slice(&100u64.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    // And a write to a file opened read-only.
    h[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..].copy_from_slice(&0u64.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR + 16)).unwrap();
    q.add_chain(&[
        (HDR + 16, 16, false),
        (DATA, 512, false),
        (STATUS + 1, 1, true),
    ]);
    let mut queue = q.queue();
    use virtio_queue::QueueOwnedT;
    let chains: Vec<_> = queue.iter(&mem).unwrap().collect();
    for c in chains {
        disk.serve(&mem, c);
    }
    let s: [u8; 2] = mem.read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(s, [VIRTIO_BLK_S_IOERR as u8; 2]);
}

#[test]
fn images_are_locked_against_a_second_vm() {
    let img = image(8);
    let first = Block::open(&cfg(&img)).unwrap();
    let e = Block::open(&cfg(&img)).err().unwrap();
    assert!(matches!(e, DiskError::Locked(_)), "{e}");
    assert!(e.to_string().contains("in use by another VM"));
    let ro = DiskConfig {
        readonly: true,
        ..cfg(&img)
    };
    assert!(
        Block::open(&ro).is_err(),
        "a reader waits for the writer too"
    );
    drop(first);
    let a = Block::open(&ro).unwrap();
    let b = Block::open(&ro).unwrap();
    assert_ne!(a.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert!(
        Block::open(&cfg(&img)).is_err(),
        "readers keep a writer out"
    );
    drop((a, b));
    let missing = DiskConfig {
        path: "/nonexistent/disk.img".into(),
        ..Default::default()
    };
    assert!(matches!(Block::open(&missing), Err(DiskError::Open(..))));
}

#[test]
fn readonly_disk_refuses_writes() {
    let img = image(8);
    let ro = DiskConfig {
        readonly: true,
        ..cfg(&img)
    };
    let mut d = Driver::new(Box::new(Block::open(&ro).unwrap()));
    let mut q = TestQueue::new(&d.mem, 0x10000, 16);
    let f = d.device_features();
    assert_eq!(d.init(f, &[&q]), 0xf);
    let (s, _) = run(&mut d, &mut q, VIRTIO_BLK_T_OUT, 0, 512, false);
    assert_eq!(s, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(run(&mut d, &mut q, VIRTIO_BLK_T_IN, 0, 512, true).0, 0);
}

#[test]
fn discard_punches_holes_within_the_disk() {
    let img = image(64);
    let mut d = Driver::new(Box::new(Block::open(&cfg(&img)).unwrap()));
    let mut q = TestQueue::new(&d.mem, 0x10000, 64);
    let dev = crate::virtio::pci_layout::bar::DEVICE;
    assert_eq!(d.read(dev + 40, 4), u64::from(MAX_DISCARD_SEG));
    assert_eq!(d.read(dev + 44, 4), u64::from(DISCARD_ALIGN));
    let f = d.device_features();
    assert_eq!(d.init(f, &[&q]), 0xf);
    d.mem
        .write_slice(&[0xaa; 8192], GuestAddress(DATA))
        .unwrap();
    assert_eq!(run(&mut d, &mut q, VIRTIO_BLK_T_OUT, 8, 8192, false).0, 0);
    // One range: sectors 8..16.
    let mut seg = [0u8; 16];
    seg[..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    d.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    assert_eq!(run(&mut d, &mut q, VIRTIO_BLK_T_DISCARD, 0, 16, false).0, 0);
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(on_disk.len(), 64 * 512, "the size stays");
    assert!(
        on_disk[8 * 512..16 * 512].iter().all(|b| *b == 0),
        "discarded"
    );
    assert!(
        on_disk[16 * 512..24 * 512].iter().all(|b| *b == 0xaa),
        "kept"
    );
    // Past the end, and a malformed request, are errors.
    seg[..8].copy_from_slice(&60u64.to_le_bytes());
    d.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_DISCARD, 0, 16, false).0,
        ioerr
    );
    assert_eq!(
        run(&mut d, &mut q, VIRTIO_BLK_T_DISCARD, 0, 10, false).0,
        ioerr
    );
    // A read-only disk offers no discard.
    drop(d);
    let ro = DiskConfig {
        readonly: true,
        ..cfg(&img)
    };
    assert_eq!(
        Block::open(&ro).unwrap().features() & (1 << VIRTIO_BLK_F_DISCARD),
        0
    );
}

#[test]
fn a_request_scattered_over_many_segments_reads_and_writes_in_order() {
    // What SEG_MAX lets Linux send: one request, many 4 KiB segments.
    let img = image(256);
    let pattern: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i * 13 + i / 4096) as u8)
        .collect();
    std::fs::write(
        img.path(),
        [&pattern[..], &vec![0u8; 64 * 1024][..]].concat(),
    )
    .unwrap();
    let mut d = Driver::new(Box::new(Block::open(&cfg(&img)).unwrap()));
    let mut q = TestQueue::new(&d.mem, 0x10000, 64);
    let f = d.device_features();
    assert_eq!(d.init(f, &[&q]), 0xf);
    // 16 segments of 4 KiB, in guest memory in reverse order.
    let seg = |i: u64| DATA + (15 - i) * 0x2000;
    // One request of type `t` at `sector` over the 16 segments.
    let submit = |d: &mut Driver, q: &mut TestQueue, t: u32, sector: u64| {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&t.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        d.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend((0..16).map(|i| (seg(i), 4096, t == VIRTIO_BLK_T_IN)));
        bufs.push((STATUS, 1, true));
        q.add_chain(&bufs);
        d.kick(0);
    };
    submit(&mut d, &mut q, VIRTIO_BLK_T_IN, 0);
    assert_eq!(q.wait_used(1), 1);
    assert_eq!(
        q.used_elem(0).1,
        64 * 1024 + 1,
        "all segments and the status"
    );
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    for i in 0..16u64 {
        let mut b = vec![0u8; 4096];
        d.mem.read_slice(&mut b, GuestAddress(seg(i))).unwrap();
        let at = i as usize * 4096;
        assert_eq!(b, pattern[at..at + 4096], "segment {i}");
    }
    // The same segments written back at sector 128.
    submit(&mut d, &mut q, VIRTIO_BLK_T_OUT, 128);
    assert_eq!(q.wait_used(2), 2);
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(
        &on_disk[64 * 1024..],
        &pattern[..],
        "written in segment order"
    );
}
