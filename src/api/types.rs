//! Cloud Hypervisor's JSON shapes for the parts vflaunch reads, and the
//! rule for everything else: a field whose value asks for nothing vflaunch
//! lacks is accepted (and echoed back in `vm.info`); a value that needs a
//! missing feature is refused, naming the field and the value. Unknown
//! fields are ignored, as Kata's generated client expects.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{VmConfig, MAX_CPUS};
use crate::host::bdf::Bdf;

/// Huge page size vflaunch backs guest RAM with.
const HUGEPAGE_SIZE: u64 = 2 << 20;

/// A request body vflaunch cannot honour, as the 4xx message says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON, or not the shape asked for.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// A required field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field asks for something vflaunch does not have.
    #[error("{field}={value} is not supported: {why}")]
    Unsupported {
        /// The field, dotted (`cpus.max_vcpus`).
        field: String,
        /// Its value, as JSON.
        value: String,
        /// What vflaunch lacks, or what to send instead.
        why: &'static str,
    },
}

fn unsupported(field: &str, value: impl Serialize, why: &'static str) -> RequestError {
    RequestError::Unsupported {
        field: field.to_string(),
        value: serde_json::to_string(&value).unwrap_or_default(),
        why,
    }
}

/// `payload`.
#[derive(Debug, Default, Deserialize)]
pub struct Payload {
    /// Kernel image path.
    pub kernel: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Initramfs path.
    pub initramfs: Option<PathBuf>,
    /// Firmware image (not supported).
    pub firmware: Option<String>,
    /// IGVM file (not supported).
    pub igvm: Option<String>,
}

/// `cpus.topology`.
#[derive(Debug, Default, Deserialize)]
pub struct Topology {
    /// Threads per core.
    pub threads_per_core: Option<u32>,
    /// Dies per package.
    pub dies_per_package: Option<u32>,
    /// Packages.
    pub packages: Option<u32>,
}

/// `cpus`.
#[derive(Debug, Deserialize)]
pub struct Cpus {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// vCPUs after hotplug.
    pub max_vcpus: Option<u32>,
    /// CPU topology.
    pub topology: Option<Topology>,
    /// Hyper-V enlightenments.
    #[serde(default)]
    pub kvm_hyperv: bool,
}

/// `memory`.
#[derive(Debug, Deserialize)]
pub struct Memory {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Back RAM with huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Huge page size in bytes.
    pub hugepage_size: Option<u64>,
    /// KSM merging.
    #[serde(default)]
    pub mergeable: bool,
    /// Memory zones.
    #[serde(default)]
    pub zones: Vec<Value>,
}

/// One `devices[]` entry, also the body of `vm.add-device`.
#[derive(Debug, Deserialize)]
pub struct Device {
    /// `/sys/bus/pci/devices/<BDF>`, with or without a trailing slash.
    pub path: Option<String>,
    /// The caller's name for the device.
    pub id: Option<String>,
    /// Put the device behind a virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// PCI segment.
    #[serde(default)]
    pub pci_segment: u16,
}

impl Device {
    /// The host address in `path`, checked.
    pub fn bdf(&self, field: &str) -> Result<Bdf, RequestError> {
        if self.iommu {
            return Err(unsupported(
                &format!("{field}.iommu"),
                true,
                "there is no virtual IOMMU; the host IOMMU isolates the device",
            ));
        }
        let path = self.path.as_deref().ok_or(RequestError::Missing("path"))?;
        let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        if !path.starts_with("/sys/bus/pci/devices/") {
            return Err(unsupported(
                &format!("{field}.path"),
                path,
                "give /sys/bus/pci/devices/<BDF>",
            ));
        }
        name.parse().map_err(|_| {
            unsupported(
                &format!("{field}.path"),
                path,
                "the last component must be a PCI address like 0000:03:02.1",
            )
        })
    }
}

/// `serial` / `console`.
#[derive(Debug, Deserialize)]
pub struct Console {
    /// Off, Null, Tty, Pty, File or Socket.
    pub mode: String,
    /// With File.
    pub file: Option<PathBuf>,
    /// With Socket.
    pub socket: Option<PathBuf>,
}

