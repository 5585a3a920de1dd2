//! virtio-blk (virtio 1.2, 5.2) over a raw image: read, write, flush
//! (fsync) and get-id on one queue. A writable image is locked exclusively
//! (flock), a read-only one shared, so two VMs never write one image. Host
//! I/O errors and requests past the end go back as VIRTIO_BLK_S_IOERR.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::options::DiskConfig;
use super::{
    serve_queue, ActivateError, Activation, Chain, Interrupt, Registrar, VirtioDevice, Worker,
};

/// The device ID of a block device.
const TYPE_BLOCK: u16 = 2;
const QUEUE_SIZES: [u16; 1] = [256];
/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;
/// Bytes moved per host I/O call (a multiple of 4 KiB, for O_DIRECT).
const CHUNK: usize = 128 << 10;
/// Size of a request header.
const HEADER: usize = 16;
/// Data descriptors per request (`seg_max`): a whole queue but the header
/// and the status. Without it Linux sends one segment a request (4 KiB).
const SEG_MAX: u32 = QUEUE_SIZES[0] as u32 - 2;
/// Discard ranges per request (`max_discard_seg`).
const MAX_DISCARD_SEG: u32 = 16;
/// Discards are aligned to 4 KiB (`discard_sector_alignment`, in sectors).
const DISCARD_ALIGN: u32 = 8;

/// Errors opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image cannot be opened.
    #[error("cannot open disk image {0}: check the path and its permissions")]
    Open(PathBuf, #[source] std::io::Error),
    /// Another process holds the lock.
    #[error("disk image {0} is in use by another VM (it is locked): give each VM its own image, or attach it readonly=on everywhere")]
    Locked(PathBuf),
    /// flock failed otherwise.
    #[error("cannot lock disk image {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    /// The size cannot be read.
    #[error("cannot read the size of disk image {0}")]
    Size(PathBuf, #[source] std::io::Error),
}

/// A raw image as a virtio-blk device.
pub struct Block {
    name: String,
    file: File,
    capacity: u64,
    readonly: bool,
    /// Discard punches holes: writable regular files only.
    discard: bool,
    id: Vec<u8>,
}

fn lock(file: &File, path: &std::path::Path, exclusive: bool) -> Result<(), DiskError> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(DiskError::Locked(path.to_path_buf()))
    } else {
        Err(DiskError::Lock(path.to_path_buf(), e))
    }
}

