//! Cloud Hypervisor's shapes for the virtio devices vflaunch has: `disks`
//! (`DiskConfig`), `net` (`NetConfig`), `vsock` (`VsockConfig`) and `rng`
//! (`RngConfig`), in `vm.create` and as the bodies of `vm.add-disk`,
//! `vm.add-net` and `vm.add-vsock`. Values that need what vflaunch lacks
//! (vhost-user, a virtual IOMMU, offloads) are refused naming the field.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::types::RequestError;
use crate::virtio::options::{
    parse_mac, DiskConfig, NetConfig, TapSource, VirtioConfig, VsockConfig,
};

fn unsupported(field: &str, value: impl serde::Serialize, why: &'static str) -> RequestError {
    RequestError::Unsupported {
        field: field.to_string(),
        value: serde_json::to_string(&value).unwrap_or_default(),
        why,
    }
}

fn parse<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, RequestError> {
    serde_json::from_value(v.clone()).map_err(|e| RequestError::Json(e.to_string()))
}

/// `DiskConfig`.
#[derive(Debug, Deserialize)]
pub struct Disk {
    /// The raw image.
    pub path: Option<PathBuf>,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
    /// O_DIRECT.
    #[serde(default)]
    pub direct: bool,
    /// The caller's name for the device.
    pub id: Option<String>,
    /// The serial the guest reads.
    pub serial: Option<String>,
    /// A vhost-user backend.
    #[serde(default)]
    pub vhost_user: bool,
    /// Behind a virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// Queues asked for.
    pub num_queues: Option<u32>,
}

impl Disk {
    /// The device, checked; `field` names it in errors.
    pub fn config(&self, field: &str) -> Result<DiskConfig, RequestError> {
        if self.vhost_user {
            return Err(unsupported(
                &format!("{field}.vhost_user"),
                true,
                "vhost-user disks are not available",
            ));
        }
        if self.iommu {
            return Err(unsupported(
                &format!("{field}.iommu"),
                true,
                "there is no virtual IOMMU",
            ));
        }
        let path = self.path.clone().ok_or(RequestError::Missing("path"))?;
        if let Some(n) = self.num_queues.filter(|n| *n > 1) {
            log::info!("{field}: {n} queues asked for; virtio-blk has one");
        }
        let mut id = self.serial.clone().or_else(|| self.id.clone());
        if let Some(i) = &mut id {
            i.truncate(20);
        }
        Ok(DiskConfig {
            path,
            readonly: self.readonly,
            direct: self.direct,
            id,
        })
    }
}

/// `NetConfig`.
#[derive(Debug, Deserialize)]
pub struct Net {
    /// Tap name.
    pub tap: Option<String>,
    /// Guest MAC.
    pub mac: Option<String>,
    /// Tap descriptor numbers: refused (vm.add-net passes taps as SCM_RIGHTS).
    #[serde(default)]
    pub fd: Vec<i32>,
    /// The caller's name for the device.
    pub id: Option<String>,
    /// A vhost-user backend.
    #[serde(default)]
    pub vhost_user: bool,
    /// Behind a virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
    /// Queues (2 per queue pair).
    pub num_queues: Option<u32>,
}

impl Net {
    /// The device, checked; `passed` are the descriptors that came with the request.
    pub fn config(&self, field: &str, passed: &[Arc<OwnedFd>]) -> Result<NetConfig, RequestError> {
        if self.vhost_user {
            return Err(unsupported(
                &format!("{field}.vhost_user"),
                true,
                "vhost-user net is not available",
            ));
        }
        if self.iommu {
            return Err(unsupported(
                &format!("{field}.iommu"),
                true,
                "there is no virtual IOMMU",
            ));
        }
        if let Some(n) = self.num_queues.filter(|n| *n > 2) {
            log::info!("{field}: {n} queues asked for; virtio-net has one queue pair");
        }
        let mac = match &self.mac {
            Some(m) => Some(parse_mac(m).ok_or_else(|| {
                unsupported(
                    &format!("{field}.mac"),
                    m,
                    "give a MAC like 52:54:00:12:34:56",
                )
            })?),
            None => None,
        };
        let tap = match (passed.first(), self.fd.first(), &self.tap) {
            (Some(fd), _, _) => TapSource::Passed(fd.clone()),
            (None, Some(fd), _) => TapSource::Fd(*fd),
            (None, None, Some(name)) if !name.is_empty() && name.len() < 16 => {
                TapSource::Name(name.clone())
            }
            (None, None, Some(name)) => {
                return Err(unsupported(
                    &format!("{field}.tap"),
                    name,
                    "a tap name is 1 to 15 bytes",
                ))
            }
            (None, None, None) => {
                return Err(RequestError::Missing(
                    "tap (or a tap fd passed with the request)",
                ))
            }
        };
        if passed.len() > 1 {
            log::info!("{field}: more than one tap fd; virtio-net uses the first (one queue pair)");
        }
        Ok(NetConfig { tap, mac })
    }
}

/// `VsockConfig`.
#[derive(Debug, Deserialize)]
pub struct Vsock {
    /// Guest CID.
    pub cid: u64,
    /// Hybrid socket path.
    pub socket: PathBuf,
    /// The caller's name for the device.
    pub id: Option<String>,
    /// Behind a virtual IOMMU.
    #[serde(default)]
    pub iommu: bool,
}

