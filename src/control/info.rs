//! What the controller reports: `vmm.ping`, `vm.info` (the configuration as
//! asked for and applied, the state, the device tree with host and guest
//! addresses) and `vm.counters`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::config::VmConfig;
use crate::host::checks::HostPaths;
use crate::vmm::Vmm;

/// The features vflaunch has, for `vmm.ping`.
const FEATURES: [&str; 3] = ["vfio", "hugepages", "acpi-power-button"];

/// `vmm.ping`'s answer.
pub fn ping() -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build_version": concat!("vflaunch ", env!("CARGO_PKG_VERSION")),
        "pid": std::process::id(),
        "features": FEATURES,
    })
}

/// The guest address of the function in `slot` on bus 0.
pub fn guest_bdf(slot: u8) -> String {
    format!("0000:00:{slot:02x}.0")
}

/// A `VmConfig` in Cloud Hypervisor's shape, for a VM the command line made.
pub fn echo_config(c: &VmConfig) -> Value {
    let devices: Vec<Value> = c
        .devices
        .iter()
        .enumerate()
        .map(
            |(i, b)| json!({"path": format!("/sys/bus/pci/devices/{b}"), "id": format!("vfio{i}")}),
        )
        .collect();
    json!({
        "payload": {"kernel": c.kernel, "initramfs": c.initramfs, "cmdline": c.cmdline},
        "cpus": {"boot_vcpus": c.cpus, "max_vcpus": c.cpus},
        "memory": {"size": c.memory, "hugepages": c.hugepages},
        "devices": devices,
    })
}

/// The `vm.create` body as applied: what was asked, with the values
/// vflaunch chose for what was left out.
pub fn echo_body(body: &Value, c: &VmConfig) -> Value {
    let mut echo = body.clone();
    let Some(obj) = echo.as_object_mut() else {
        return echo_config(c);
    };
    let cpus = obj.entry("cpus").or_insert_with(|| json!({}));
    if let Some(cpus) = cpus.as_object_mut() {
        cpus.insert("boot_vcpus".into(), json!(c.cpus));
        cpus.entry("max_vcpus").or_insert(json!(c.cpus));
    }
    let memory = obj.entry("memory").or_insert_with(|| json!({}));
    if let Some(m) = memory.as_object_mut() {
        m.insert("size".into(), json!(c.memory));
    }
    echo
}

/// Adds a `vm.add-device` body to the echoed `devices`.
pub fn echo_device(echo: &mut Value, device: &Value) {
    if let Some(obj) = echo.as_object_mut() {
        let list = obj.entry("devices").or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(device.clone());
        }
    }
}

/// Adds a `vm.add-disk`/`-net`/`-vsock` body to the echoed configuration
/// (`disks` and `net` are lists, `vsock` is one object).
pub fn echo_virtio(echo: &mut Value, field: &str, device: &Value) {
    let Some(obj) = echo.as_object_mut() else {
        return;
    };
    if field == "vsock" {
        obj.insert(field.into(), device.clone());
        return;
    }
    let list = obj.entry(field).or_insert_with(|| json!([]));
    if list.is_null() {
        *list = json!([]);
    }
    if let Some(list) = list.as_array_mut() {
        list.push(device.clone());
    }
}

/// `vm.info`: `state`, `config` and the device tree (before boot, the
/// guest addresses the devices will get).
pub fn vm_info(
    state: &str,
    echo: &Value,
    c: &VmConfig,
    ids: &[String],
    slots: Option<&[(String, u8)]>,
) -> Value {
    let mut tree = Map::new();
    for (i, (bdf, id)) in c.devices.iter().zip(ids).enumerate() {
        let host = bdf.to_string();
        let slot = slots
            .and_then(|s| s.iter().find(|(h, _)| *h == host).map(|(_, slot)| *slot))
            .unwrap_or(i as u8 + 1);
        tree.insert(
            id.clone(),
            json!({"id": id, "resources": [], "children": [], "pci_bdf": guest_bdf(slot), "host_bdf": host}),
        );
    }
    // The virtio functions, by their device names, once the VM is built.
    for (name, slot) in slots.unwrap_or_default() {
        if name.starts_with("virtio") {
            tree.insert(
                name.clone(),
                json!({"id": name, "resources": [], "children": [], "pci_bdf": guest_bdf(*slot)}),
            );
        }
    }
    json!({
        "state": state,
        "config": echo,
        "memory_actual_size": c.memory,
        "device_tree": tree,
    })
}

