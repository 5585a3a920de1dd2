//! Kernel support for VFIO: VFIO, vfio-pci, the type1 IOMMU backend and
//! iommufd/cdev, from the kernel config when one is readable
//! (`/proc/config.gz`, `/boot/config-<release>`), else from what sysfs and
//! `/dev` show; then the two unsafe VFIO modes.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use flate2::read::GzDecoder;

use super::{dir_names, param_set, read_text, read_value, Line};
use crate::host::checks::{HostPaths, UNSAFE_IRQ_PARAM};

/// The most of a (decompressed) kernel config that is read.
const MAX_CONFIG: u64 = 16 << 20;
/// vfio's no-IOMMU mode parameter.
pub(super) const NOIOMMU_PARAM: &str = "module/vfio/parameters/enable_unsafe_noiommu_mode";

/// The kernel config, with where it came from.
struct Config {
    path: PathBuf,
    text: String,
}

impl Config {
    fn load(p: &HostPaths) -> Option<Config> {
        let gz = p.proc.join("config.gz");
        if let Ok(file) = File::open(&gz) {
            let mut text = String::new();
            if GzDecoder::new(file)
                .take(MAX_CONFIG)
                .read_to_string(&mut text)
                .is_ok()
            {
                return Some(Config { path: gz, text });
            }
        }
        let release = read_value(&p.proc.join("sys/kernel/osrelease"))?;
        let path = p.boot.join(format!("config-{release}"));
        let mut text = String::new();
        File::open(&path)
            .ok()?
            .take(MAX_CONFIG)
            .read_to_string(&mut text)
            .ok()?;
        Some(Config { path, text })
    }

    /// `y`, `m`, or None (not set).
    fn value(&self, symbol: &str) -> Option<char> {
        self.text.lines().find_map(|l| {
            let v = l.strip_prefix(symbol)?.strip_prefix('=')?;
            match v.trim() {
                "y" => Some('y'),
                "m" => Some('m'),
                _ => None,
            }
        })
    }
}

/// One kernel feature: the config symbol, where it shows when present, and how to load it.
struct Feature {
    name: &'static str,
    symbol: &'static str,
    present: &'static [&'static str],
    load: &'static str,
}

const FEATURES: [Feature; 3] = [
    Feature {
        name: "kernel: VFIO",
        symbol: "CONFIG_VFIO",
        present: &["sys/module/vfio", "dev/vfio/vfio"],
        load: "modprobe vfio-pci",
    },
    Feature {
        name: "kernel: vfio-pci",
        symbol: "CONFIG_VFIO_PCI",
        present: &["sys/bus/pci/drivers/vfio-pci"],
        load: "modprobe vfio-pci",
    },
    Feature {
        name: "kernel: VFIO type1 IOMMU",
        symbol: "CONFIG_VFIO_IOMMU_TYPE1",
        present: &["sys/module/vfio_iommu_type1"],
        load: "modprobe vfio_iommu_type1 (vfio-pci loads it)",
    },
];

fn rooted(p: &HostPaths, rel: &str) -> PathBuf {
    match rel.split_once('/') {
        Some(("sys", rest)) => p.sys.join(rest),
        Some(("dev", rest)) => p.dev.join(rest),
        _ => p.proc.join(rel),
    }
}

fn any_exists(p: &HostPaths, rels: &[&str]) -> bool {
    rels.iter().any(|r| rooted(p, r).exists())
}

fn feature_line(p: &HostPaths, cfg: Option<&Config>, f: &Feature) -> Line {
    let loaded = any_exists(p, f.present);
    let rebuild = format!(
        "use a kernel built with {}=y or =m (a distribution kernel has it)",
        f.symbol
    );
    match cfg {
        Some(cfg) => {
            let from = cfg.path.display();
            match cfg.value(f.symbol) {
                Some('y') => Line::ok(f.name, format!("built in ({}=y in {from})", f.symbol)),
                Some(_) if loaded => Line::ok(f.name, format!("module, loaded ({}=m in {from})", f.symbol)),
                Some(_) => Line::warn(f.name, format!("module, not loaded ({}=m in {from})", f.symbol), f.load),
                None => Line::failed(f.name, format!("{} is not set in {from}", f.symbol), rebuild),
            }
        }
        None if loaded => Line::ok(f.name, "present (no kernel config readable; seen in sysfs or /dev)"),
        None => Line::warn(
            f.name,
            "not loaded, and no kernel config (/proc/config.gz, /boot/config-<release>) tells whether it is built",
            format!("{}; if that fails, {rebuild}", f.load),
        ),
    }
}

