//! Every SR-IOV capable device (`sriov_totalvfs`): its driver and netdev,
//! VFs created out of the total, and for each VF its driver, its IOMMU
//! group with the other members (isolation, ACS), and its administrative
//! settings read from the PF over rtnetlink.

use std::path::Path;

use super::kconfig::NOIOMMU_PARAM;
use super::netlink::{format_mac, LinkState, NetlinkError, VfLink};
use super::{dir_names, read_value, Line};
use crate::host::bdf::Bdf;
use crate::host::checks::{link_name, HostPaths, GROUP_SAFE_DRIVERS, VFIO_PCI};

/// PCI class code of a PCI-to-PCI bridge (upper 16 bits of `class`).
const CLASS_BRIDGE: u32 = 0x0604;

/// One other member of a VF's IOMMU group.
struct Member {
    addr: String,
    driver: Option<String>,
    bridge: bool,
}

impl Member {
    fn describe(&self) -> String {
        let driver = self.driver.as_deref().unwrap_or("no driver");
        let bridge = if self.bridge { ", PCI bridge" } else { "" };
        format!("{} ({driver}{bridge})", self.addr)
    }
}

fn group_members(p: &HostPaths, group: &str, me: &str) -> Vec<Member> {
    let dir = p.sys.join(format!("kernel/iommu_groups/{group}/devices"));
    dir_names(&dir)
        .into_iter()
        .filter(|a| a != me)
        .map(|addr| {
            let dev = dir.join(&addr);
            let class = read_value(&dev.join("class"))
                .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok());
            Member {
                driver: link_name(&dev.join("driver")),
                bridge: class.is_some_and(|c| c >> 8 == CLASS_BRIDGE),
                addr,
            }
        })
        .collect()
}

/// The IOMMU group line of one VF.
fn group_line(p: &HostPaths, vf: &str, dev: &Path) -> Line {
    let name = format!("VF {vf} IOMMU group");
    let Some(group) = link_name(&dev.join("iommu_group")) else {
        return Line::failed(
            name,
            "none: the IOMMU is off, so it cannot be passed through",
            "enable the IOMMU (see the IOMMU lines above)",
        );
    };
    let gname = read_value(&p.sys.join(format!("kernel/iommu_groups/{group}/name")));
    if gname.as_deref() == Some("vfio-noiommu")
        || p.dev.join(format!("vfio/noiommu-{group}")).exists()
    {
        return Line::failed(
            name,
            format!("{group} is a VFIO no-IOMMU group: no DMA isolation, vflaunch refuses it"),
            format!("echo N > /sys/{NOIOMMU_PARAM} and enable the IOMMU"),
        );
    }
    let others = group_members(p, &group, vf);
    if others.is_empty() {
        return Line::ok(name, format!("{group}, alone (isolated)"));
    }
    let list: Vec<String> = others.iter().map(Member::describe).collect();
    let host: Vec<&Member> = others
        .iter()
        .filter(|m| {
            m.driver
                .as_deref()
                .is_some_and(|d| !GROUP_SAFE_DRIVERS.contains(&d))
        })
        .collect();
    let acs = "the IOMMU cannot tell these devices apart because the PCIe port above them (or the device itself) has no ACS (Access Control Services), so the group is passed through as a whole";
    let slot = "move the NIC to a slot whose upstream PCIe port supports ACS (a CPU root port usually does)";
    if host.is_empty() {
        Line::warn(
            name,
            format!(
                "{group}, not isolated: also holds {}; {acs}",
                list.join(", ")
            ),
            slot,
        )
    } else {
        let addrs: Vec<&str> = host.iter().map(|m| m.addr.as_str()).collect();
        Line::failed(
            name,
            format!("{group}, not isolated: also holds {}, and those bound to host drivers keep the group from being passed through; {acs}", list.join(", ")),
            format!("{slot}, or pass the whole group: `vflaunch bind {vf} {}`", addrs.join(" ")),
        )
    }
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "not reported",
    }
}

/// A locally administered MAC derived from the VF's address, for the fix.
fn suggested_mac(vf: &str) -> String {
    let b: Option<Bdf> = vf.parse().ok();
    let (bus, dev, func) = b.map_or((0, 0, 0), |b| (b.bus, b.device, b.function));
    format!("02:00:00:{bus:02x}:{dev:02x}:{func:02x}")
}

