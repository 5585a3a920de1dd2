//! Tests for the device intake: env variables and network-info.

use super::*;

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn addrs(env: &EnvDevices) -> Vec<String> {
    env.devices.iter().map(|d| d.bdf.to_string()).collect()
}

#[test]
fn reads_device_plugin_and_kubevirt_vars_sorted_and_deduplicated() {
    let env = devices_from_env(vars(&[
        (
            "PCIDEVICE_INTEL_COM_SRIOV_B",
            "0000:03:04.3, ,0000:03:02.1,",
        ),
        ("PATH", "/usr/bin"),
        ("PCIDEVICE_INTEL_COM_SRIOV_A", " 0000:03:02.1 ,0000:03:02.2"),
        ("PCI_RESOURCE_NVIDIA_COM_GPU", "0000:65:00.0"),
        ("MDEV_PCI_RESOURCE_X", "not-an-address"),
        ("KUBEVIRT_RESOURCE_NAME_net1", "intel.com/sriov"),
    ]))
    .unwrap();
    assert_eq!(
        addrs(&env),
        [
            "0000:03:02.1",
            "0000:03:02.2",
            "0000:03:04.3",
            "0000:65:00.0"
        ]
    );
    assert_eq!(env.devices[0].source, "PCIDEVICE_INTEL_COM_SRIOV_A");
    assert_eq!(env.devices[2].source, "PCIDEVICE_INTEL_COM_SRIOV_B");
    assert_eq!(env.devices[3].source, "PCI_RESOURCE_NVIDIA_COM_GPU");
}

#[test]
fn no_vars_means_no_devices() {
    assert_eq!(
        devices_from_env(vars(&[("HOME", "/root")])).unwrap(),
        EnvDevices::default()
    );
}

#[test]
fn bad_address_names_variable_and_item() {
    let err = devices_from_env(vars(&[("PCIDEVICE_X", "0000:03:02.1,0000:03:02.9")])).unwrap_err();
    match &err {
        IntakeError::BadAddress { var, item, .. } => {
            assert_eq!(
                (var.as_str(), item.as_str()),
                ("PCIDEVICE_X", "0000:03:02.9")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("PCIDEVICE_X") && msg.contains("0000:03:02.9"),
        "{msg}"
    );
}

#[test]
fn info_vars_are_not_address_lists() {
    let env = devices_from_env(vars(&[
        ("PCIDEVICE_INTEL_COM_A", "0000:3b:02.6"),
        (
            "PCIDEVICE_INTEL_COM_A_INFO",
            r#"{"0000:3b:02.6":{"vfio":{"mount":"/dev/vfio/42"}}}"#,
        ),
        ("PCIDEVICE_INTEL_COM_B_INFO", "{\"0000:3b:02.7\":"), // even malformed
    ]))
    .unwrap();
    assert_eq!(addrs(&env), ["0000:3b:02.6"]);
}

#[test]
fn resource_named_info_is_still_a_list() {
    let env = devices_from_env(vars(&[("PCIDEVICE_EXAMPLE_COM_INFO", "0000:03:02.1")])).unwrap();
    assert_eq!(addrs(&env), ["0000:03:02.1"]);
}

#[test]
fn network_info_current_form() {
    let json = r#"{"interfaces":[
        {"network":"foo","deviceInfo":{"type":"pci","version":"1.0.0","pci":{"pci-address":"0000:65:00.2"}},"mac":"02:00:00:00:00:01","mtu":1500},
        {"network":"pod","mac":"02:00:00:00:00:02"},
        {"network":"vdpa","deviceInfo":{"type":"vdpa","vdpa":{"parent-device":"x"}}},
        {"network":"bar","deviceInfo":{"type":"pci","pci":{"pci-address":"0000:65:00.3"}}}
    ]}"#;
    let got = devices_from_network_info(json).unwrap();
    assert_eq!(
        got,
        [
            ("foo".to_string(), "0000:65:00.2".parse().unwrap()),
            ("bar".to_string(), "0000:65:00.3".parse().unwrap())
        ]
    );
}

