//! The VM configuration: [`VmConfig`] (what the VMM boots), the optional
//! JSON file form [`FileConfig`], and size parsing shared with the CLI.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::host::backend::{BackendChoice, Preopened};
use crate::host::bdf::Bdf;

/// Guest memory used when none is given: 512 MiB.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";
/// Largest supported vCPU count.
pub const MAX_CPUS: u8 = 32;
/// Smallest supported guest memory: 64 MiB.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Largest supported guest memory: 1 TiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// Guest memory must be a multiple of this (2 MiB, one huge page).
pub const MEMORY_ALIGN: u64 = 2 << 20;
/// The kernel command line must be shorter than this many bytes.
pub const MAX_CMDLINE_LEN: usize = 2048;

/// Errors from parsing sizes, reading the config file and validating a [`VmConfig`].
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A size string could not be parsed.
    #[error("invalid size {0:?}: use a whole number with an optional unit K, M, G or T (binary, e.g. 512M, 2GiB); a plain number is MiB")]
    InvalidSize(String),
    /// A size does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    SizeTooLarge(String),
    /// The config file could not be read (missing, not a regular file,
    /// over the size cap, not text).
    #[error("cannot read config file {path}: check the --config path")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::bounded::ReadError,
    },
    /// The config file's JSON is malformed or has an unknown field.
    #[error("invalid VM config JSON in {path}: fields are kernel, initramfs, cmdline, memory, cpus, devices, hugepages, allow_unsafe_interrupts, vfio_backend, rng, disks, vsock, net")]
    JsonFile {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The kernel or initramfs does not exist.
    #[error("{what} {path} does not exist: check the path")]
    FileMissing {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The kernel or initramfs is not a regular file.
    #[error("{what} {path} is not a regular file: give the path of the image file itself")]
    NotAFile {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The kernel or initramfs exists but cannot be opened.
    #[error("cannot open {what} {path}: check its permissions")]
    FileUnreadable {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Guest memory is outside 64 MiB..=1 TiB.
    #[error("memory {} is out of range: use 64M to 1T", format_size(*.0))]
    MemoryOutOfRange(u64),
    /// Guest memory is not a multiple of 2 MiB.
    #[error("memory {} is not a multiple of 2 MiB: round it, e.g. 512M", format_size(*.0))]
    MemoryUnaligned(u64),
    /// The vCPU count is outside 1..=MAX_CPUS.
    #[error("cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u8),
    /// The kernel command line is too long.
    #[error("kernel command line is {0} bytes: keep it under {MAX_CMDLINE_LEN}")]
    CmdlineTooLong(usize),
    /// The kernel command line has a character the boot protocol cannot carry.
    #[error("kernel command line has the character {ch:?} at byte {at}: use printable ASCII only, with parameters separated by spaces")]
    CmdlineChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A `--serial` value that is not a mode.
    #[error("--serial {0:?}: use tty, null, off, file=PATH or socket=PATH")]
    Serial(String),
    /// A virtio device option.
    #[error(transparent)]
    Virtio(#[from] crate::virtio::options::OptionError),
}

/// Formats a byte count for messages: "512 MiB", "1 GiB", or "1234 bytes".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Parses a size: `512M`, `512MiB`, `2G`, `2GiB`, `1048576K`, `1T`, `4096B`;
/// a plain number is MiB (`512` → 512 MiB). Units are binary and case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mib" => 20,
        "b" => 0,
        "k" | "kib" => 10,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(ConfigError::InvalidSize(s.to_string())),
    };
    if num.is_empty() {
        return Err(ConfigError::InvalidSize(s.to_string()));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| ConfigError::SizeTooLarge(s.to_string()))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| ConfigError::SizeTooLarge(s.to_string()))
}

/// The JSON config file (`--config vm.json`). Every field is optional and
/// uses the CLI's name; CLI flags override it. Unknown fields are an error.
///
/// ```json
/// {"kernel": "bzImage", "initramfs": "initrd.img", "cmdline": "console=ttyS0",
///  "memory": "1G", "cpus": 2, "devices": ["0000:03:02.1"],
///  "hugepages": false, "allow_unsafe_interrupts": false}
/// ```
/// Relative paths are used as given (relative to the current directory).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Kernel image (bzImage or ELF vmlinux).
    pub kernel: Option<PathBuf>,
    /// Initramfs image.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Guest memory in bytes; in JSON a size string (`"512M"`) or a number of MiB (`512`).
    #[serde(default, deserialize_with = "de_memory")]
    pub memory: Option<u64>,
    /// Number of vCPUs.
    pub cpus: Option<u8>,
    /// PCI devices to pass through.
    pub devices: Option<Vec<Bdf>>,
    /// Back guest RAM with 2 MiB huge pages.
    pub hugepages: Option<bool>,
    /// Run even without host interrupt remapping.
    pub allow_unsafe_interrupts: Option<bool>,
    /// `auto`, `group` or `iommufd`.
    pub vfio_backend: Option<BackendChoice>,
    /// A virtio entropy device.
    pub rng: Option<bool>,
    /// virtio-blk disks, each as `--disk` takes it.
    pub disks: Option<Vec<String>>,
    /// A virtio-vsock device, as `--vsock` takes it.
    pub vsock: Option<String>,
    /// virtio-net devices, each as `--net` takes it.
    pub net: Option<Vec<String>>,
}