/// Interrupts per vector of each passed-through device, from the host's
/// `/proc/interrupts` (`vfio-msix[N](BDF)` lines, summed over CPUs).
pub fn vfio_interrupts(text: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in text.lines() {
        let Some(name) = line.split_whitespace().last() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("vfio-") else {
            continue;
        };
        let Some((vector, dev)) = rest.split_once('(') else {
            continue;
        };
        let dev = dev.trim_end_matches(')');
        let total: u64 = line
            .split_whitespace()
            .skip(1)
            .map_while(|f| f.parse::<u64>().ok())
            .sum();
        out.entry(dev.to_string())
            .or_default()
            .insert(vector.to_string(), total);
    }
    out
}

/// `vm.counters`: vCPU exits by kind, and interrupts per vector per device.
pub fn counters(vm: &Vmm, host: &HostPaths) -> Value {
    let mut out = Map::new();
    let exits: Map<String, Value> = vm
        .exit_counts()
        .into_iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    out.insert("vcpu_exits".into(), Value::Object(exits));
    let text = crate::bounded::read_text(
        &host.proc.join("interrupts"),
        crate::bounded::PROCFS_MAX,
        crate::bounded::Kind::Pseudo,
    )
    .unwrap_or_default();
    let all = vfio_interrupts(&text);
    // Host interrupts are the passed-through functions'; virtio vectors are irqfds.
    for (name, _) in vm
        .devices()
        .iter()
        .filter(|(n, _)| !n.starts_with("virtio"))
    {
        let vectors = all.get(name).cloned().unwrap_or_default();
        out.insert(name.clone(), json!(vectors));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interrupts_per_vfio_vector() {
        let text = " 24:   10   5  IR-PCI-MSIX-0000:00:12.0  0-edge  vfio-msix[0](0000:00:12.0)\n 25:    0   7  IR-PCI-MSIX-0000:00:12.0  1-edge  vfio-msix[1](0000:00:12.0)\n 26:  3  0  IR-PCI-MSI  edge  vfio-msi[0](0000:00:12.2)\n  0:  44  IO-APIC  2-edge  timer\n";
        let m = vfio_interrupts(text);
        assert_eq!(m["0000:00:12.0"]["msix[0]"], 15);
        assert_eq!(m["0000:00:12.0"]["msix[1]"], 7);
        assert_eq!(m["0000:00:12.2"]["msi[0]"], 3);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn info_reports_guest_and_host_addresses() {
        let mut c = VmConfig::new("/k");
        c.devices = vec![
            "0000:03:02.1".parse().unwrap(),
            "0000:03:02.2".parse().unwrap(),
        ];
        let ids = vec!["a".to_string(), "b".to_string()];
        let echo = echo_body(&json!({"payload": {"kernel": "/k"}}), &c);
        let v = vm_info("Created", &echo, &c, &ids, None);
        assert_eq!(v["state"], "Created");
        assert_eq!(v["device_tree"]["b"]["pci_bdf"], "0000:00:02.0");
        assert_eq!(v["device_tree"]["b"]["host_bdf"], "0000:03:02.2");
        assert_eq!(v["config"]["cpus"]["boot_vcpus"], 1);
        assert_eq!(v["config"]["memory"]["size"], 512u64 << 20);
        let slots = vec![("0000:03:02.2".to_string(), 1u8)];
        let v = vm_info("Running", &echo, &c, &ids, Some(&slots));
        assert_eq!(
            v["device_tree"]["b"]["pci_bdf"], "0000:00:01.0",
            "the real slot wins"
        );
    }
}
