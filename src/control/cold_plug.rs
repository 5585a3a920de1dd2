//! Cold plug before boot: `vm.add-device` (a VFIO function, checked against
//! the host at once), `vm.add-disk`, `vm.add-net` and `vm.add-vsock` (the
//! device joins the VM's configuration; its image, tap or socket is opened
//! when the VM is built, and a bad one fails `vm.boot`, naming it).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{info, Controller, Next, Spec};
use crate::api::types;
use crate::api::virtio_types::{self, Disk, Net, Vsock};
use crate::api::Reply;
use crate::virtio::options::VirtioConfig;

/// Which `vm.add-*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `vm.add-disk`.
    Disk,
    /// `vm.add-net`.
    Net,
    /// `vm.add-vsock`.
    Vsock,
}

/// The guest slot the `n`-th virtio device of kind `kind` gets: virtio
/// functions follow the passed-through ones, rng first, then disks, vsock, nets.
fn slot(spec: &Spec, v: &VirtioConfig, kind: Kind) -> u8 {
    let before = usize::from(v.rng)
        + match kind {
            Kind::Disk => v.disks.len() - 1,
            Kind::Vsock => v.disks.len(),
            Kind::Net => v.disks.len() + usize::from(v.vsock.is_some()) + v.net.len() - 1,
        };
    (1 + spec.config.devices.len() + before) as u8
}

fn bad(e: impl std::fmt::Display) -> Reply {
    Reply::error(400, e)
}

impl Controller {
    pub(super) fn add_device(&mut self, body: &Value) -> (Reply, Next) {
        let r = (|| {
            let d: types::Device = serde_json::from_value(body.clone())
                .map_err(|e| Reply::error(400, format!("invalid JSON body: {e}")))?;
            let bdf = d.bdf("device").map_err(|e| Reply::error(400, e))?;
            if self.vm.is_some() {
                return Err(Reply::error(
                    400,
                    "device hotplug is not available: add devices before vm.boot",
                ));
            }
            let spec = self
                .spec
                .as_ref()
                .ok_or_else(|| Reply::error(404, "no VM: vm.create first"))?;
            if spec.config.devices.contains(&bdf) {
                return Err(Reply::error(
                    409,
                    format!("{bdf} is already part of the VM"),
                ));
            }
            let mut config = spec.config.clone();
            config.devices.push(bdf);
            self.preflight(&config)?;
            let spec = self
                .spec
                .as_mut()
                .ok_or_else(|| Reply::error(404, "no VM"))?;
            let id = d.id.unwrap_or_else(|| format!("vfio{}", spec.ids.len()));
            info::echo_device(&mut spec.echo, body);
            spec.config = config;
            spec.ids.push(id.clone());
            // Slots are handed out in order after the host bridge.
            let bdf = info::guest_bdf(spec.ids.len() as u8);
            Ok(Reply::ok(json!({ "id": id, "bdf": bdf })))
        })();
        (r.unwrap_or_else(|e| e), Next::Continue)
    }

    pub(super) fn add_virtio(
        &mut self,
        body: &Value,
        kind: Kind,
        fds: &[Arc<OwnedFd>],
    ) -> (Reply, Next) {
        let r = (|| {
            if self.vm.is_some() {
                return Err(bad("hotplug is not available: add devices before vm.boot"));
            }
            let spec = self
                .spec
                .as_mut()
                .ok_or_else(|| Reply::error(404, "no VM: vm.create first"))?;
            let mut v = spec.config.virtio.clone();
            let (id, list) = match kind {
                Kind::Disk => {
                    let d: Disk = virtio_types::body(body).map_err(bad)?;
                    let cfg = d.config("disk").map_err(bad)?;
                    if v.disks.iter().any(|x| x.path == cfg.path) {
                        return Err(Reply::error(
                            409,
                            format!("{} is already a disk of the VM", cfg.path.display()),
                        ));
                    }
                    v.disks.push(cfg);
                    (
                        d.id.unwrap_or_else(|| format!("disk{}", v.disks.len() - 1)),
                        "disks",
                    )
                }
                Kind::Net => {
                    let n: Net = virtio_types::body(body).map_err(bad)?;
                    v.net.push(n.config("net", fds).map_err(bad)?);
                    (
                        n.id.unwrap_or_else(|| format!("net{}", v.net.len() - 1)),
                        "net",
                    )
                }
                Kind::Vsock => {
                    let s: Vsock = virtio_types::body(body).map_err(bad)?;
                    if v.vsock.is_some() {
                        return Err(Reply::error(409, "the VM has a vsock device already"));
                    }
                    v.vsock = Some(s.config("vsock").map_err(bad)?);
                    (s.id.unwrap_or_else(|| "vsock0".into()), "vsock")
                }
            };
            v.validate().map_err(bad)?;
            spec.config.virtio = v.clone();
            let bdf = info::guest_bdf(slot(spec, &v, kind));
            info::echo_virtio(&mut spec.echo, list, body);
            log::info!("api: {list} device {id} added, guest PCI {bdf}");
            Ok(Reply::ok(json!({ "id": id, "bdf": bdf })))
        })();
        (r.unwrap_or_else(|e| e), Next::Continue)
    }
}
