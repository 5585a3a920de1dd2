//! Which endpoint a request names, in Cloud Hypervisor's dialect: method,
//! path under `/api/v1/`, and whether a JSON body comes with it.

use serde_json::Value;

/// The API's base path.
pub const BASE: &str = "/api/v1/";

/// What a request asks the controller to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `GET vmm.ping`.
    Ping,
    /// `PUT vmm.shutdown`: tear everything down and exit.
    VmmShutdown,
    /// `PUT vm.create` with a `VmConfig`.
    VmCreate(Value),
    /// `PUT vm.boot`.
    VmBoot,
    /// `PUT vm.shutdown`: stop the guest, keep the VMM.
    VmShutdown,
    /// `PUT vm.reboot`.
    VmReboot,
    /// `PUT vm.power-button`.
    VmPowerButton,
    /// `PUT vm.pause`.
    VmPause,
    /// `PUT vm.resume`.
    VmResume,
    /// `PUT vm.delete`.
    VmDelete,
    /// `GET vm.info`.
    VmInfo,
    /// `GET vm.counters`.
    VmCounters,
    /// `PUT vm.add-device` with a `DeviceConfig`.
    VmAddDevice(Value),
    /// An endpoint of the dialect that vflaunch does not offer (yet).
    Unsupported(&'static str),
}

/// Why a request names no action.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a path of the API.
    NotFound,
    /// A path of the API, another method.
    MethodNotAllowed,
    /// The body is missing or not JSON.
    BadBody(String),
}

/// Endpoints of Cloud Hypervisor's API that vflaunch answers with 4xx,
/// and why.
const UNSUPPORTED: [(&str, &str); 14] = [
    (
        "vm.resize",
        "resizing is not available: size the VM in vm.create",
    ),
    ("vm.resize-zone", "memory zones are not available"),
    ("vm.resize-disk", "disks are not available yet"),
    ("vm.add-disk", "virtio-blk is not available yet"),
    ("vm.add-net", "virtio-net is not available yet"),
    ("vm.add-fs", "virtio-fs is not available"),
    ("vm.add-vsock", "virtio-vsock is not available yet"),
    ("vm.add-pmem", "virtio-pmem is not available"),
    ("vm.add-vdpa", "vDPA is not available"),
    ("vm.add-user-device", "vfio-user is not available"),
    ("vm.remove-device", "hot-unplug is not available"),
    ("vm.snapshot", "snapshots are not available"),
    ("vm.restore", "snapshots are not available"),
    ("vm.balloon-stats", "virtio-balloon is not available"),
];

fn json(body: Option<&[u8]>) -> Result<Value, RouteError> {
    let body = body
        .filter(|b| !b.is_empty())
        .ok_or_else(|| RouteError::BadBody("a JSON body is required".into()))?;
    serde_json::from_slice(body).map_err(|e| RouteError::BadBody(format!("invalid JSON body: {e}")))
}

/// The action for `method` on `url` with `body`.
pub fn route(method: &str, url: &str, body: Option<&[u8]>) -> Result<Action, RouteError> {
    let path = url.split('?').next().unwrap_or("");
    let name = path.strip_prefix(BASE).ok_or(RouteError::NotFound)?;
    let get = method == "GET";
    let put = method == "PUT";
    let need = |ok: bool, a: Action| {
        if ok {
            Ok(a)
        } else {
            Err(RouteError::MethodNotAllowed)
        }
    };
    match name {
        "vmm.ping" => need(get, Action::Ping),
        "vm.info" => need(get, Action::VmInfo),
        "vm.counters" => need(get, Action::VmCounters),
        "vmm.shutdown" => need(put, Action::VmmShutdown),
        "vm.boot" => need(put, Action::VmBoot),
        "vm.shutdown" => need(put, Action::VmShutdown),
        "vm.reboot" => need(put, Action::VmReboot),
        "vm.power-button" => need(put, Action::VmPowerButton),
        "vm.pause" => need(put, Action::VmPause),
        "vm.resume" => need(put, Action::VmResume),
        "vm.delete" => need(put, Action::VmDelete),
        "vm.create" if put => Ok(Action::VmCreate(json(body)?)),
        "vm.add-device" if put => Ok(Action::VmAddDevice(json(body)?)),
        "vm.create" | "vm.add-device" => Err(RouteError::MethodNotAllowed),
        other => UNSUPPORTED
            .iter()
            .find(|(n, _)| *n == other)
            .map(|(_, why)| Action::Unsupported(why))
            .ok_or(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_dialect() {
        assert_eq!(route("GET", "/api/v1/vmm.ping", None), Ok(Action::Ping));
        assert_eq!(
            route("PUT", "/api/v1/vmm.ping", None),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            route("GET", "/api/v2/vmm.ping", None),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            route("GET", "/api/v1/vm.nope", None),
            Err(RouteError::NotFound)
        );
        assert_eq!(
            route("PUT", "/api/v1/vm.boot?x=1", None),
            Ok(Action::VmBoot)
        );
        let body = br#"{"payload": {"kernel": "/k"}}"#;
        assert!(matches!(
            route("PUT", "/api/v1/vm.create", Some(body)),
            Ok(Action::VmCreate(_))
        ));
        assert!(matches!(
            route("PUT", "/api/v1/vm.create", None),
            Err(RouteError::BadBody(_))
        ));
        assert!(
            matches!(route("PUT", "/api/v1/vm.create", Some(b"{")), Err(RouteError::BadBody(m)) if m.starts_with("invalid JSON"))
        );
        assert_eq!(
            route("GET", "/api/v1/vm.create", Some(body)),
            Err(RouteError::MethodNotAllowed)
        );
        assert!(
            matches!(route("PUT", "/api/v1/vm.resize", None), Ok(Action::Unsupported(w)) if w.contains("resiz"))
        );
    }
}
