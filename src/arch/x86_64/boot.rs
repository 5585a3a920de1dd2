//! Loads the kernel, initramfs and command line and writes the boot
//! information the kernel reads: `boot_params` with the e820 map for the
//! Linux boot protocol, or `hvm_start_info` for PVH.

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::{BzImage, Error as BzImageError};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, E820Kind, GuestLayout};
use super::regs::EntryMode;

/// Errors loading the guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Opening a boot file failed.
    #[error("cannot open {0}")]
    Open(String, #[source] std::io::Error),
    /// The kernel is neither a bzImage nor an ELF vmlinux.
    #[error("{0} is not a bzImage or ELF vmlinux kernel (bzImage: {1}; ELF: {2})")]
    NotAKernel(
        String,
        linux_loader::loader::Error,
        linux_loader::loader::Error,
    ),
    /// The bzImage's kernel does not fit in guest RAM at its load address.
    #[error("kernel {0} ({1} bytes) does not fit in guest memory: give the guest more --memory")]
    KernelTooBig(String, u64),
    /// The initramfs does not fit in guest RAM below the kernel's limit.
    #[error("initramfs ({0} bytes) does not fit in guest memory: give the guest more --memory")]
    InitrdTooBig(u64),
    /// Reading the initramfs into guest memory failed.
    #[error("cannot read the initramfs into guest memory")]
    InitrdRead(#[source] vm_memory::GuestMemoryError),
    /// The command line is invalid.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the kernel command line")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// Writing boot structures failed.
    #[error("cannot write boot information to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// What the boot vCPU needs to start the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The CPU mode at entry.
    pub mode: EntryMode,
    /// Entry point.
    pub entry: u64,
    /// Address of the boot information (zero page or PVH start info).
    pub boot_info: u64,
}

/// Where the initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from the protected-mode kernel start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

fn open(path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|e| BootError::Open(path.display().to_string(), e))
}

/// Offsets in the bzImage setup header (Linux boot protocol).
const SETUP_SECTS_OFFSET: u64 = 0x1f1;
const CODE32_START_OFFSET: u64 = 0x214;

/// Whether the protected-mode part of the bzImage `f` (its header already
/// accepted by the loader) fits in `mem` at its load address.
fn bzimage_fits(mem: &GuestMemoryMmap, f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::GuestMemoryBackend;
    let len = f.seek(SeekFrom::End(0))?;
    let mut sects = [0u8];
    f.seek(SeekFrom::Start(SETUP_SECTS_OFFSET))?;
    f.read_exact(&mut sects)?;
    let mut start = [0u8; 4];
    f.seek(SeekFrom::Start(CODE32_START_OFFSET))?;
    f.read_exact(&mut start)?;
    let setup = (u64::from(sects[0]).max(4) + 1) * 512;
    let payload = len.saturating_sub(setup) as usize;
    let at = GuestAddress(u64::from(u32::from_le_bytes(start)));
    Ok(mem.check_range(at, payload))
}

/// Loads a bzImage, falling back to ELF; returns the loader result.
fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelLoaderResult, BootError> {
    let mut f = open(path)?;
    let bz = match BzImage::load(mem, None, &mut f, Some(layout::HIMEM_START)) {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    // The header was a bzImage's, but the kernel could not be copied in.
    if bz == linux_loader::loader::Error::Bzimage(BzImageError::ReadBzImageCompressedKernel)
        && matches!(bzimage_fits(mem, &mut f), Ok(false))
    {
        let size = f.metadata().map_or(0, |m| m.len());
        return Err(BootError::KernelTooBig(path.display().to_string(), size));
    }
    let elf_err = match Elf::load(mem, None, &mut f, Some(layout::HIMEM_START)) {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    Err(BootError::NotAKernel(
        path.display().to_string(),
        bz,
        elf_err,
    ))
}

/// Picks the initramfs address: page-aligned, as high as possible below
/// `limit` (exclusive) and above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let top = limit.checked_sub(size)?;
    let addr = top & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdPlacement, BootError> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|e| BootError::Open(path.display().to_string(), e))?
        .len();
    let addr = initrd_address(size, kernel_end, limit).ok_or(BootError::InitrdTooBig(size))?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(BootError::InitrdRead)?;
    Ok(InitrdPlacement { addr, size })
}

/// Builds the `boot_params` page for the Linux 64-bit boot protocol.
pub fn build_boot_params(
    header: Option<linux_loader::bootparam::setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    guest: &GuestLayout,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.0 as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    params.acpi_rsdp_addr = layout::RSDP_START.0;
    let map = guest.e820();
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: e820_type(*kind),
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

fn e820_type(kind: E820Kind) -> u32 {
    match kind {
        E820Kind::Ram => E820_RAM,
        E820Kind::Reserved => E820_RESERVED,
    }
}

/// Serializes the PVH start info, module list and memory map.
fn write_pvh_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    guest: &GuestLayout,
) -> Result<(), BootError> {
    let map = guest.e820();
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes());
    info.extend_from_slice(&layout::PVH_MODLIST_START.0.to_le_bytes());
    info.extend_from_slice(&layout::CMDLINE_START.0.to_le_bytes());
    info.extend_from_slice(&layout::RSDP_START.0.to_le_bytes());
    info.extend_from_slice(&layout::PVH_MEMMAP_START.0.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&info, layout::PVH_INFO_START)?;
    if let Some(i) = initrd {
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&i.addr.to_le_bytes());
        m.extend_from_slice(&i.size.to_le_bytes());
        m.extend_from_slice(&[0u8; 16]);
        mem.write_slice(&m, layout::PVH_MODLIST_START)?;
    }
    for (n, (addr, size, kind)) in map.iter().enumerate() {
        let mut e = Vec::with_capacity(24);
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&e820_type(*kind).to_le_bytes());
        e.extend_from_slice(&0u32.to_le_bytes());
        mem.write_slice(&e, layout::PVH_MEMMAP_START.unchecked_add(n as u64 * 24))?;
    }
    Ok(())
}

