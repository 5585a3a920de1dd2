//! The VM configuration: [`VmConfig`] (what the VMM boots), the optional
//! JSON file form [`FileConfig`], and size parsing shared with the CLI.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

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
    #[error("invalid VM config JSON in {path}: fields are kernel, initramfs, cmdline, memory, cpus, devices, hugepages, allow_unsafe_interrupts")]
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
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn from_json(s: &str) -> Result<FileConfig, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_size("512mib").unwrap(), 512 * MIB);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("2gib").unwrap(), 2 << 30);
        assert_eq!(parse_size("1048576K").unwrap(), 1 << 30);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096b").unwrap(), 4096);
        assert_eq!(parse_size("512").unwrap(), 512 * MIB);
        assert_eq!(parse_size(" 64 M ").unwrap(), 64 * MIB);
    }

    #[test]
    fn parse_size_rejects_garbage() {
        for bad in ["", "M", "-1M", "1.5G", "2GB", "12X", "0x10M", "1 2M", "+5M"] {
            assert!(
                matches!(parse_size(bad), Err(ConfigError::InvalidSize(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parse_size_is_overflow_safe() {
        assert!(matches!(
            parse_size("99999999999999999999999"),
            Err(ConfigError::SizeTooLarge(_))
        ));
        assert!(matches!(
            parse_size("17179869184T"),
            Err(ConfigError::SizeTooLarge(_))
        ));
        assert_eq!(parse_size("16777215T").unwrap(), 16777215 << 40);
    }

    #[test]
    fn format_size_picks_largest_exact_unit() {
        assert_eq!(format_size(512 * MIB), "512 MiB");
        assert_eq!(format_size(2 << 30), "2 GiB");
        assert_eq!(format_size(1536), "1536 bytes");
        assert_eq!(format_size(0), "0 bytes");
        assert_eq!(format_size(3 << 10), "3 KiB");
    }

    #[test]
    fn file_config_full() {
        let f = from_json(
            r#"{"kernel": "/k", "initramfs": "/i", "cmdline": "quiet", "memory": "1G",
                "cpus": 4, "devices": ["0000:03:02.1", "04:00.0"], "allow_unsafe_interrupts": true}"#,
        )
        .unwrap();
        assert_eq!(f.kernel, Some(PathBuf::from("/k")));
        assert_eq!(f.initramfs, Some(PathBuf::from("/i")));
        assert_eq!(f.cmdline.as_deref(), Some("quiet"));
        assert_eq!(f.memory, Some(1 << 30));
        assert_eq!(f.cpus, Some(4));
        let devices = f.devices.unwrap();
        assert_eq!(devices[1].to_string(), "0000:04:00.0");
        assert_eq!(f.allow_unsafe_interrupts, Some(true));
    }

    #[test]
    fn file_config_memory_number_is_mib_and_fields_optional() {
        let f = from_json(r#"{"memory": 256}"#).unwrap();
        assert_eq!(f.memory, Some(256 * MIB));
        assert!(f.kernel.is_none() && f.devices.is_none() && f.cpus.is_none());
        let f = from_json("{}").unwrap();
        assert!(f.memory.is_none());
    }

    #[test]
    fn file_config_errors() {
        let err = from_json(r#"{"kernal": "/k"}"#).unwrap_err();
        assert!(err.to_string().contains("kernal"), "{err}");
        for bad in [
            r#"{"memory": "lots"}"#,
            r#"{"memory": 18446744073709551615}"#,
            r#"{"cpus": 300}"#,
            r#"{"devices": ["0000:03:02.9"]}"#,
            r#"{"devices": "0000:03:02.1"}"#,
            "[1,2]",
            "",
        ] {
            assert!(from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_config_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        fs::write(&path, r#"{"cpus": 2}"#).unwrap();
        assert_eq!(FileConfig::load(&path).unwrap().cpus, Some(2));
        fs::write(&path, "{oops").unwrap();
        assert!(matches!(
            FileConfig::load(&path),
            Err(ConfigError::JsonFile { .. })
        ));
        assert!(matches!(
            FileConfig::load(&dir.path().join("missing.json")),
            Err(ConfigError::ReadFile { .. })
        ));
    }

    fn valid_config(dir: &Path) -> VmConfig {
        let kernel = dir.join("bzImage");
        fs::write(&kernel, b"kernel").unwrap();
        VmConfig::new(kernel)
    }

    #[test]
    fn validate_accepts_defaults_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = valid_config(dir.path());
        cfg.validate().unwrap();
        cfg.memory = MIN_MEMORY;
        cfg.cpus = MAX_CPUS;
        cfg.validate().unwrap();
        cfg.memory = MAX_MEMORY;
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_checks_images() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = valid_config(dir.path());
        cfg.initramfs = Some(dir.path().join("nope.img"));
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::FileMissing {
                what: "initramfs",
                ..
            })
        ));
        cfg.initramfs = None;
        cfg.kernel = dir.path().to_path_buf();
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::NotAFile { what: "kernel", .. })
        ));
        cfg.kernel = dir.path().join("missing");
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(
            msg.starts_with("kernel ") && msg.contains("missing"),
            "{msg}"
        );
    }

    #[test]
    fn validate_checks_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let base = valid_config(dir.path());
        let check = |f: &dyn Fn(&mut VmConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            check(&|c| c.memory = 32 * MIB),
            ConfigError::MemoryOutOfRange(_)
        ));
        assert!(matches!(
            check(&|c| c.memory = MAX_MEMORY + MEMORY_ALIGN),
            ConfigError::MemoryOutOfRange(_)
        ));
        let err = check(&|c| c.memory = 513 * MIB);
        assert!(matches!(err, ConfigError::MemoryUnaligned(_)));
        assert!(err.to_string().contains("513 MiB"), "{err}");
        assert!(matches!(check(&|c| c.cpus = 0), ConfigError::Cpus(0)));
        assert!(matches!(check(&|c| c.cpus = 33), ConfigError::Cpus(33)));
        assert!(matches!(
            check(&|c| c.cmdline = "x".repeat(MAX_CMDLINE_LEN)),
            ConfigError::CmdlineTooLong(2048)
        ));
        assert!(matches!(
            check(&|c| c.cmdline = "a\0b".into()),
            ConfigError::CmdlineChar { ch: '\0', at: 1 }
        ));
        let err = check(&|c| c.cmdline = " console=ttyS0\tquiet".into());
        assert!(
            matches!(err, ConfigError::CmdlineChar { ch: '\t', at: 14 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("printable ASCII"), "{err}");
        assert!(matches!(
            check(&|c| c.cmdline = "root=/dev/vda é".into()),
            ConfigError::CmdlineChar { ch: 'é', .. }
        ));
        let mut ok = base.clone();
        ok.cmdline = "console=ttyS0 quiet\n".into();
        ok.validate().unwrap();
    }
}