impl Block {
    /// Opens and locks the image of `cfg`.
    pub fn open(cfg: &DiskConfig) -> Result<Self, DiskError> {
        let path = &cfg.path;
        let mut o = OpenOptions::new();
        o.read(true).write(!cfg.readonly);
        if cfg.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let mut file = o.open(path).map_err(|e| DiskError::Open(path.clone(), e))?;
        lock(&file, path, !cfg.readonly)?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| DiskError::Size(path.clone(), e))?;
        if size % SECTOR != 0 {
            log::warn!(
                "disk {}: size {size} is not a multiple of 512; the tail is not visible",
                path.display()
            );
        }
        let mut id = cfg.id.clone().unwrap_or_default().into_bytes();
        id.truncate(VIRTIO_BLK_ID_BYTES as usize);
        let name = format!("virtio-blk {}", path.display());
        log::info!(
            "{name}: {} sectors{}{}",
            size / SECTOR,
            if cfg.readonly { ", read-only" } else { "" },
            if cfg.direct { ", O_DIRECT" } else { "" }
        );
        let regular = file.metadata().is_ok_and(|m| m.is_file());
        Ok(Block {
            name,
            file,
            capacity: size / SECTOR,
            readonly: cfg.readonly,
            discard: regular && !cfg.readonly,
            id,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        let ro = if self.readonly {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        let discard = if self.discard {
            1 << VIRTIO_BLK_F_DISCARD
        } else {
            0
        };
        (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | ro | discard
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (le64), seg_max at 12; with DISCARD, max_discard_sectors,
        // max_discard_seg and discard_sector_alignment at 36, 40 and 44
        // (virtio 1.2, 5.2.4).
        let mut c = [0u8; 48];
        c[..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        let max = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        c[36..40].copy_from_slice(&max.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        c[44..48].copy_from_slice(&DISCARD_ALIGN.to_le_bytes());
        super::read_config_bytes(&c, offset, data);
    }
    fn activate(&mut self, act: Activation) -> Result<Box<dyn Worker>, ActivateError> {
        let (Some(queue), Some(kick)) =
            (act.queues.into_iter().next(), act.kicks.into_iter().next())
        else {
            return Err(ActivateError::Queues(0, 1));
        };
        Ok(Box::new(BlockWorker {
            disk: Disk {
                file: self.file.try_clone().map_err(ActivateError::Os)?,
                capacity: self.capacity,
                readonly: self.readonly,
                discard: self.discard,
                id: self.id.clone(),
                buf: AlignedBuf::new(CHUNK),
            },
            mem: act.mem,
            queue,
            kick,
            interrupt: act.interrupt,
        }))
    }
}

/// A 4 KiB-aligned buffer (O_DIRECT needs aligned memory).
struct AlignedBuf(Vec<Page>);

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; 4096]);

impl AlignedBuf {
    fn new(len: usize) -> Self {
        AlignedBuf(vec![Page([0; 4096]); len.div_ceil(4096)])
    }

    fn bytes(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.0.len() * 4096);
        // SAFETY: the pages are contiguous plain bytes owned by the Vec, at
        // least `len` long; the slice borrows `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// The image side of the worker.
pub struct Disk {
    file: File,
    capacity: u64,
    readonly: bool,
    discard: bool,
    id: Vec<u8>,
    buf: AlignedBuf,
}

impl Disk {
    /// A writable disk of `sectors` on an anonymous memory file.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn scratch(sectors: u64) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a valid C string; the fd is checked.
        let fd = unsafe { libc::memfd_create(c"vflaunch-disk".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(sectors * SECTOR)?;
        Ok(Disk {
            file,
            capacity: sectors,
            readonly: false,
            discard: true,
            id: b"fuzz".to_vec(),
            buf: AlignedBuf::new(CHUNK),
        })
    }

    /// Checks that `len` bytes at `sector` are inside the disk; the byte offset.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = len as u64;
        let start = sector.checked_mul(SECTOR)?;
        let end = start.checked_add(len)?;
        (len % SECTOR == 0 && end <= self.capacity * SECTOR).then_some(start)
    }

    fn read_into(
        &mut self,
        w: &mut impl Write,
        mut at: u64,
        mut len: usize,
    ) -> std::io::Result<()> {
        while len > 0 {
            let n = len.min(CHUNK);
            let b = self.buf.bytes(n);
            self.file.read_exact_at(b, at)?;
            w.write_all(b)?;
            at += n as u64;
            len -= n;
        }
        Ok(())
    }

    fn write_from(
        &mut self,
        r: &mut impl Read,
        mut at: u64,
        mut len: usize,
    ) -> std::io::Result<()> {
        while len > 0 {
            let n = len.min(CHUNK);
            let b = self.buf.bytes(n);
            r.read_exact(b)?;
            self.file.write_all_at(b, at)?;
            at += n as u64;
            len -= n;
        }
        Ok(())
    }

    /// Serves one request; returns the bytes written to the guest (data and status).
    pub fn serve(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let (mut r, mut w) = match (chain.clone().reader(mem), chain.writer(mem)) {
            (Ok(r), Ok(w)) if w.available_bytes() > 0 => (r, w),
            _ => {
                log::warn!("virtio-blk: a request without a status byte or outside RAM");
                return 0;
            }
        };
        let Ok(mut status_w) = w.split_at(w.available_bytes() - 1) else {
            return 0;
        };
        let mut hdr = [0u8; HEADER];
        let (status, written) = if r.read_exact(&mut hdr).is_err() {
            (VIRTIO_BLK_S_IOERR, 0)
        } else {
            let t = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&hdr[8..16]);
            self.request(t, u64::from_le_bytes(s), &mut r, &mut w)
        };
        if status_w.write_all(&[status as u8]).is_err() {
            return written;
        }
        written + 1
    }

    fn request(
        &mut self,
        t: u32,
        sector: u64,
        r: &mut virtio_queue::Reader<'_>,
        w: &mut virtio_queue::Writer<'_>,
    ) -> (u32, u32) {
        let ioerr = |what: &str, e: std::io::Error| {
            log::warn!("virtio-blk: {what} failed: {e}");
            VIRTIO_BLK_S_IOERR
        };
        match t {
            VIRTIO_BLK_T_IN => {
                let len = w.available_bytes();
                let Some(at) = self.range(sector, len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                let status = match self.read_into(w, at, len) {
                    Ok(()) => VIRTIO_BLK_S_OK,
                    Err(e) => ioerr("read", e),
                };
                (status, w.bytes_written() as u32)
            }
            VIRTIO_BLK_T_OUT => {
                let len = r.available_bytes();
                let Some(at) = self.range(sector, len).filter(|_| !self.readonly) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                match self.write_from(r, at, len) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => (ioerr("write", e), 0),
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.file.sync_all() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => (ioerr("flush", e), 0),
            },
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                id[..self.id.len()].copy_from_slice(&self.id);
                let n = w.available_bytes().min(id.len());
                match w.write_all(&id[..n]) {
                    Ok(()) => (VIRTIO_BLK_S_OK, n as u32),
                    Err(e) => (ioerr("get-id", e), 0),
                }
            }
            VIRTIO_BLK_T_DISCARD if self.discard => (self.discard_ranges(r), 0),
            _ => (VIRTIO_BLK_S_UNSUPP, 0),
        }
    }

    /// Punches a hole for each `{sector, num_sectors, flags}` range.
    fn discard_ranges(&mut self, r: &mut virtio_queue::Reader<'_>) -> u32 {
        use std::os::fd::AsRawFd;
        let n = r.available_bytes() / 16;
        if n == 0 || n > MAX_DISCARD_SEG as usize || r.available_bytes() % 16 != 0 {
            return VIRTIO_BLK_S_IOERR;
        }
        for _ in 0..n {
            let mut seg = [0u8; 16];
            if r.read_exact(&mut seg).is_err() {
                return VIRTIO_BLK_S_IOERR;
            }
            let sector = u64::from_le_bytes(seg[..8].try_into().unwrap_or_default());
            let count = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let len = u64::from(count) * SECTOR;
            let Some(at) = self.range(sector, len as usize) else {
                return VIRTIO_BLK_S_IOERR;
            };
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on a descriptor we own; no memory involved.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at as i64, len as i64) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                log::warn!("virtio-blk: discard failed: {e}");
                return VIRTIO_BLK_S_IOERR;
            }
        }
        VIRTIO_BLK_S_OK
    }
}

struct BlockWorker {
    disk: Disk,
    mem: GuestMemoryMmap,
    queue: Queue,
    kick: EventFd,
    interrupt: Interrupt,
}

impl Worker for BlockWorker {
    fn start(&mut self, reg: &mut Registrar) -> std::io::Result<()> {
        reg.add(self.kick.as_raw_fd(), 0, EventSet::IN)
    }

    fn event(&mut self, _token: u32, _events: EventSet, _reg: &mut Registrar) {
        super::drain(&self.kick);
        let (mem, disk) = (&self.mem, &mut self.disk);
        serve_queue(&mut self.queue, mem, &self.interrupt, 0, |c| {
            disk.serve(mem, c)
        });
    }
}

#[cfg(test)]
#[path = "block_tests.rs"]
mod tests;
