//! `bind` / `unbind` on a fake sysfs whose [`FakeKernel`] acts on the
//! driver_override, unbind, drivers_probe and bind writes.

use std::fs;

use super::*;
use crate::host::fake::{bdf, fake, Fake, FakeKernel, Pf};

const VF0: &str = "0000:02:10.0";
const VF1: &str = "0000:02:10.4";

/// An I350 PF with two VFs on igbvf, each alone in its group; vfio-pci loaded.
fn host() -> (Fake, FakeKernel) {
    let f = fake();
    f.vfio_loaded();
    f.sriov(&Pf {
        addr: "0000:02:00.0",
        id: ("8086", "1521"),
        driver: "igb",
        netdev: "eth0",
        total: 7,
        vfs: &[VF0, VF1],
        vf_driver: Some("igbvf"),
        first_group: Some(20),
    });
    let mut k = FakeKernel::new(&f);
    k.native.insert(VF0.into(), "igbvf".into());
    k.native.insert(VF1.into(), "igbvf".into());
    (f, k)
}

fn driver(f: &Fake, addr: &str) -> Option<String> {
    link_name(&f.p.sys.join("bus/pci/devices").join(addr).join("driver"))
}

fn state(f: &Fake) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(f.p.run.join("vflaunch/bind.json")).unwrap()).unwrap()
}

fn w(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

#[test]
fn bind_then_unbind_round_trips() {
    let (f, k) = host();
    let mut out = Vec::new();
    bind(&f.p, &k, &[bdf(VF0)], &mut out).unwrap();
    let dev = format!("bus/pci/devices/{VF0}");
    assert_eq!(
        *k.writes.borrow(),
        [
            w(&format!("{dev}/driver_override"), "vfio-pci"),
            w(&format!("{dev}/driver/unbind"), VF0),
            w("bus/pci/drivers_probe", VF0),
        ]
    );
    // The writes landed in the files, too.
    assert_eq!(
        fs::read_to_string(f.p.sys.join(&dev).join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        fs::read_to_string(f.p.sys.join("bus/pci/drivers/igbvf/unbind")).unwrap(),
        VF0
    );
    assert_eq!(
        fs::read_to_string(f.p.sys.join("bus/pci/drivers_probe")).unwrap(),
        VF0
    );
    assert_eq!(driver(&f, VF0).as_deref(), Some("vfio-pci"));
    assert_eq!(driver(&f, VF1).as_deref(), Some("igbvf"));
    assert_eq!(state(&f), serde_json::json!({ VF0: "igbvf" }));
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text, format!("{VF0}: igbvf -> vfio-pci (IOMMU group 20, /dev/vfio/20); `vflaunch unbind {VF0}` gives it back\n"));

    // Binding again changes nothing and keeps the first record.
    let mut out = Vec::new();
    bind(&f.p, &k, &[bdf(VF0)], &mut out).unwrap();
    assert_eq!(k.writes.borrow().len(), 3);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{VF0}: already bound to vfio-pci\n")
    );

    k.writes.borrow_mut().clear();
    let mut out = Vec::new();
    unbind(&f.p, &k, &[bdf(VF0)], &mut out).unwrap();
    assert_eq!(
        *k.writes.borrow(),
        [
            w(&format!("{dev}/driver_override"), ""),
            w(&format!("{dev}/driver/unbind"), VF0),
            w("bus/pci/drivers/igbvf/bind", VF0),
        ]
    );
    assert_eq!(driver(&f, VF0).as_deref(), Some("igbvf"));
    assert_eq!(state(&f), serde_json::json!({}));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{VF0}: vfio-pci -> igbvf (as before `vflaunch bind`)\n")
    );
}

#[test]
fn unbind_without_a_record_lets_the_kernel_probe() {
    let (f, k) = host();
    let dev = f.p.sys.join("bus/pci/devices").join(VF1);
    fs::remove_file(dev.join("driver")).unwrap();
    symlink_driver(&f, VF1, "vfio-pci");
    let mut out = Vec::new();
    unbind(&f.p, &k, &[bdf(VF1)], &mut out).unwrap();
    assert_eq!(
        k.writes.borrow().last().unwrap(),
        &w("bus/pci/drivers_probe", VF1)
    );
    assert_eq!(driver(&f, VF1).as_deref(), Some("igbvf"));
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        format!("{VF1}: vfio-pci -> igbvf (not bound by `vflaunch bind`; the kernel probed it)\n")
    );
    // A device not on vfio-pci is left alone.
    let mut out = Vec::new();
    unbind(&f.p, &k, &[bdf(VF0)], &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{VF0}: not bound to vfio-pci (igbvf), left as it is\n")
    );
}

