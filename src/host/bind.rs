//! `vflaunch bind` / `vflaunch unbind`: move devices to vfio-pci
//! (driver_override, unbind, drivers_probe) and back to the driver each had,
//! which `bind` records in `<run>/vflaunch/bind.json`. A device whose IOMMU
//! group has members still bound to host drivers is refused.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::bdf::Bdf;
use super::checks::{link_name, HostPaths, GROUP_SAFE_DRIVERS, VFIO_PCI};

/// The most of the state file that is read.
const MAX_STATE: u64 = 1 << 20;

/// Writes a sysfs attribute; the kernel acts on each write.
pub trait SysfsWrite {
    /// Writes `value` to `path` in one write.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The real sysfs.
pub struct Sysfs;

impl SysfsWrite for Sysfs {
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all(value.as_bytes())
    }
}

/// Errors of `bind` and `unbind`; each says what to do.
#[derive(Debug, Error)]
pub enum BindError {
    /// No such device.
    #[error("PCI device {0} not found: check the address with `lspci -D`")]
    NotFound(Bdf),
    /// vfio-pci is not loaded.
    #[error("vfio-pci is not loaded: run `modprobe vfio-pci` first")]
    NoVfioPci,
    /// The device has no IOMMU group.
    #[error("PCI device {0} has no IOMMU group: enable the IOMMU (intel_iommu=on on the kernel command line; see `vflaunch doctor`)")]
    NoIommuGroup(Bdf),
    /// Other members of the group are bound to host drivers.
    #[error("cannot bind {bdf}: IOMMU group {group} also holds {}, bound to host drivers; a group is passed through as a whole: bind them too (`vflaunch bind {bdf} {}`) or unbind them", describe(.others), addrs(.others))]
    GroupBusy {
        /// The device.
        bdf: Bdf,
        /// Its group.
        group: String,
        /// (address, driver) of each offender.
        others: Vec<(String, String)>,
    },
    /// The driver the device had is not loaded.
    #[error("cannot give {bdf} back to {driver}: it is not loaded; run `modprobe {driver}` and `vflaunch unbind {bdf}` again")]
    DriverMissing {
        /// The device.
        bdf: Bdf,
        /// Its recorded driver.
        driver: String,
    },
    /// A sysfs write failed.
    #[error("cannot write {} to {}", .value, .path.display())]
    Write {
        /// The attribute.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The device did not end up with the wanted driver.
    #[error("{bdf} is not bound to {want} after the probe (driver now {}): see `dmesg | tail`", .now.as_deref().unwrap_or("none"))]
    NotTaken {
        /// The device.
        bdf: Bdf,
        /// The driver wanted.
        want: String,
        /// The driver it has.
        now: Option<String>,
    },
    /// The state file could not be read or written.
    #[error("cannot use the bind state file {}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The state file is not valid JSON.
    #[error("bind state file {} is damaged: remove it (devices bound since are then not restored to their driver)", .path.display())]
    StateFormat {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn describe(others: &[(String, String)]) -> String {
    let v: Vec<String> = others.iter().map(|(a, d)| format!("{a} ({d})")).collect();
    v.join(", ")
}

fn addrs(others: &[(String, String)]) -> String {
    let v: Vec<&str> = others.iter().map(|(a, _)| a.as_str()).collect();
    v.join(" ")
}

/// Recorded drivers: address → the driver it had before `bind` (None: no driver).
type State = BTreeMap<String, Option<String>>;

fn state_path(p: &HostPaths) -> PathBuf {
    p.run.join("vflaunch/bind.json")
}

fn load(p: &HostPaths) -> Result<State, BindError> {
    let path = state_path(p);
    let mut text = String::new();
    match File::open(&path) {
        Ok(f) => f.take(MAX_STATE).read_to_string(&mut text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::new()),
        Err(e) => Err(e),
    }
    .map_err(|source| BindError::State {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| BindError::StateFormat { path, source })
}

fn save(p: &HostPaths, state: &State) -> Result<(), BindError> {
    let path = state_path(p);
    let err = |source| BindError::State {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text + "\n").map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)
}

fn put(w: &dyn SysfsWrite, path: PathBuf, value: &str) -> Result<(), BindError> {
    w.write(&path, value).map_err(|source| BindError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

fn device_dir(p: &HostPaths, bdf: Bdf) -> Result<PathBuf, BindError> {
    let dir = p.sys.join("bus/pci/devices").join(bdf.to_string());
    if dir.exists() {
        Ok(dir)
    } else {
        Err(BindError::NotFound(bdf))
    }
}

/// Refuses `bdf` if its group has members outside `all` bound to host drivers.
fn check_group(p: &HostPaths, bdf: Bdf, dir: &Path, all: &[Bdf]) -> Result<(), BindError> {
    let group = link_name(&dir.join("iommu_group")).ok_or(BindError::NoIommuGroup(bdf))?;
    let members = p.sys.join(format!("kernel/iommu_groups/{group}/devices"));
    let mut others = Vec::new();
    for entry in fs::read_dir(&members).into_iter().flatten().flatten() {
        let addr = entry.file_name().to_string_lossy().into_owned();
        if all.iter().any(|b| b.to_string() == addr) {
            continue;
        }
        if let Some(d) = link_name(&entry.path().join("driver")) {
            if !GROUP_SAFE_DRIVERS.contains(&d.as_str()) {
                others.push((addr, d));
            }
        }
    }
    others.sort();
    if others.is_empty() {
        Ok(())
    } else {
        Err(BindError::GroupBusy { bdf, group, others })
    }
}

/// `vflaunch bind`: every device to vfio-pci; one line each on `out`.
pub fn bind(
    p: &HostPaths,
    w: &dyn SysfsWrite,
    bdfs: &[Bdf],
    out: &mut dyn Write,
) -> Result<(), BindError> {
    if !p.sys.join("bus/pci/drivers").join(VFIO_PCI).is_dir() {
        return Err(BindError::NoVfioPci);
    }
    // Everything is checked before anything is changed.
    let mut dirs = Vec::new();
    for &bdf in bdfs {
        let dir = device_dir(p, bdf)?;
        check_group(p, bdf, &dir, bdfs)?;
        dirs.push((bdf, dir));
    }
    let mut state = load(p)?;
    for (bdf, dir) in dirs {
        let driver = link_name(&dir.join("driver"));
        if driver.as_deref() == Some(VFIO_PCI) {
            let _ = writeln!(out, "{bdf}: already bound to {VFIO_PCI}");
            continue;
        }
        // Recorded before the device is touched, so `unbind` can restore it
        // even if a later step fails.
        state
            .entry(bdf.to_string())
            .or_insert_with(|| driver.clone());
        save(p, &state)?;
        put(w, dir.join("driver_override"), VFIO_PCI)?;
        if driver.is_some() {
            put(w, dir.join("driver/unbind"), &bdf.to_string())?;
        }
        put(w, p.sys.join("bus/pci/drivers_probe"), &bdf.to_string())?;
        let now = link_name(&dir.join("driver"));
        if now.as_deref() != Some(VFIO_PCI) {
            return Err(BindError::NotTaken {
                bdf,
                want: VFIO_PCI.into(),
                now,
            });
        }
        let group = link_name(&dir.join("iommu_group")).unwrap_or_default();
        let from = driver.as_deref().unwrap_or("no driver");
        let _ = writeln!(out, "{bdf}: {from} -> {VFIO_PCI} (IOMMU group {group}, /dev/vfio/{group}); `vflaunch unbind {bdf}` gives it back");
    }
    Ok(())
}

/// `vflaunch unbind`: every device from vfio-pci back to the driver recorded
/// by `bind` (or, if none was recorded, to whatever driver the kernel probes).
pub fn unbind(
    p: &HostPaths,
    w: &dyn SysfsWrite,
    bdfs: &[Bdf],
    out: &mut dyn Write,
) -> Result<(), BindError> {
    let mut state = load(p)?;
    let mut dirs = Vec::new();
    for &bdf in bdfs {
        let dir = device_dir(p, bdf)?;
        if let Some(Some(d)) = state.get(&bdf.to_string()) {
            if !p.sys.join("bus/pci/drivers").join(d).is_dir() {
                return Err(BindError::DriverMissing {
                    bdf,
                    driver: d.clone(),
                });
            }
        }
        dirs.push((bdf, dir));
    }
    for (bdf, dir) in dirs {
        let key = bdf.to_string();
        let driver = link_name(&dir.join("driver"));
        if driver.as_deref() != Some(VFIO_PCI) {
            let now = driver.as_deref().unwrap_or("no driver");
            let _ = writeln!(out, "{bdf}: not bound to {VFIO_PCI} ({now}), left as it is");
            if state.remove(&key).is_some() {
                save(p, &state)?;
            }
            continue;
        }
        let recorded = state.get(&key).cloned();
        put(w, dir.join("driver_override"), "\n")?;
        put(w, dir.join("driver/unbind"), &key)?;
        let now = match &recorded {
            Some(Some(d)) => {
                put(w, p.sys.join("bus/pci/drivers").join(d).join("bind"), &key)?;
                let now = link_name(&dir.join("driver"));
                if now.as_deref() != Some(d.as_str()) {
                    return Err(BindError::NotTaken {
                        bdf,
                        want: d.clone(),
                        now,
                    });
                }
                format!("{d} (as before `vflaunch bind`)")
            }
            Some(None) => "no driver (as before `vflaunch bind`)".to_string(),
            None => {
                put(w, p.sys.join("bus/pci/drivers_probe"), &key)?;
                let now = link_name(&dir.join("driver"));
                format!(
                    "{} (not bound by `vflaunch bind`; the kernel probed it)",
                    now.as_deref().unwrap_or("no driver")
                )
            }
        };
        state.remove(&key);
        save(p, &state)?;
        let _ = writeln!(out, "{bdf}: {VFIO_PCI} -> {now}");
    }
    Ok(())
}

#[cfg(test)]
#[path = "bind_tests.rs"]
mod tests;
