//! The virtio device options: `--rng`, `--disk`, `--vsock`, `--net`, the
//! same strings in the JSON config file, and the API's shapes (which build
//! these structs directly).

use std::path::PathBuf;

/// A bad device option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    /// A `key=value` list that does not parse.
    #[error("--{0} {1:?}: {2}")]
    Bad(&'static str, String, &'static str),
    /// A disk image that is not there or not an image.
    #[error("disk image {0:?} {1}")]
    Image(PathBuf, &'static str),
    /// A vsock socket path that cannot be bound.
    #[error("vsock socket {0:?} {1}")]
    Socket(PathBuf, &'static str),
}

/// One `--disk`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image.
    pub path: PathBuf,
    /// The guest cannot write.
    pub readonly: bool,
    /// O_DIRECT: no host page cache.
    pub direct: bool,
    /// The serial the guest reads (VIRTIO_BLK_T_GET_ID), at most 20 bytes.
    pub id: Option<String>,
}

/// The `--vsock` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 and up).
    pub cid: u64,
    /// The hybrid vsock unix socket.
    pub socket: PathBuf,
}

/// Where a `--net` device's tap comes from.
#[derive(Clone, Debug)]
pub enum TapSource {
    /// Open (or attach to) the named tap.
    Name(String),
    /// An open tap file descriptor handed to vflaunch.
    Fd(i32),
    /// A tap descriptor passed over the API socket (SCM_RIGHTS).
    Passed(std::sync::Arc<std::os::fd::OwnedFd>),
}

impl PartialEq for TapSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (TapSource::Name(a), TapSource::Name(b)) => a == b,
            (TapSource::Fd(a), TapSource::Fd(b)) => a == b,
            (TapSource::Passed(a), TapSource::Passed(b)) => std::sync::Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for TapSource {}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap.
    pub tap: TapSource,
    /// The guest's MAC address (random locally administered if absent).
    pub mac: Option<[u8; 6]>,
}

/// The virtio devices of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtioConfig {
    /// An entropy device.
    pub rng: bool,
    /// Block devices.
    pub disks: Vec<DiskConfig>,
    /// A vsock device.
    pub vsock: Option<VsockConfig>,
    /// Network devices.
    pub net: Vec<NetConfig>,
}

impl VirtioConfig {
    /// Checks what can be checked before the VM is built: each image is a
    /// regular file or a block device, the vsock socket's directory exists.
    /// (Images are opened and locked, taps attached, when the VM is built.)
    pub fn validate(&self) -> Result<(), OptionError> {
        use std::os::unix::fs::FileTypeExt;
        for d in &self.disks {
            let t = std::fs::metadata(&d.path)
                .map_err(|_| OptionError::Image(d.path.clone(), "does not exist: check the path"))?
                .file_type();
            if !t.is_file() && !t.is_block_device() {
                return Err(OptionError::Image(
                    d.path.clone(),
                    "is not a regular file or a block device: give a raw image",
                ));
            }
        }
        if let Some(v) = &self.vsock {
            let dir = v.socket.parent().filter(|p| !p.as_os_str().is_empty());
            let ok = v.socket.file_name().is_some() && dir.is_none_or(|d| d.is_dir());
            if !ok {
                return Err(OptionError::Socket(
                    v.socket.clone(),
                    "cannot be made: give a path in an existing directory",
                ));
            }
        }
        Ok(())
    }
}

fn pairs<'a>(flag: &'static str, s: &'a str) -> Result<Vec<(&'a str, &'a str)>, OptionError> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| {
                    OptionError::Bad(
                        flag,
                        s.to_string(),
                        "use key=value pairs separated by commas",
                    )
                })
        })
        .collect()
}

fn on_off(flag: &'static str, s: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(OptionError::Bad(
            flag,
            s.to_string(),
            "switches are on or off",
        )),
    }
}

/// Parses `path=IMG[,readonly=on][,direct=on][,id=NAME]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, OptionError> {
    let mut d = DiskConfig::default();
    let bad = |why| OptionError::Bad("disk", s.to_string(), why);
    for (k, v) in pairs("disk", s)? {
        match k {
            "path" => d.path = PathBuf::from(v),
            "readonly" => d.readonly = on_off("disk", s, v)?,
            "direct" => d.direct = on_off("disk", s, v)?,
            "id" if v.len() <= 20 => d.id = Some(v.to_string()),
            "id" => return Err(bad("id is at most 20 bytes")),
            _ => return Err(bad("keys are path, readonly, direct and id")),
        }
    }
    if d.path.as_os_str().is_empty() {
        return Err(bad("path=IMG is required"));
    }
    Ok(d)
}

