//! Tests for sizes, the JSON config file and validation.

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
