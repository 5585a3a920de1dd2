//! Replays the committed seed corpus and the inputs that once broke an
//! invariant (`fuzz/regressions/<target>/`) through the harnesses.

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            harness(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
    harness(&[]);
}

#[test]
fn pci_bus_seeds() {
    replay("pci_bus", super::pci_bus);
}

#[test]
fn device_config_seeds() {
    replay("device_config", super::device_config);
}

#[test]
fn legacy_seeds() {
    replay("legacy", super::legacy);
}

#[test]
fn cli_values_seeds() {
    replay("cli_values", super::cli_values);
}

#[test]
fn config_json_seeds() {
    replay("config_json", super::config_json);
}

#[test]
fn intake_env_seeds() {
    replay("intake_env", super::intake_env);
}

#[test]
fn network_info_seeds() {
    replay("network_info", super::network_info);
}
