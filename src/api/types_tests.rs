//! `vm.create` bodies shaped like Kata's, and the refusals.

use serde_json::json;

use super::*;

/// What Kata's generated client sends for a pod with one VF (its defaults included).
pub fn kata_body() -> Value {
    json!({
        "payload": {"kernel": "/k", "initramfs": "/i", "cmdline": "console=ttyS0 quiet"},
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "nested": true, "kvm_hyperv": false,
                 "topology": {"threads_per_core": 1, "cores_per_die": 2, "dies_per_package": 1, "packages": 1}},
        "memory": {"size": 536870912u64, "shared": true, "hugepages": false, "thp": true,
                   "mergeable": false, "prefault": false, "hotplug_method": "Acpi",
                   "hotplug_size": 25769803776u64},
        "devices": [{"path": "/sys/bus/pci/devices/0000:03:02.1/", "id": "vfio0", "iommu": false}],
        "serial": {"mode": "Off"},
        "console": {"mode": "Off", "iommu": false},
        "rng": {"src": "/dev/urandom", "iommu": false},
        "platform": {"num_pci_segments": 2, "iommu_segments": []},
        "iommu": false, "watchdog": false, "pvpanic": false, "landlock_enable": false,
        "some_future_field": {"x": 1}
    })
}

#[test]
fn katas_defaults_are_accepted() {
    let r = create_request(&kata_body()).unwrap();
    assert_eq!(r.config.kernel, PathBuf::from("/k"));
    assert_eq!(r.config.initramfs, Some(PathBuf::from("/i")));
    assert_eq!(r.config.cmdline, "console=ttyS0 quiet");
    assert_eq!((r.config.cpus, r.config.memory), (2, 512 << 20));
    assert_eq!(
        r.config.devices,
        vec!["0000:03:02.1".parse::<Bdf>().unwrap()]
    );
    assert_eq!(r.device_ids, vec![Some("vfio0".to_string())]);
    assert_eq!(r.serial.mode, "Off");
}

fn refused(patch: impl FnOnce(&mut Value)) -> String {
    let mut b = kata_body();
    patch(&mut b);
    create_request(&b).unwrap_err().to_string()
}

#[test]
fn missing_features_are_refused_naming_field_and_value() {
    type Patch = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(Patch, &str)> = vec![
        (Box::new(|b| b["iommu"] = json!(true)), "iommu=true"),
        (
            Box::new(|b| b["cpus"]["max_vcpus"] = json!(4)),
            "cpus.max_vcpus=4",
        ),
        (
            Box::new(|b| b["disks"] = json!([{"path": "/d"}])),
            "disks=[{\"path\":\"/d\"}]",
        ),
        (Box::new(|b| b["net"] = json!([{"tap": "t0"}])), "net="),
        (Box::new(|b| b["fs"] = json!([{"tag": "x"}])), "fs="),
        (
            Box::new(|b| b["vsock"] = json!({"cid": 3, "socket": "/s"})),
            "vsock=",
        ),
        (
            Box::new(|b| b["devices"][0]["iommu"] = json!(true)),
            "devices[0].iommu=true",
        ),
        (
            Box::new(|b| b["devices"][0]["path"] = json!("/dev/vfio/4")),
            "devices[0].path=\"/dev/vfio/4\"",
        ),
        (Box::new(|b| b["memory"]["hugepages"] = json!(true)), ""),
        (
            Box::new(|b| b["console"]["mode"] = json!("Tty")),
            "console.mode=\"Tty\"",
        ),
        (
            Box::new(|b| b["serial"]["mode"] = json!("Pty")),
            "serial.mode=\"Pty\"",
        ),
        (
            Box::new(|b| b["platform"]["tdx"] = json!(true)),
            "platform.tdx=true",
        ),
        (
            Box::new(|b| b["payload"]["firmware"] = json!("/fw")),
            "payload.firmware=\"/fw\"",
        ),
        (
            Box::new(|b| b["cpus"]["topology"]["threads_per_core"] = json!(2)),
            "threads_per_core=2",
        ),
    ];
    for (patch, want) in cases {
        let mut b = kata_body();
        patch(&mut b);
        match create_request(&b) {
            Ok(_) => assert_eq!(want, "", "accepted, but {want} should be refused"),
            Err(e) => {
                assert!(!want.is_empty(), "refused: {e}");
                assert!(e.to_string().contains(want), "{e} does not name {want}");
            }
        }
    }
    // Empty lists and false flags ask for nothing.
    assert!(
        create_request(&json!({"payload": {"kernel": "/k"}, "disks": [], "net": null})).is_ok()
    );
}

#[test]
fn kernel_is_required_and_bodies_must_be_objects() {
    assert_eq!(
        refused(|b| b["payload"] = json!({})),
        "payload.kernel is required"
    );
    assert!(create_request(&json!([1, 2]))
        .unwrap_err()
        .to_string()
        .starts_with("invalid JSON body"));
    assert!(refused(|b| b["cpus"]["boot_vcpus"] = json!("two")).starts_with("invalid JSON body"));
}

#[test]
fn device_paths_with_and_without_trailing_slash() {
    for p in [
        "/sys/bus/pci/devices/0000:03:02.1",
        "/sys/bus/pci/devices/0000:03:02.1/",
    ] {
        let d = Device {
            path: Some(p.into()),
            id: None,
            iommu: false,
            pci_segment: 0,
        };
        assert_eq!(d.bdf("devices[0]").unwrap().to_string(), "0000:03:02.1");
    }
}