/// `platform`.
#[derive(Debug, Default, Deserialize)]
pub struct Platform {
    /// PCI segments (host bridges) asked for.
    pub num_pci_segments: Option<u16>,
    /// Segments behind a virtual IOMMU.
    #[serde(default)]
    pub iommu_segments: Vec<u16>,
    /// Intel TDX.
    #[serde(default)]
    pub tdx: bool,
    /// AMD SEV-SNP.
    #[serde(default)]
    pub sev_snp: bool,
    /// The iommufd VFIO backend.
    #[serde(default)]
    pub iommufd: bool,
}

/// The fields of `vm.create`'s `VmConfig` that vflaunch reads.
#[derive(Debug, Deserialize)]
pub struct CreateBody {
    /// Kernel, initramfs, command line.
    pub payload: Option<Payload>,
    /// vCPUs.
    pub cpus: Option<Cpus>,
    /// RAM.
    pub memory: Option<Memory>,
    /// Passed-through devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// COM1.
    pub serial: Option<Console>,
    /// virtio-console.
    pub console: Option<Console>,
    /// Platform options.
    pub platform: Option<Platform>,
    /// A virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// A watchdog device.
    #[serde(default)]
    pub watchdog: bool,
    /// A pvpanic device.
    #[serde(default)]
    pub pvpanic: bool,
    /// Landlock sandboxing of the VMM.
    #[serde(default)]
    pub landlock_enable: bool,
}

/// Virtio and other device lists vflaunch does not have yet: present and
/// non-empty means refused.
const MISSING_DEVICES: [(&str, &str); 10] = [
    ("disks", "virtio-blk is not available yet"),
    ("net", "virtio-net is not available yet"),
    ("fs", "virtio-fs is not available"),
    ("vsock", "virtio-vsock is not available yet"),
    ("pmem", "virtio-pmem is not available"),
    ("vdpa", "vDPA is not available"),
    ("user_devices", "vfio-user is not available"),
    ("numa", "guest NUMA is not available"),
    ("tpm", "a TPM is not available"),
    ("balloon", "virtio-balloon is not available"),
];

/// What `vm.create` asks for, as vflaunch will run it.
#[derive(Debug)]
pub struct CreateRequest {
    /// The VM.
    pub config: VmConfig,
    /// The caller's id of each device, in `config.devices` order.
    pub device_ids: Vec<Option<String>>,
    /// COM1 mode: `Off`, `Null`, `Tty` (the default), `File` or `Socket`.
    pub serial: Console,
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(_) => true,
        Value::Bool(b) => *b,
        _ => true,
    }
}

/// Parses and checks a `vm.create` body.
pub fn create_request(body: &Value) -> Result<CreateRequest, RequestError> {
    for (field, why) in MISSING_DEVICES {
        if let Some(v) = body.get(field).filter(|v| present(v)) {
            return Err(unsupported(field, v, why));
        }
    }
    let b: CreateBody =
        serde_json::from_value(body.clone()).map_err(|e| RequestError::Json(e.to_string()))?;
    for (field, on, why) in [
        ("iommu", b.iommu, "there is no virtual IOMMU"),
        ("watchdog", b.watchdog, "there is no watchdog device"),
        ("pvpanic", b.pvpanic, "there is no pvpanic device"),
        (
            "landlock_enable",
            b.landlock_enable,
            "Landlock is not available; use --seccomp",
        ),
    ] {
        if on {
            return Err(unsupported(field, true, why));
        }
    }
    let payload = b.payload.unwrap_or_default();
    if let Some(f) = &payload.firmware {
        return Err(unsupported(
            "payload.firmware",
            f,
            "vflaunch boots a kernel directly: give payload.kernel",
        ));
    }
    if let Some(f) = &payload.igvm {
        return Err(unsupported("payload.igvm", f, "give payload.kernel"));
    }
    let kernel = payload
        .kernel
        .ok_or(RequestError::Missing("payload.kernel"))?;
    let mut config = VmConfig::new(kernel);
    config.initramfs = payload.initramfs;
    if let Some(c) = payload.cmdline {
        config.cmdline = c;
    }
    if let Some(cpus) = b.cpus {
        apply_cpus(&mut config, &cpus)?;
    }
    if let Some(m) = b.memory {
        apply_memory(&mut config, &m)?;
    }
    if let Some(p) = b.platform {
        check_platform(&p)?;
        if p.iommufd {
            config.vfio_backend = crate::host::backend::BackendChoice::Iommufd;
        }
    }
    let mut device_ids = Vec::new();
    for (i, d) in b.devices.iter().enumerate() {
        let field = format!("devices[{i}]");
        let bdf = d.bdf(&field)?;
        if !config.devices.contains(&bdf) {
            config.devices.push(bdf);
            device_ids.push(d.id.clone());
        }
        if d.pci_segment != 0 {
            log::info!("{bdf}: asked for PCI segment {}; vflaunch has one segment, the device goes on segment 0", d.pci_segment);
        }
    }
    if let Some(c) = b.console.as_ref().filter(|c| c.mode != "Off") {
        return Err(unsupported(
            "console.mode",
            &c.mode,
            "virtio-console is not available: use serial",
        ));
    }
    let serial = b.serial.unwrap_or(Console {
        mode: "Tty".into(),
        file: None,
        socket: None,
    });
    check_serial(&serial)?;
    Ok(CreateRequest {
        config,
        device_ids,
        serial,
    })
}