pub(super) fn check(p: &HostPaths, out: &mut Vec<Line>) {
    let cfg = Config::load(p);
    for f in &FEATURES {
        out.push(feature_line(p, cfg.as_ref(), f));
    }
    let name = "kernel: iommufd / VFIO cdev";
    // /dev/iommu is what `auto` looks for; /sys/class/vfio-dev exists on any vfio kernel.
    let seen = p.dev.join("iommu").exists();
    let configured = cfg.as_ref().map(|c| {
        (
            c.value("CONFIG_IOMMUFD").is_some(),
            c.value("CONFIG_VFIO_DEVICE_CDEV").is_some(),
        )
    });
    out.push(match (seen, configured) {
        (true, _) | (_, Some((true, true))) => Line::ok(
            name,
            "available (`--vfio-backend auto` or `iommufd` uses it)",
        ),
        _ => Line::ok(
            name,
            "not available (`--vfio-backend auto` uses the VFIO group backend)",
        ),
    });

    let name = "VFIO no-IOMMU mode";
    let noiommu_groups: Vec<String> = dir_names(&p.sys.join("kernel/iommu_groups"))
        .into_iter()
        .filter(|g| {
            read_text(&p.sys.join(format!("kernel/iommu_groups/{g}/name")))
                .is_ok_and(|n| n.contains("vfio-noiommu"))
                || p.dev.join(format!("vfio/noiommu-{g}")).exists()
        })
        .collect();
    let why = "a no-IOMMU device can DMA anywhere in host memory, so it cannot be given to a VM: a VM needs a real or virtual IOMMU (for a VM used as a node, give it a vIOMMU, e.g. QEMU's -device intel-iommu,intremap=on, which is what this project's test rig does); vflaunch refuses no-IOMMU groups";
    let fix = format!("echo N > /sys/{NOIOMMU_PARAM} (and drop vfio.enable_unsafe_noiommu_mode=1 from the kernel command line and /etc/modprobe.d), then enable the IOMMU");
    out.push(
        if param_set(&p.sys.join(NOIOMMU_PARAM)) || !noiommu_groups.is_empty() {
            let groups = if noiommu_groups.is_empty() {
                String::new()
            } else {
                format!(" (no-IOMMU groups: {})", noiommu_groups.join(" "))
            };
            Line::failed(name, format!("enabled{groups}: {why}"), fix)
        } else {
            let built = cfg
                .as_ref()
                .and_then(|c| c.value("CONFIG_VFIO_NOIOMMU"))
                .is_some();
            Line::ok(
                name,
                if built {
                    "off (the kernel has CONFIG_VFIO_NOIOMMU, not enabled)"
                } else {
                    "off"
                },
            )
        },
    );

    let name = "VFIO unsafe interrupts";
    out.push(if param_set(&p.sys.join(UNSAFE_IRQ_PARAM)) {
        Line::warn(
            name,
            "vfio_iommu_type1 allow_unsafe_interrupts=Y: on a host without interrupt remapping, a passed-through device can send MSI writes that the host takes as any interrupt vector (of the host or of other guests)",
            format!("echo N > /sys/{UNSAFE_IRQ_PARAM}, unless this host has no interrupt remapping and you accept that"),
        )
    } else {
        Line::ok(name, "not allowed (allow_unsafe_interrupts unset)")
    });
}

/// Whether `path` is this module's config source (for tests).
#[cfg(test)]
pub(super) fn config_path(p: &HostPaths) -> Option<PathBuf> {
    Config::load(p).map(|c| c.path)
}