/// Deserializes `"memory"` from a size string or a number of MiB.
fn de_memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Mib(u64),
        Text(String),
    }
    let bytes = match Size::deserialize(d)? {
        Size::Mib(mib) => mib
            .checked_mul(1 << 20)
            .ok_or_else(|| serde::de::Error::custom(format!("memory {mib} MiB is too large")))?,
        Size::Text(text) => parse_size(&text).map_err(serde::de::Error::custom)?,
    };
    Ok(Some(bytes))
}

impl FileConfig {
    /// Reads and parses a JSON config file: a regular file of at most
    /// [`crate::bounded::CONFIG_MAX`] bytes.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use crate::bounded::{read_text, Kind, CONFIG_MAX};
        let text =
            read_text(path, CONFIG_MAX, Kind::Regular).map_err(|source| ConfigError::ReadFile {
                path: path.to_path_buf(),
                source,
            })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::JsonFile {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Where the guest's serial console (COM1) goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialMode {
    /// This process's stdout, and stdin for input (raw mode on a terminal).
    #[default]
    Tty,
    /// A UART whose output is discarded.
    Null,
    /// No UART at all.
    Off,
    /// Appended to a file.
    File(PathBuf),
    /// A unix socket that a console client attaches to at any time.
    Socket(PathBuf),
}

/// Parses `--serial tty|null|off|file=PATH|socket=PATH`.
pub fn parse_serial(s: &str) -> Result<SerialMode, ConfigError> {
    match s {
        "tty" => Ok(SerialMode::Tty),
        "null" => Ok(SerialMode::Null),
        "off" => Ok(SerialMode::Off),
        _ => {
            let file = s.strip_prefix("file=").filter(|p| !p.is_empty());
            let socket = s.strip_prefix("socket=").filter(|p| !p.is_empty());
            match (file, socket) {
                (Some(p), _) => Ok(SerialMode::File(PathBuf::from(p))),
                (_, Some(p)) => Ok(SerialMode::Socket(PathBuf::from(p))),
                _ => Err(ConfigError::Serial(s.to_string())),
            }
        }
    }
}

/// Everything the VMM needs to boot one guest.
#[derive(Clone, Debug, PartialEq)]
pub struct VmConfig {
    /// Kernel image (bzImage or ELF vmlinux).
    pub kernel: PathBuf,
    /// Optional initramfs image.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in bytes: a multiple of 2 MiB, 64 MiB..=1 TiB.
    pub memory: u64,
    /// Number of vCPUs, 1..=[`MAX_CPUS`].
    pub cpus: u8,
    /// PCI devices to pass through, in the given order; the intake merges a
    /// device named more than once (by flags, the file or the pod), so each
    /// appears once.
    pub devices: Vec<Bdf>,
    /// Back guest RAM with 2 MiB huge pages.
    pub hugepages: bool,
    /// Run even if the host has no interrupt remapping.
    pub allow_unsafe_interrupts: bool,
    /// Where COM1 goes.
    pub serial: SerialMode,
    /// The VFIO interface asked for.
    pub vfio_backend: BackendChoice,
    /// Descriptors a launcher opened for the VM.
    pub preopened: Preopened,
    /// virtio devices.
    pub virtio: crate::virtio::options::VirtioConfig,
}

impl VmConfig {
    /// A config with the given kernel and defaults for everything else.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: DEFAULT_MEMORY,
            cpus: 1,
            devices: Vec::new(),
            hugepages: false,
            allow_unsafe_interrupts: false,
            serial: SerialMode::Tty,
            vfio_backend: BackendChoice::Auto,
            preopened: Preopened::default(),
            virtio: Default::default(),
        }
    }

    /// Checks that the images are readable regular files and that every
    /// value is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_image("kernel", &self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            check_image("initramfs", initramfs)?;
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory) {
            return Err(ConfigError::MemoryOutOfRange(self.memory));
        }
        if self.memory % MEMORY_ALIGN != 0 {
            return Err(ConfigError::MemoryUnaligned(self.memory));
        }
        if !(1..=MAX_CPUS).contains(&self.cpus) {
            return Err(ConfigError::Cpus(self.cpus));
        }
        if self.cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        // What the loader takes: leading and trailing white space is
        // trimmed, the rest must be printable ASCII.
        let lead = self.cmdline.len() - self.cmdline.trim_start().len();
        if let Some((i, ch)) = self
            .cmdline
            .trim()
            .char_indices()
            .find(|&(_, c)| !matches!(c, ' '..='~'))
        {
            return Err(ConfigError::CmdlineChar { ch, at: lead + i });
        }
        self.virtio.validate()?;
        Ok(())
    }
}

/// Checks that `path` is an existing, readable regular file.
fn check_image(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::FileMissing {
            what,
            path: path.to_path_buf(),
        },
        _ => ConfigError::FileUnreadable {
            what,
            path: path.to_path_buf(),
            source,
        },
    })?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    fs::File::open(path).map_err(|source| ConfigError::FileUnreadable {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
