//! The parsers of outside input: command line values, the JSON config, the
//! device plugin's variables and KubeVirt's network-info.
//!
//! Invariants: sizes and PCI addresses print back to what they parse from;
//! a command line `validate` accepts is one the boot loader accepts; a
//! device source that parses yields a device for every address it names
//! (nothing is silently dropped) and never the same device twice.

use std::collections::BTreeSet;

use clap::Parser;
use serde_json::Value;

use super::Input;
use crate::cli::{Cli, Command, DeviceToken};
use crate::config::{format_size, parse_size, FileConfig, VmConfig};
use crate::host::bdf::Bdf;
use crate::intake::{devices_from_env, devices_from_network_info};

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn bdf_round_trips(b: &Bdf) {
    let again: Bdf = b.to_string().parse().expect("a printed address parses");
    assert_eq!(&again, b, "address round trip");
}

/// Command line values: sizes, addresses, the kernel command line, argv.
pub fn cli_values(data: &[u8]) {
    let mut input = Input::new(data);
    let which = input.u8() % 4;
    let s = text(input.rest());
    match which {
        0 => {
            if let Ok(v) = parse_size(&s) {
                if v != 0 && v % 1024 == 0 {
                    assert_eq!(parse_size(&format_size(v)).ok(), Some(v), "{s:?}");
                }
            }
        }
        1 => {
            if let Ok(b) = s.parse::<Bdf>() {
                bdf_round_trips(&b);
            }
        }
        2 => {
            let exe = std::env::current_exe().expect("the test binary");
            let mut cfg = VmConfig::new(exe);
            cfg.cmdline = s.clone();
            if cfg.validate().is_ok() {
                let mut cl = linux_loader::cmdline::Cmdline::new(
                    crate::arch::x86_64::layout::CMDLINE_MAX_SIZE,
                )
                .expect("a command line buffer");
                assert!(cl.insert_str(&s).is_ok(), "validated but refused: {s:?}");
            }
        }
        _ => {
            let args = std::iter::once("vflaunch".to_string())
                .chain(s.split('\n').map(str::to_string))
                .collect::<Vec<_>>();
            if let Ok(cli) = Cli::try_parse_from(args) {
                let tokens = |d: &[DeviceToken]| {
                    for t in d {
                        if let DeviceToken::Bdf(b) = t {
                            bdf_round_trips(b);
                        }
                    }
                };
                match cli.command {
                    Some(Command::Run(r)) => {
                        tokens(&r.intake.devices);
                        if let Some(m) = r.memory.filter(|m| *m != 0 && m % 1024 == 0) {
                            assert_eq!(parse_size(&format_size(m)).ok(), Some(m));
                        }
                    }
                    Some(Command::Check(c)) => tokens(&c.intake.devices),
                    _ => {}
                }
            }
        }
    }
}

/// The `--config` JSON.
pub fn config_json(data: &[u8]) {
    if let Ok(f) = serde_json::from_slice::<FileConfig>(data) {
        f.devices.iter().flatten().for_each(bdf_round_trips);
        if let Some(m) = f.memory {
            // The same value written back as MiB or as a size string parses again.
            if m % (1 << 20) == 0 {
                let again: FileConfig =
                    serde_json::from_str(&format!("{{\"memory\": {}}}", m >> 20)).expect("MiB");
                assert_eq!(again.memory, Some(m));
            }
        }
    }
}

/// The device plugin's and KubeVirt's variables: `NAME=VALUE` lines; a
/// name without one of the prefixes gets one.
pub fn intake_env(data: &[u8]) {
    let s = text(data);
    let mut vars: Vec<(String, String)> = Vec::new();
    for (i, line) in s.lines().enumerate() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let name = if name.starts_with("PCIDEVICE_") || name.starts_with("PCI_RESOURCE_") {
            name.to_string()
        } else {
            let prefix = ["PCIDEVICE_", "PCI_RESOURCE_", "PCIDEVICE_X_"][i % 3];
            format!("{prefix}{name}")
        };
        if vars.iter().all(|(n, _)| *n != name) {
            vars.push((name, value.to_string()));
        }
    }
    let Ok(found) = devices_from_env(vars.clone()) else {
        return;
    };
    let got: BTreeSet<Bdf> = found.devices.iter().map(|d| d.bdf).collect();
    assert_eq!(got.len(), found.devices.len(), "each device once");
    for d in &found.devices {
        let (_, value) = vars
            .iter()
            .find(|(n, _)| *n == d.source)
            .expect("the source variable exists");
        assert!(
            value
                .split(',')
                .any(|i| i.trim().parse::<Bdf>().ok() == Some(d.bdf)),
            "{} lists {}",
            d.source,
            d.bdf
        );
    }
    for (name, value) in &vars {
        if name.ends_with("_INFO") && value.trim_start().starts_with('{') {
            continue;
        }
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        assert!(!items.is_empty(), "{name} names no device but was accepted");
        for item in items {
            let b: Bdf = item.parse().expect("an accepted list parses");
            assert!(got.contains(&b), "{b} from {name} was dropped");
        }
    }
}

/// KubeVirt's network-info document.
pub fn network_info(data: &[u8]) {
    let s = text(data);
    let Ok(found) = devices_from_network_info(&s) else {
        return;
    };
    found.iter().for_each(|(_, b)| bdf_round_trips(b));
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&s) else {
        assert!(
            found.is_empty(),
            "devices from a document that is not an object"
        );
        return;
    };
    let want = match map.get("interfaces") {
        Some(Value::Array(list)) => list
            .iter()
            .filter(|i| {
                let info = i.get("deviceInfo");
                let ty = info.and_then(|d| d.get("type"));
                let pci = info.and_then(|d| d.get("pci"));
                info.is_some() && (ty.map_or(pci.is_some(), |t| t == "pci"))
            })
            .count(),
        _ => map.len(),
    };
    assert_eq!(found.len(), want, "one device per PCI interface: {s}");
}