impl Vsock {
    /// The device, checked.
    pub fn config(&self, field: &str) -> Result<VsockConfig, RequestError> {
        if self.iommu {
            return Err(unsupported(
                &format!("{field}.iommu"),
                true,
                "there is no virtual IOMMU",
            ));
        }
        if !(3..u64::from(u32::MAX)).contains(&self.cid) {
            return Err(unsupported(
                &format!("{field}.cid"),
                self.cid,
                "use a CID of 3 or more",
            ));
        }
        Ok(VsockConfig {
            cid: self.cid,
            socket: self.socket.clone(),
        })
    }
}

/// The virtio part of a `vm.create` body.
pub fn create_virtio(body: &Value) -> Result<VirtioConfig, RequestError> {
    if let Some(fs) = body
        .get("fs")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        return Err(unsupported(
            "fs",
            fs,
            "virtio-fs is not available: set shared_fs = \"none\" in Kata's configuration",
        ));
    }
    let mut v = VirtioConfig::default();
    if let Some(rng) = body.get("rng").filter(|r| !r.is_null()) {
        if rng.get("iommu").and_then(Value::as_bool) == Some(true) {
            return Err(unsupported("rng.iommu", true, "there is no virtual IOMMU"));
        }
        // Any `src`: the device reads the host's getrandom.
        v.rng = true;
    }
    if let Some(disks) = body.get("disks").filter(|d| !d.is_null()) {
        let disks: Vec<Disk> = parse(disks)?;
        for (i, d) in disks.iter().enumerate() {
            v.disks.push(d.config(&format!("disks[{i}]"))?);
        }
    }
    if let Some(net) = body.get("net").filter(|d| !d.is_null()) {
        let net: Vec<Net> = parse(net)?;
        for (i, n) in net.iter().enumerate() {
            if !n.fd.is_empty() {
                // Descriptor numbers from a request would name the VMM's own files.
                return Err(unsupported(
                    &format!("net[{i}].fd"),
                    &n.fd,
                    "send tap descriptors with vm.add-net, as SCM_RIGHTS",
                ));
            }
            v.net.push(n.config(&format!("net[{i}]"), &[])?);
        }
    }
    if let Some(vs) = body.get("vsock").filter(|d| !d.is_null()) {
        v.vsock = Some(parse::<Vsock>(vs)?.config("vsock")?);
    }
    Ok(v)
}

/// Parses a `vm.add-*` body.
pub fn body<T: for<'de> Deserialize<'de>>(v: &Value) -> Result<T, RequestError> {
    parse(v)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn katas_virtio_devices() {
        let b = json!({
            "rng": {"src": "/dev/urandom", "iommu": false},
            "disks": [{"path": "/img", "readonly": true, "id": "disk0", "num_queues": 1,
                       "queue_size": 128, "vhost_user": false, "direct": false, "iommu": false}],
            "net": [{"tap": "tap0_kata", "mac": "52:54:00:01:02:03", "num_queues": 2, "queue_size": 256}],
            "vsock": {"cid": 3, "socket": "/run/kata/vm/clh.sock_vsock", "iommu": false},
            "fs": []
        });
        let v = create_virtio(&b).unwrap();
        assert!(v.rng);
        assert_eq!(v.disks[0].path, PathBuf::from("/img"));
        assert!(v.disks[0].readonly);
        assert_eq!(v.disks[0].id.as_deref(), Some("disk0"));
        assert_eq!(v.net[0].tap, TapSource::Name("tap0_kata".into()));
        assert_eq!(v.net[0].mac, Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(v.vsock.as_ref().unwrap().cid, 3);
        assert_eq!(create_virtio(&json!({})).unwrap(), VirtioConfig::default());
    }

    #[test]
    fn refusals_name_the_field() {
        let e = |b: Value| create_virtio(&b).unwrap_err().to_string();
        let fs = e(json!({"fs": [{"tag": "kataShared", "socket": "/s"}]}));
        assert!(fs.starts_with("fs=") && fs.contains("shared_fs"), "{fs}");
        assert!(e(json!({"disks": [{"path": "/i", "vhost_user": true}]}))
            .starts_with("disks[0].vhost_user=true"));
        assert!(e(json!({"disks": [{"readonly": true}]})).contains("path is required"));
        assert!(e(json!({"net": [{"mac": "52:54:00:01:02:03"}]})).contains("tap"));
        assert!(e(json!({"net": [{"tap": "t", "mac": "zz"}]})).starts_with("net[0].mac="));
        assert!(e(json!({"vsock": {"cid": 2, "socket": "/s"}})).starts_with("vsock.cid=2"));
        assert!(e(json!({"rng": {"src": "/dev/random", "iommu": true}})).starts_with("rng.iommu"));
        assert!(
            e(json!({"net": [{"fd": [0]}]})).starts_with("net[0].fd=[0]"),
            "never a raw fd"
        );
    }

    #[test]
    fn a_passed_tap_fd_wins_over_names() {
        let fd: Arc<OwnedFd> = Arc::new(std::fs::File::open("/dev/null").unwrap().into());
        let n: Net = body(&json!({"mac": "52:54:00:01:02:03", "num_queues": 2, "queue_size": 256,
                                  "ip": "10.0.0.2", "mask": "255.255.255.0", "vhost_mode": "Client"}))
        .unwrap();
        let c = n.config("net", std::slice::from_ref(&fd)).unwrap();
        assert_eq!(c.tap, TapSource::Passed(fd));
        assert!(n.config("net", &[]).is_err(), "no tap at all");
    }
}
