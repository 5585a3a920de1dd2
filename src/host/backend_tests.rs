//! Backend selection on fake hosts: /dev/iommu present or not, devices with
//! and without a vfio cdev, pre-opened descriptors checked.

use std::os::fd::AsRawFd;

use super::*;
use crate::host::checks::check_device;
use crate::host::fake::{bdf, fake, Fake};

fn with_cdev(f: &Fake, addr: &str, n: u32) -> HostDevice {
    let dev = f.add(addr, Some("vfio-pci"), Some(n));
    fs::create_dir_all(dev.join(format!("vfio-dev/vfio{n}"))).unwrap();
    fs::create_dir_all(f.p.dev.join("vfio/devices")).unwrap();
    fs::write(f.p.dev.join(format!("vfio/devices/vfio{n}")), "").unwrap();
    check_device(&f.p, bdf(addr)).unwrap()
}

#[test]
fn auto_picks_iommufd_only_when_everything_has_it() {
    let f = fake();
    let mut devs = vec![
        with_cdev(&f, "0000:03:02.1", 1),
        with_cdev(&f, "0000:03:02.2", 2),
    ];
    let none = Preopened::default();
    // No /dev/iommu: the group interface, and why.
    let (b, why) = select(&f.p, BackendChoice::Auto, &mut devs, &none).unwrap();
    assert_eq!(b, Backend::Group);
    assert!(why.contains("CONFIG_IOMMUFD"), "{why}");
    fs::write(f.p.dev.join("iommu"), "").unwrap();
    let (b, why) = select(&f.p, BackendChoice::Auto, &mut devs, &none).unwrap();
    assert_eq!(b, Backend::Iommufd, "{why}");
    assert_eq!(
        devs[1].cdev,
        Some(Cdev::Path(f.p.dev.join("vfio/devices/vfio2")))
    );
    // One device without a cdev: auto falls back, iommufd asked for fails naming it.
    f.add("0000:03:02.3", Some("vfio-pci"), Some(3));
    devs.push(check_device(&f.p, bdf("0000:03:02.3")).unwrap());
    let (b, why) = select(&f.p, BackendChoice::Auto, &mut devs, &none).unwrap();
    assert_eq!(b, Backend::Group);
    assert!(why.contains("0000:03:02.3 has no vfio cdev"), "{why}");
    let err = select(&f.p, BackendChoice::Iommufd, &mut devs, &none).unwrap_err();
    assert!(matches!(err, HostError::NoCdev(_)), "{err}");
    assert!(err.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"));
    // Group asked for: always the group interface.
    assert_eq!(
        select(&f.p, BackendChoice::Group, &mut devs, &none)
            .unwrap()
            .0,
        Backend::Group
    );
}

#[test]
fn iommufd_needs_its_nodes() {
    let f = fake();
    let mut devs = vec![with_cdev(&f, "0000:03:02.1", 1)];
    let none = Preopened::default();
    let err = select(&f.p, BackendChoice::Iommufd, &mut devs, &none).unwrap_err();
    assert!(matches!(err, HostError::NoIommufd(_)), "{err}");
    fs::write(f.p.dev.join("iommu"), "").unwrap();
    fs::remove_file(f.p.dev.join("vfio/devices/vfio1")).unwrap();
    let err = select(&f.p, BackendChoice::Iommufd, &mut devs, &none).unwrap_err();
    assert!(matches!(err, HostError::CdevNodeMissing { .. }), "{err}");
    assert!(err.to_string().contains("fd=N"), "{err}");
}

#[test]
fn preopened_descriptors_are_checked_and_need_no_dev_nodes() {
    let f = fake();
    let mut devs = vec![with_cdev(&f, "0000:03:02.1", 1)];
    fs::remove_file(f.p.dev.join("vfio/devices/vfio1")).unwrap();
    let null = fs::File::open("/dev/null").unwrap();
    let fd = null.as_raw_fd();
    let pre = Preopened {
        iommufd: Some(fd),
        devices: vec![(bdf("0000:03:02.1"), fd)],
    };
    let (b, why) = select(&f.p, BackendChoice::Auto, &mut devs, &pre).unwrap();
    assert_eq!(b, Backend::Iommufd);
    assert!(why.contains("passed in"), "{why}");
    assert_eq!(devs[0].cdev, Some(Cdev::Fd(fd)));
    // Not a character device; not open at all; asked together with the group backend.
    let file = tempfile::tempfile().unwrap();
    let err = check_fd(file.as_raw_fd(), "--iommufd-fd").unwrap_err();
    assert!(err.to_string().contains("not a character device"), "{err}");
    let err = check_fd(987_654, "--iommufd-fd").unwrap_err();
    assert!(err.to_string().contains("not open"), "{err}");
    let err = select(&f.p, BackendChoice::Group, &mut devs, &pre).unwrap_err();
    assert!(matches!(err, HostError::FdsNeedIommufd), "{err}");
    assert_eq!(
        "iommufd".parse::<BackendChoice>(),
        Ok(BackendChoice::Iommufd)
    );
    assert!("vfio".parse::<BackendChoice>().is_err());
}
