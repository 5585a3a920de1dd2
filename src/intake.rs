//! Where device addresses come from in a pod: the SR-IOV network device
//! plugin's `PCIDEVICE_*` variables, KubeVirt's `PCI_RESOURCE_*` variables,
//! and KubeVirt's downward-API `network-info` file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::host::bdf::{Bdf, PciAddrError};

/// KubeVirt's downward-API file that maps networks to PCI addresses.
pub const NETWORK_INFO_PATH: &str = "/etc/podinfo/network-info";

/// Prefix of the SR-IOV network device plugin's variables.
const PCIDEVICE_PREFIX: &str = "PCIDEVICE_";
/// Prefix of KubeVirt's host-device variables.
const PCI_RESOURCE_PREFIX: &str = "PCI_RESOURCE_";
/// Suffix of the device plugin's per-device info variables.
const INFO_SUFFIX: &str = "_INFO";

/// Errors from reading device addresses out of the environment or network-info.
#[derive(Debug, Error)]
pub enum IntakeError {
    /// An address list variable has an item that is not a PCI address.
    #[error("{var} has an invalid PCI address {item:?}: it must be a comma-separated list like 0000:03:02.1,0000:03:04.3")]
    BadAddress {
        /// The variable name.
        var: String,
        /// The bad list item.
        item: String,
        /// Why it is not an address.
        #[source]
        source: PciAddrError,
    },
    /// A device variable is set but lists no address: the pod asked for a
    /// device and did not get one.
    #[error("{0} is set but lists no PCI address: the pod did not get the device it asked for; check the device plugin's allocation (or unset the variable)")]
    EmptyDeviceVar(String),
    /// A `PCIDEVICE_*_INFO` value is neither the device plugin's JSON
    /// object nor an address list.
    #[error("{var} is bad _INFO JSON ({found}): the device plugin sets it to a JSON object like {{\"0000:03:02.1\": {{...}}}}")]
    InfoJson {
        /// The variable name.
        var: String,
        /// What it holds instead.
        found: &'static str,
    },
    /// A problem in a network-info file.
    #[error("network-info file {path}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem.
        #[source]
        source: Box<IntakeError>,
    },
    /// The network-info file could not be read (missing, not a regular
    /// file, over the size cap, not text).
    #[error("cannot read network-info file {path}: check --network-info or the pod's downward-API volume")]
    ReadNetworkInfo {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::bounded::ReadError,
    },
    /// The network-info document is not valid JSON.
    #[error("network-info is not valid JSON: expected {{\"interfaces\": [...]}} or {{\"<network>\": \"<pci address>\"}}")]
    NetworkInfoJson(#[source] serde_json::Error),
    /// The network-info JSON has an unexpected shape.
    #[error("network-info has an unexpected shape ({0}): expected {{\"interfaces\": [...]}} or {{\"<network>\": \"<pci address>\"}}")]
    NetworkInfoShape(String),
    /// A network in network-info has an invalid PCI address.
    #[error("network-info gives network {network:?} an invalid PCI address {item:?}")]
    NetworkInfoAddress {
        /// The network name.
        network: String,
        /// The bad address.
        item: String,
        /// Why it is not an address.
        #[source]
        source: PciAddrError,
    },
}

/// Devices found in the environment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnvDevices {
    /// Sorted by variable name, then list order; each address appears once.
    pub devices: Vec<EnvDevice>,
}

/// One device found in the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvDevice {
    /// The device address.
    pub bdf: Bdf,
    /// The variable that listed it.
    pub source: String,
}

/// The process environment as `(name, value)` pairs for [`devices_from_env`].
/// Variables that are not valid UTF-8 are skipped (`std::env::vars` panics on them).
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Splits a comma-separated address list, tolerating spaces and empty
/// items; a list with no address at all is an error.
fn parse_list(var: &str, value: &str) -> Result<Vec<Bdf>, IntakeError> {
    let list = value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse().map_err(|source| IntakeError::BadAddress {
                var: var.to_string(),
                item: item.to_string(),
                source,
            })
        })
        .collect::<Result<Vec<Bdf>, _>>()?;
    if list.is_empty() {
        return Err(IntakeError::EmptyDeviceVar(var.to_string()));
    }
    Ok(list)
}

/// What a `_INFO` value that is not an object holds, for the message.
fn json_kind(value: &str) -> &'static str {
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Array(_)) => "an array",
        Ok(Value::String(_)) => "a string",
        Ok(Value::Number(_)) => "a number",
        Ok(Value::Bool(_)) => "a boolean",
        Ok(Value::Null) => "null",
        Ok(Value::Object(_)) => "an object",
        Err(_) if value.trim().is_empty() => "empty",
        Err(_) => "not JSON",
    }
}