fn symlink_driver(f: &Fake, addr: &str, d: &str) {
    let dev = f.p.sys.join("bus/pci/devices").join(addr);
    std::os::unix::fs::symlink(format!("../../drivers/{d}"), dev.join("driver")).unwrap();
}

#[test]
fn a_group_with_host_drivers_is_refused_naming_them() {
    let (f, k) = host();
    // The PF (on igb) shares VF0's group: no ACS between them.
    f.join_group("0000:02:00.0", 20, "0x020000");
    f.add("0000:00:1c.0", Some("pcieport"), None);
    f.join_group("0000:00:1c.0", 20, "0x060400");
    let err = bind(&f.p, &k, &[bdf(VF1), bdf(VF0)], &mut Vec::new()).unwrap_err();
    let BindError::GroupBusy {
        bdf: b,
        group,
        others,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((b.to_string().as_str(), group.as_str()), (VF0, "20"));
    assert_eq!(others, &[("0000:02:00.0".to_string(), "igb".to_string())]);
    let msg = err.to_string();
    assert!(
        msg.contains("also holds 0000:02:00.0 (igb), bound to host drivers"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("`vflaunch bind {VF0} 0000:02:00.0`")),
        "{msg}"
    );
    // Nothing was touched, not even VF1, which was fine.
    assert!(k.writes.borrow().is_empty());
    assert_eq!(driver(&f, VF1).as_deref(), Some("igbvf"));
    assert!(!f.p.run.join("vflaunch/bind.json").exists());
}

#[test]
fn refusals_before_any_write() {
    let (f, k) = host();
    let err = bind(&f.p, &k, &[bdf("0000:09:00.0")], &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("lspci -D"), "{err}");
    f.add("0000:05:00.0", Some("e1000e"), None);
    let err = bind(&f.p, &k, &[bdf("0000:05:00.0")], &mut Vec::new()).unwrap_err();
    assert!(matches!(err, BindError::NoIommuGroup(_)), "{err}");
    fs::remove_dir(f.p.sys.join("bus/pci/drivers/vfio-pci")).unwrap();
    let err = bind(&f.p, &k, &[bdf(VF0)], &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("modprobe vfio-pci"), "{err}");
    assert!(k.writes.borrow().is_empty());
}

#[test]
fn unbind_needs_the_recorded_driver_loaded() {
    let (f, k) = host();
    bind(&f.p, &k, &[bdf(VF0)], &mut Vec::new()).unwrap();
    fs::remove_dir_all(f.p.sys.join("bus/pci/drivers/igbvf")).unwrap();
    let n = k.writes.borrow().len();
    let err = unbind(&f.p, &k, &[bdf(VF0)], &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("`modprobe igbvf`"), "{err}");
    assert_eq!(k.writes.borrow().len(), n);
    assert_eq!(state(&f), serde_json::json!({ VF0: "igbvf" }));
    // A damaged state file is named, not guessed around.
    fs::write(f.p.run.join("vflaunch/bind.json"), "{").unwrap();
    let err = unbind(&f.p, &k, &[bdf(VF0)], &mut Vec::new()).unwrap_err();
    assert!(matches!(err, BindError::StateFormat { .. }), "{err}");
}

#[test]
fn a_probe_that_does_not_take_the_device_is_an_error_but_recorded() {
    let (f, mut k) = host();
    // A device with no driver, and a vfio-pci whose probe fails on it.
    fs::remove_file(f.p.sys.join("bus/pci/devices").join(VF1).join("driver")).unwrap();
    k.refuse.push("vfio-pci".into());
    let err = bind(&f.p, &k, &[bdf(VF1)], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&err, BindError::NotTaken { now: None, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("dmesg"), "{err}");
    // No unbind write for a device without a driver; the record says "none".
    let dev = format!("bus/pci/devices/{VF1}");
    assert_eq!(
        *k.writes.borrow(),
        [
            w(&format!("{dev}/driver_override"), "vfio-pci"),
            w("bus/pci/drivers_probe", VF1)
        ]
    );
    assert_eq!(state(&f), serde_json::json!({ VF1: null }));
    // A write the kernel refuses is named.
    let ovr = f.p.sys.join(&dev).join("driver_override");
    fs::remove_file(&ovr).unwrap();
    fs::create_dir(&ovr).unwrap();
    let err = bind(&f.p, &k, &[bdf(VF1)], &mut Vec::new()).unwrap_err();
    assert!(matches!(err, BindError::Write { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot write vfio-pci to")
            && err.to_string().contains("driver_override"),
        "{err}"
    );
}