fn apply_cpus(config: &mut VmConfig, cpus: &Cpus) -> Result<(), RequestError> {
    let boot = cpus.boot_vcpus;
    if !(1..=u32::from(MAX_CPUS)).contains(&boot) {
        return Err(unsupported("cpus.boot_vcpus", boot, "use 1 to 32"));
    }
    if let Some(max) = cpus.max_vcpus.filter(|m| *m != boot) {
        return Err(unsupported(
            "cpus.max_vcpus",
            max,
            "vCPU hotplug is not available: make max_vcpus equal boot_vcpus",
        ));
    }
    if cpus.kvm_hyperv {
        return Err(unsupported(
            "cpus.kvm_hyperv",
            true,
            "Hyper-V enlightenments are not available",
        ));
    }
    if let Some(t) = &cpus.topology {
        for (field, v) in [
            ("cpus.topology.threads_per_core", t.threads_per_core),
            ("cpus.topology.dies_per_package", t.dies_per_package),
            ("cpus.topology.packages", t.packages),
        ] {
            if let Some(v) = v.filter(|v| *v > 1) {
                return Err(unsupported(
                    field,
                    v,
                    "vflaunch gives the guest one package of one-thread cores",
                ));
            }
        }
    }
    config.cpus = boot as u8;
    Ok(())
}

fn apply_memory(config: &mut VmConfig, m: &Memory) -> Result<(), RequestError> {
    config.memory = m.size;
    config.hugepages = m.hugepages;
    if let Some(s) = m
        .hugepage_size
        .filter(|s| m.hugepages && *s != HUGEPAGE_SIZE)
    {
        return Err(unsupported(
            "memory.hugepage_size",
            s,
            "only 2 MiB huge pages (2097152)",
        ));
    }
    if m.mergeable {
        return Err(unsupported(
            "memory.mergeable",
            true,
            "KSM merging is not available",
        ));
    }
    if !m.zones.is_empty() {
        return Err(unsupported(
            "memory.zones",
            &m.zones,
            "memory zones are not available",
        ));
    }
    Ok(())
}

fn check_platform(p: &Platform) -> Result<(), RequestError> {
    for (field, on, why) in [
        (
            "platform.tdx",
            p.tdx,
            "confidential guests are not available",
        ),
        (
            "platform.sev_snp",
            p.sev_snp,
            "confidential guests are not available",
        ),
        (
            "platform.iommufd",
            p.iommufd,
            "the iommufd backend is not available yet",
        ),
    ] {
        if on {
            return Err(unsupported(field, true, why));
        }
    }
    if !p.iommu_segments.is_empty() {
        return Err(unsupported(
            "platform.iommu_segments",
            &p.iommu_segments,
            "there is no virtual IOMMU",
        ));
    }
    if let Some(n) = p.num_pci_segments.filter(|n| *n > 1) {
        log::info!("platform.num_pci_segments={n}: vflaunch has one PCI segment; every device goes on segment 0");
    }
    Ok(())
}

fn check_serial(s: &Console) -> Result<(), RequestError> {
    match s.mode.as_str() {
        "Off" | "Null" | "Tty" => Ok(()),
        "File" if s.file.is_some() => Ok(()),
        "File" => Err(RequestError::Missing("serial.file")),
        other => Err(unsupported(
            "serial.mode",
            other,
            "use Off, Null, Tty or File",
        )),
    }
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