/// Reads device addresses from `PCIDEVICE_<PREFIX>_<RESOURCE>` (SR-IOV
/// network device plugin) and `PCI_RESOURCE_<NAME>` (KubeVirt host devices)
/// variables. Each holds a comma-separated list of full PCI addresses.
///
/// `PCIDEVICE_*_INFO` variables whose value is a JSON object are not
/// address lists and are skipped: they name the VFIO group node the device
/// plugin mounted, which is always `/dev/vfio/<group>` (the node vfio-ioctls
/// opens), and pre-flight checks that node. An `_INFO` value that is
/// neither an object nor an address list (a resource may be called "info")
/// is bad `_INFO` JSON. A device variable that is set but lists no address
/// is an error: the pod asked for a device. Other variables are ignored.
pub fn devices_from_env<I: IntoIterator<Item = (String, String)>>(
    vars: I,
) -> Result<EnvDevices, IntakeError> {
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with(PCIDEVICE_PREFIX) || name.starts_with(PCI_RESOURCE_PREFIX)
        })
        .collect();
    let mut devices: Vec<EnvDevice> = Vec::new();
    for (name, value) in &vars {
        // A resource may itself be called "info"; only JSON values are info.
        let list = if name.ends_with(INFO_SUFFIX) {
            if value.trim_start().starts_with('{') {
                continue;
            }
            parse_list(name, value).map_err(|_| IntakeError::InfoJson {
                var: name.clone(),
                found: json_kind(value),
            })?
        } else {
            parse_list(name, value)?
        };
        for bdf in list {
            if !devices.iter().any(|d| d.bdf == bdf) {
                devices.push(EnvDevice {
                    bdf,
                    source: name.clone(),
                });
            }
        }
    }
    Ok(EnvDevices { devices })
}

/// Parses KubeVirt's network-info document into (network name, address)
/// pairs, in file order.
///
/// Accepts the current form
/// `{"interfaces":[{"network":"foo","deviceInfo":{"type":"pci","pci":{"pci-address":"0000:65:00.2"}}}]}`
/// (interfaces without a PCI deviceInfo are skipped) and the older
/// `network-pci-map` form `{"net1":"0000:04:02.5"}` (sorted by name).
/// An empty document means no devices.
pub fn devices_from_network_info(json: &str) -> Result<Vec<(String, Bdf)>, IntakeError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let doc: Value = serde_json::from_str(json).map_err(IntakeError::NetworkInfoJson)?;
    let Value::Object(map) = doc else {
        return Err(IntakeError::NetworkInfoShape("not an object".into()));
    };
    let parse = |network: &str, addr: &str| {
        addr.parse::<Bdf>()
            .map(|bdf| (network.to_string(), bdf))
            .map_err(|source| IntakeError::NetworkInfoAddress {
                network: network.to_string(),
                item: addr.to_string(),
                source,
            })
    };
    match map.get("interfaces") {
        Some(Value::Array(interfaces)) => {
            let mut out = Vec::new();
            for (n, iface) in interfaces.iter().enumerate() {
                let network = iface.get("network").and_then(Value::as_str).unwrap_or("");
                let Some(info) = iface.get("deviceInfo") else {
                    continue; // the pod network, or another non-device interface
                };
                let kind = info.get("type");
                if kind.is_some_and(|k| k != "pci") || (kind.is_none() && info.get("pci").is_none())
                {
                    continue;
                }
                // A PCI interface must carry its address: one without would
                // boot the VM without its NIC.
                let addr = info.get("pci").and_then(|p| p.get("pci-address"));
                match addr.and_then(Value::as_str) {
                    Some(addr) => out.push(parse(network, addr)?),
                    None => {
                        return Err(IntakeError::NetworkInfoShape(format!(
                            "interface {n} (network {network:?}) is a PCI device without a \"pci-address\" string"
                        )))
                    }
                }
            }
            Ok(out)
        }
        Some(Value::String(_)) | None => map
            .iter()
            .map(|(network, addr)| match addr.as_str() {
                Some(addr) => parse(network, addr),
                None => Err(IntakeError::NetworkInfoShape(format!(
                    "network {network:?} is not mapped to an address string"
                ))),
            })
            .collect(),
        Some(_) => Err(IntakeError::NetworkInfoShape(
            "\"interfaces\" is not a list".into(),
        )),
    }
}

/// Reads and parses a network-info file (see [`devices_from_network_info`]):
/// a regular file of at most [`crate::bounded::NETWORK_INFO_MAX`] bytes.
pub fn devices_from_network_info_file(path: &Path) -> Result<Vec<(String, Bdf)>, IntakeError> {
    use crate::bounded::{read_text, Kind, NETWORK_INFO_MAX};
    let text = read_text(path, NETWORK_INFO_MAX, Kind::Regular).map_err(|source| {
        IntakeError::ReadNetworkInfo {
            path: path.to_path_buf(),
            source,
        }
    })?;
    devices_from_network_info(&text).map_err(|e| IntakeError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

#[cfg(test)]
#[path = "intake_tests.rs"]
mod tests;
