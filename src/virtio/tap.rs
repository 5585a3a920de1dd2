//! Tap devices for virtio-net: opened by name through /dev/net/tun, or an
//! open tap descriptor handed over by the launcher (Kata passes one). With
//! IFF_VNET_HDR the tap speaks the 12-byte virtio-net header itself;
//! without it, the device adds and strips the header.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOR('T', 210, unsigned int)`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The virtio-net header with VERSION_1 (num_buffers included).
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun: load the tun module and run as root or with CAP_NET_ADMIN")]
    Tun(#[source] std::io::Error),
    /// TUNSETIFF refused the name.
    #[error("cannot attach to tap {0}: check that it exists (ip tuntap add {0} mode tap) and is not in use")]
    Attach(String, #[source] std::io::Error),
    /// The descriptor is not an open tap.
    #[error("fd {0} is not an open tap device: pass the descriptor of an opened tap")]
    NotATap(i32),
    /// Setting it up failed.
    #[error("cannot set up the tap")]
    Setup(#[source] std::io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_int) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    let n = name.len().min(15);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

/// An open tap.
pub struct Tap {
    /// The descriptor (non-blocking).
    pub file: File,
    /// The tap exchanges virtio-net headers.
    pub vnet_hdr: bool,
    /// Its interface name.
    pub name: String,
}

fn ioctl_ptr<T>(f: &File, req: libc::c_ulong, arg: *mut T) -> std::io::Result<()> {
    // SAFETY: `req` is a tun ioctl whose argument is `*arg`, which the
    // caller passes valid for reads and writes of its size.
    if unsafe { libc::ioctl(f.as_raw_fd(), req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Attaches to (or creates) the tap `name`, with virtio-net headers.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Tun)?;
        let mut r = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        ioctl_ptr(&file, TUNSETIFF, &mut r).map_err(|e| TapError::Attach(name.into(), e))?;
        Self::setup(file, true, name.to_string())
    }

    /// Takes over an open tap descriptor.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        let mut r = ifreq("", 0);
        ioctl_ptr(&file, TUNGETIFF, &mut r).map_err(|_| TapError::NotATap(raw))?;
        let flags = libc::c_int::from(r.flags);
        if flags & libc::IFF_TAP == 0 || flags & libc::IFF_NO_PI == 0 {
            return Err(TapError::NotATap(raw));
        }
        let end = r.name.iter().position(|b| *b == 0).unwrap_or(16);
        let name = String::from_utf8_lossy(&r.name[..end]).into_owned();
        // SAFETY: fcntl on a descriptor we own; no memory involved.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Setup(std::io::Error::last_os_error()));
        }
        Self::setup(file, flags & libc::IFF_VNET_HDR != 0, name)
    }

    /// Uses descriptor number `fd` of this process (`--net fd=N`) through a
    /// duplicate, so a wrong number never closes anything of the process's.
    pub fn from_raw(fd: i32) -> Result<Self, TapError> {
        // SAFETY: F_DUPFD_CLOEXEC duplicates `fd` if it is open (else fails);
        // no memory is involved.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 || dup < 0 {
            return Err(TapError::NotATap(fd));
        }
        // SAFETY: `dup` was just made and nothing else owns it.
        Self::from_fd(unsafe { OwnedFd::from_raw_fd(dup) }).map_err(|e| match e {
            TapError::NotATap(_) => TapError::NotATap(fd),
            e => e,
        })
    }

    fn setup(file: File, vnet_hdr: bool, name: String) -> Result<Self, TapError> {
        if vnet_hdr {
            let mut sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
            ioctl_ptr(&file, TUNSETVNETHDRSZ, &mut sz).map_err(TapError::Setup)?;
            // No offloads: the tap hands over plain frames.
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
                return Err(TapError::Setup(std::io::Error::last_os_error()));
            }
        }
        Ok(Tap {
            file,
            vnet_hdr,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_taps_by_name_and_by_fd() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return crate::testing::skip("opens_taps_by_name_and_by_fd", "no /dev/net/tun");
        }
        let t = match Tap::open("vfltest0") {
            Ok(t) => t,
            Err(e) => return crate::testing::skip("opens_taps_by_name_and_by_fd", &e.to_string()),
        };
        assert!(t.vnet_hdr);
        // The same tap through its descriptor, as a launcher would pass it.
        let dup = t.file.try_clone().unwrap();
        let again = Tap::from_fd(OwnedFd::from(dup)).unwrap();
        assert_eq!(again.name, "vfltest0");
        assert!(again.vnet_hdr);
        let not = File::open("/dev/null").unwrap();
        assert!(matches!(
            Tap::from_fd(OwnedFd::from(not)),
            Err(TapError::NotATap(_))
        ));
        assert!(matches!(Tap::from_raw(987_654), Err(TapError::NotATap(_))));
        // A descriptor that is not a tap stays open.
        let keep = File::open("/dev/null").unwrap();
        let fd = keep.as_raw_fd();
        assert!(matches!(Tap::from_raw(fd), Err(TapError::NotATap(n)) if n == fd));
        // SAFETY: F_GETFD on a number; no memory involved.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0, "still open");
    }
}