#[test]
fn network_info_old_map_form() {
    let got =
        devices_from_network_info(r#"{"net2":"0000:04:02.6","net1":"0000:04:02.5"}"#).unwrap();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["net1", "net2"]);
    assert_eq!(got[0].1.to_string(), "0000:04:02.5");
    assert!(devices_from_network_info(" \n").unwrap().is_empty());
    assert!(devices_from_network_info(r#"{"interfaces":[]}"#)
        .unwrap()
        .is_empty());
}

#[test]
fn network_info_errors() {
    assert!(matches!(
        devices_from_network_info("{"),
        Err(IntakeError::NetworkInfoJson(_))
    ));
    assert!(matches!(
        devices_from_network_info("[]"),
        Err(IntakeError::NetworkInfoShape(_))
    ));
    assert!(matches!(
        devices_from_network_info(r#"{"interfaces":{}}"#),
        Err(IntakeError::NetworkInfoShape(_))
    ));
    assert!(matches!(
        devices_from_network_info(r#"{"net1":5}"#),
        Err(IntakeError::NetworkInfoShape(_))
    ));
    let err = devices_from_network_info(
        r#"{"interfaces":[{"network":"foo","deviceInfo":{"type":"pci","pci":{"pci-address":"65:00"}}}]}"#,
    )
    .unwrap_err();
    assert!(
        matches!(&err, IntakeError::NetworkInfoAddress { network, item, .. } if network == "foo" && item == "65:00")
    );
}

#[test]
fn network_info_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network-info");
    std::fs::write(&path, r#"{"net1":"0000:04:02.5"}"#).unwrap();
    assert_eq!(devices_from_network_info_file(&path).unwrap().len(), 1);
    assert!(matches!(
        devices_from_network_info_file(&dir.path().join("missing")),
        Err(IntakeError::ReadNetworkInfo { .. })
    ));
}

#[test]
fn a_device_variable_without_an_address_is_an_error() {
    for (var, value) in [
        ("PCIDEVICE_INTEL_COM_SRIOV", ""),
        ("PCIDEVICE_INTEL_COM_SRIOV", " , "),
        ("PCI_RESOURCE_NVIDIA_COM_GPU", " "),
    ] {
        let err =
            devices_from_env(vars(&[("PCIDEVICE_A", "0000:03:02.1"), (var, value)])).unwrap_err();
        assert!(
            matches!(&err, IntakeError::EmptyDeviceVar(v) if v == var),
            "{value:?}: {err:?}"
        );
        assert!(err.to_string().starts_with(var), "{err}");
    }
}

#[test]
fn an_info_value_that_is_not_an_object_is_bad_info_json() {
    for (value, found) in [
        ("[\"0000:3b:02.6\"]", "an array"),
        ("\"0000:3b:02.6\"", "a string"),
        ("null", "null"),
        ("", "empty"),
        ("vfio", "not JSON"),
    ] {
        let err = devices_from_env(vars(&[("PCIDEVICE_INTEL_COM_A_INFO", value)])).unwrap_err();
        assert!(
            matches!(&err, IntakeError::InfoJson { var, found: f } if var == "PCIDEVICE_INTEL_COM_A_INFO" && *f == found),
            "{value:?}: {err:?}"
        );
        assert!(err.to_string().contains("bad _INFO JSON"), "{err}");
    }
}

#[test]
fn a_pci_interface_without_an_address_string_is_an_error() {
    for pci in [
        r#"{"pci-address": 5}"#,
        r#"{"pci-address": null}"#,
        r#"{}"#,
        r#"7"#,
    ] {
        let json = format!(
            r#"{{"interfaces":[{{"network":"sriov","deviceInfo":{{"type":"pci","pci":{pci}}}}}]}}"#
        );
        let err = devices_from_network_info(&json).unwrap_err();
        assert!(
            matches!(&err, IntakeError::NetworkInfoShape(m) if m.contains("\"sriov\"")),
            "{pci}: {err:?}"
        );
    }
    // Without a type, a "pci" member still makes it a PCI interface.
    let err = devices_from_network_info(
        r#"{"interfaces":[{"network":"x","deviceInfo":{"pci":{"pci-address":1}}}]}"#,
    )
    .unwrap_err();
    assert!(matches!(err, IntakeError::NetworkInfoShape(_)));
    // The file's error names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network-info");
    std::fs::write(
        &path,
        r#"{"interfaces":[{"network":"n","deviceInfo":{"type":"pci","pci":{"pci-address":5}}}]}"#,
    )
    .unwrap();
    let err = devices_from_network_info_file(&path).unwrap_err();
    let msg = crate::error::error_chain(&err);
    assert!(
        msg.starts_with(&format!(
            "network-info file {}: network-info has an unexpected shape",
            path.display()
        )),
        "{msg}"
    );
}
