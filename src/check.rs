//! `vflaunch check`: run every host pre-flight check and print one line per
//! check, so an operator sees all problems at once.

use std::io::Write;

use crate::pci_addr::Bdf;
use crate::vfio::host::{self, HostPaths, IrqRemap};

/// Runs the checks, writes the report to `out`; returns the exit code
/// (0 all passed, 3 something failed).
pub fn report(
    p: &HostPaths,
    devices: &[Bdf],
    memory: u64,
    allow_unsafe: bool,
    out: &mut dyn Write,
) -> i32 {
    let mut failed = false;
    let mut line = |name: &str, r: Result<Option<&str>, String>| {
        let _ = match r {
            Ok(None) => writeln!(out, "ok      {name}"),
            Ok(Some(w)) => writeln!(out, "WARN    {name}: {w}"),
            Err(e) => {
                failed = true;
                writeln!(out, "FAILED  {name}: {e}")
            }
        };
    };
    line(
        "/dev/kvm",
        host::check_kvm(p).map(|_| None).map_err(|e| e.to_string()),
    );
    if devices.is_empty() {
        line(
            "devices",
            Ok(Some("none given (--device, PCIDEVICE_* or network-info)")),
        );
    } else {
        line(
            "locked memory",
            host::check_memlock(memory)
                .map(|_| None)
                .map_err(|e| e.to_string()),
        );
        line(
            "interrupt remapping",
            host::check_interrupt_remapping(p, allow_unsafe)
                .map(IrqRemap::warning)
                .map_err(|e| e.to_string()),
        );
        for bdf in devices {
            let r = host::check_device(p, *bdf).map(|d| {
                if d.is_vf {
                    None
                } else {
                    Some("not an SR-IOV VF (passthrough still works)")
                }
            });
            line(&bdf.to_string(), r.map_err(|e| e.to_string()));
        }
    }
    if failed {
        3
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_host(dir: &tempfile::TempDir) -> HostPaths {
        HostPaths {
            sys: dir.path().join("sys"),
            dev: dir.path().join("dev"),
            proc: dir.path().join("proc"),
        }
    }

    #[test]
    fn missing_kvm_and_device_fail_with_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let p = empty_host(&dir);
        let mut out = Vec::new();
        let bdf: Bdf = "0000:03:02.1".parse().unwrap();
        let code = report(&p, &[bdf], 64 << 20, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, 3, "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("FAILED  /dev/kvm")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("FAILED  0000:03:02.1") && l.contains("not found")),
            "{text}"
        );
    }

    #[test]
    fn no_devices_only_checks_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let p = empty_host(&dir);
        let mut out = Vec::new();
        report(&p, &[], 64 << 20, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("WARN    devices"));
    }
}