/// The administrative settings line of VF number `n` of PF netdev `ifname`.
fn settings_line(
    vf: &str,
    n: u32,
    ifname: &str,
    links: &Result<Vec<VfLink>, NetlinkError>,
) -> Line {
    let name = format!("VF {vf} admin settings");
    let list = match links {
        Ok(list) => list,
        Err(e) => {
            return Line::warn(
                name,
                format!(
                    "cannot read them from {ifname} over rtnetlink: {}",
                    crate::error::error_chain(e)
                ),
                format!(
                "check `ip link show {ifname}` (it lists the VFs when the PF driver reports them)"
            ),
            )
        }
    };
    let Some(l) = list.iter().find(|l| l.vf == n) else {
        return Line::warn(
            name,
            format!("{ifname} reports no vf {n} over rtnetlink"),
            format!("check `ip link show {ifname}`"),
        );
    };
    let vlan = if l.vlan == 0 {
        "no VLAN".to_string()
    } else {
        format!("vlan {} qos {}", l.vlan, l.qos)
    };
    let state = l
        .link_state
        .map_or("not reported".to_string(), |s| s.to_string());
    let saw = format!(
        "{ifname} vf {n}: mac {}, {vlan}, spoof check {}, trust {}, link state {state}",
        format_mac(&l.mac),
        on_off(l.spoof_check),
        on_off(l.trust)
    );
    if l.mac == [0; 6] {
        Line::warn(
            name,
            format!("{saw}: no administrative MAC, so the guest's VF driver picks a random one on every boot"),
            format!("ip link set {ifname} vf {n} mac {}", suggested_mac(vf)),
        )
    } else if l.link_state == Some(LinkState::Disable) {
        Line::warn(
            name,
            format!("{saw}: the VF's link is forced down"),
            format!("ip link set {ifname} vf {n} state auto"),
        )
    } else {
        Line::ok(name, saw)
    }
}

/// VF number and address of each `virtfnN` link of a PF, by number.
fn virtfns(pf: &Path) -> Vec<(u32, String)> {
    let mut vfs: Vec<(u32, String)> = dir_names(pf)
        .into_iter()
        .filter_map(|n| {
            let num = n.strip_prefix("virtfn")?.parse().ok()?;
            Some((num, link_name(&pf.join(&n))?))
        })
        .collect();
    vfs.sort();
    vfs
}

pub(super) fn check(
    p: &HostPaths,
    vf_links: &dyn Fn(&str) -> Result<Vec<VfLink>, NetlinkError>,
    out: &mut Vec<Line>,
) {
    let devices = p.sys.join("bus/pci/devices");
    let mut any = false;
    for pf in dir_names(&devices) {
        let dev = devices.join(&pf);
        let Some(total) =
            read_value(&dev.join("sriov_totalvfs")).and_then(|v| v.parse::<u32>().ok())
        else {
            continue;
        };
        if total == 0 {
            continue;
        }
        any = true;
        let numvfs: u32 = read_value(&dev.join("sriov_numvfs"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let id = format!(
            "{}:{}",
            read_value(&dev.join("vendor"))
                .unwrap_or_default()
                .trim_start_matches("0x"),
            read_value(&dev.join("device"))
                .unwrap_or_default()
                .trim_start_matches("0x")
        );
        let driver = link_name(&dev.join("driver"));
        let netdev = dir_names(&dev.join("net")).into_iter().next();
        let name = format!("SR-IOV PF {pf}");
        let saw = format!(
            "{id}, driver {}, netdev {}: {numvfs} of {total} VFs created",
            driver.as_deref().unwrap_or("none"),
            netdev.as_deref().unwrap_or("none")
        );
        let create = format!("echo {total} > /sys/bus/pci/devices/{pf}/sriov_numvfs (any number up to {total}; at every boot, e.g. from a udev rule or systemd unit)");
        out.push(if driver.is_none() {
            Line::warn(
                name,
                format!("{saw}; VFs are created through the PF's driver"),
                format!("load the PF's network driver (modprobe it), then {create}"),
            )
        } else if numvfs == 0 {
            Line::warn(name, saw, create)
        } else {
            Line::ok(name, saw)
        });
        let vfs = virtfns(&dev);
        if vfs.is_empty() {
            continue;
        }
        let links = netdev.as_deref().map(vf_links);
        for (n, vf) in vfs {
            let vdev = devices.join(&vf);
            let name = format!("VF {vf} driver");
            out.push(match link_name(&vdev.join("driver")) {
                Some(d) if d == VFIO_PCI => Line::ok(name, format!("{VFIO_PCI} (PF {pf} vf {n})")),
                d => Line::warn(
                    name,
                    format!(
                        "{} (PF {pf} vf {n}), not {VFIO_PCI}: not ready for passthrough",
                        d.as_deref().unwrap_or("no driver")
                    ),
                    format!("vflaunch bind {vf}"),
                ),
            });
            out.push(group_line(p, &vf, &vdev));
            match (&netdev, &links) {
                (Some(ifname), Some(links)) => out.push(settings_line(&vf, n, ifname, links)),
                _ => out.push(Line::warn(
                    format!("VF {vf} admin settings"),
                    format!("the PF {pf} has no netdev to read them from"),
                    "bind the PF to its network driver",
                )),
            }
        }
    }
    if !any {
        out.push(Line::warn(
            "SR-IOV devices",
            "no device with sriov_totalvfs > 0",
            "enable SR-IOV in the firmware setup (globally and for the NIC) and load the NIC's PF driver",
        ));
    }
}