/// Real-mode code at the reset vector: write the ACPI reset value to the PM
/// port, then halt. Linux uses this path (`machine_real_restart`, a jump to
/// F000:FFF0) for `reboot=b` and, on some configurations, for panic reboots.
pub fn reset_stub() -> [u8; 16] {
    let [lo, hi] = layout::ACPI_PM_PORT.to_le_bytes();
    let mut code = [0xf4u8; 16]; // hlt
    code[..9].copy_from_slice(&[
        0xb0,
        crate::devices::acpi_pm::RESET_VALUE, // mov al, RESET_VALUE
        0xba,
        lo,
        hi,   // mov dx, ACPI_PM_PORT
        0xee, // out dx, al
        0xf4, // hlt
        0xeb,
        0xfd, // jmp hlt
    ]);
    code
}

/// Loads everything and returns how to enter the kernel.
pub fn load(
    mem: &GuestMemoryMmap,
    guest: &GuestLayout,
    kernel: &Path,
    initramfs: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let k = load_kernel(mem, kernel)?;
    mem.write_slice(&reset_stub(), layout::RESET_VECTOR)?;
    let low_ram_end = guest.low_ram_end();
    let limit = match k.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        _ => DEFAULT_INITRD_ADDR_MAX + 1,
    }
    .min(low_ram_end);
    let initrd = initramfs
        .map(|p| load_initrd(mem, p, k.kernel_end, limit))
        .transpose()?;

    let mut cl = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    load_cmdline(mem, layout::CMDLINE_START, &cl).map_err(BootError::CmdlineWrite)?;

    if let PvhBootCapability::PvhEntryPresent(entry) = k.pvh_boot_cap {
        write_pvh_info(mem, initrd, guest)?;
        return Ok(BootEntry {
            mode: EntryMode::Pvh32,
            entry: entry.0,
            boot_info: layout::PVH_INFO_START.0,
        });
    }
    let params = build_boot_params(k.setup_header, cmdline.len() + 1, initrd, guest);
    mem.write_obj(params, layout::ZERO_PAGE_START)?;
    let entry = if k.setup_header.is_some() {
        k.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET
    } else {
        k.kernel_load.0
    };
    Ok(BootEntry {
        mode: EntryMode::Long64,
        entry,
        boot_info: layout::ZERO_PAGE_START.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_top_of_low_memory() {
        assert_eq!(
            initrd_address(4096, 0x20_0000, 0x800_0000),
            Some(0x7ff_f000)
        );
        assert_eq!(
            initrd_address(5000, 0x20_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(initrd_address(0x800_0000, 0x20_0000, 0x800_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 10), None);
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_e820() {
        let p = build_boot_params(
            None,
            20,
            Some(InitrdPlacement {
                addr: 0x100_0000,
                size: 0x1234,
            }),
            &GuestLayout::new(256 << 20),
        );
        assert_eq!({ p.hdr.cmd_line_ptr }, layout::CMDLINE_START.0 as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x100_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(
            p.e820_entries as usize,
            GuestLayout::new(256 << 20).e820().len()
        );
        let last = p.e820_table[p.e820_entries as usize - 1];
        assert_eq!({ last.addr } + { last.size }, 256 << 20);
        assert_eq!({ last.r#type }, E820_RAM);
    }

    #[test]
    fn reset_vector_asks_for_an_acpi_reset() {
        let stub = reset_stub();
        // mov al, 1; mov dx, 0x600; out dx, al
        assert_eq!(&stub[..6], &[0xb0, 0x01, 0xba, 0x00, 0x06, 0xee]);
        assert_eq!(
            crate::devices::acpi_pm::decode(stub[1]),
            Some(crate::exit::ExitReason::GuestReset)
        );
    }

    #[test]
    fn rejects_non_kernel_files() {
        let guest = GuestLayout::new(64 << 20);
        let mem = crate::memory::create_guest_memory(&guest, false).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0u8; 8192]).unwrap();
        let err = load(&mem, &guest, f.path(), None, "console=ttyS0").unwrap_err();
        assert!(matches!(err, BootError::NotAKernel(..)), "{err}");
        let err = load(&mem, &guest, Path::new("/nonexistent/k"), None, "").unwrap_err();
        assert!(matches!(err, BootError::Open(..)));
    }

    #[test]
    fn a_bzimage_larger_than_guest_ram_does_not_fit() {
        let guest = GuestLayout::new(64 << 20);
        let mem = crate::memory::create_guest_memory(&guest, false).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 4; // setup_sects
        img[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        std::fs::write(f.path(), &img).unwrap();
        f.as_file().set_len(80 << 20).unwrap();
        let err = load(&mem, &guest, f.path(), None, "").unwrap_err();
        assert!(
            matches!(err, BootError::KernelTooBig(_, n) if n == 80 << 20),
            "{err}"
        );
        assert!(
            err.to_string().contains("does not fit in guest memory"),
            "{err}"
        );
    }
}