/// Parses `cid=N,socket=PATH`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, OptionError> {
    let bad = |why| OptionError::Bad("vsock", s.to_string(), why);
    let (mut cid, mut socket) = (None, None);
    for (k, v) in pairs("vsock", s)? {
        match k {
            "cid" => cid = Some(v.parse::<u64>().map_err(|_| bad("cid is a number"))?),
            "socket" => socket = Some(PathBuf::from(v)),
            _ => return Err(bad("keys are cid and socket")),
        }
    }
    match (cid, socket) {
        (Some(cid), Some(socket)) if (3..u64::from(u32::MAX)).contains(&cid) => {
            Ok(VsockConfig { cid, socket })
        }
        (Some(_), Some(_)) => Err(bad("cid must be 3 or more (0-2 are reserved)")),
        _ => Err(bad("cid=N and socket=PATH are required")),
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Parses `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`.
pub fn parse_net(s: &str) -> Result<NetConfig, OptionError> {
    let bad = |why| OptionError::Bad("net", s.to_string(), why);
    let (mut tap, mut mac) = (None, None);
    for (k, v) in pairs("net", s)? {
        match k {
            "tap" if v.len() < 16 => tap = Some(TapSource::Name(v.to_string())),
            "tap" => return Err(bad("a tap name is at most 15 bytes")),
            "fd" => {
                let fd = v.parse::<i32>().ok().filter(|fd| *fd >= 0);
                tap = Some(TapSource::Fd(
                    fd.ok_or_else(|| bad("fd is a file descriptor number"))?,
                ));
            }
            "mac" => mac = Some(parse_mac(v).ok_or_else(|| bad("mac is like 52:54:00:12:34:56"))?),
            _ => return Err(bad("keys are tap, fd and mac")),
        }
    }
    let tap = tap.ok_or_else(|| bad("tap=NAME or fd=N is required"))?;
    Ok(NetConfig { tap, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks() {
        let d = parse_disk("path=/i.raw,readonly=on,direct=off,id=root").unwrap();
        assert_eq!(d.path, PathBuf::from("/i.raw"));
        assert!(d.readonly && !d.direct);
        assert_eq!(d.id.as_deref(), Some("root"));
        assert!(parse_disk("readonly=on").is_err(), "no path");
        assert!(parse_disk("path=/i,readonly=maybe").is_err());
        assert!(parse_disk("path=/i,colour=red").is_err());
        assert!(parse_disk("path=/i,id=123456789012345678901").is_err());
        assert!(parse_disk("/i.raw").is_err());
    }

    #[test]
    fn validate_checks_images_and_socket_dirs() {
        let img = tempfile::NamedTempFile::new().unwrap();
        let mut v = VirtioConfig {
            disks: vec![parse_disk(&format!("path={}", img.path().display())).unwrap()],
            vsock: Some(parse_vsock("cid=3,socket=/tmp/v.sock").unwrap()),
            ..Default::default()
        };
        assert_eq!(v.validate(), Ok(()));
        v.disks[0].path = "/nonexistent.img".into();
        assert!(v
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        v.disks[0].path = "/tmp".into();
        assert!(v
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        v.disks.clear();
        v.vsock = Some(parse_vsock("cid=3,socket=/nonexistent/v.sock").unwrap());
        assert!(v.validate().is_err());
    }

    #[test]
    fn vsock_and_net() {
        let v = parse_vsock("cid=3,socket=/run/v.sock").unwrap();
        assert_eq!((v.cid, v.socket), (3, PathBuf::from("/run/v.sock")));
        assert!(parse_vsock("cid=2,socket=/x").is_err(), "reserved CID");
        assert!(parse_vsock("cid=3").is_err());
        let n = parse_net("tap=tap0,mac=52:54:00:12:34:56").unwrap();
        assert_eq!(n.tap, TapSource::Name("tap0".into()));
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(parse_net("fd=7").unwrap().tap, TapSource::Fd(7));
        assert!(parse_net("mac=52:54:00:12:34:56").is_err(), "no tap");
        assert!(parse_net("tap=x,mac=52:54:00:12:34").is_err());
        assert!(parse_net("fd=-1").is_err());
        assert_eq!(parse_mac("01:02:03:04:05:06:07"), None);
    }
}
