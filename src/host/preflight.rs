//! The one pre-flight sequence, for `vflaunch run` (stop at the first
//! failure) and `vflaunch check` (print every check, one line each). The
//! order: each device (the most specific and most common problems), then
//! `/dev/kvm`, guest memory (huge pages, or available memory when devices
//! pin it), RLIMIT_MEMLOCK and interrupt remapping.

use std::io::Write;

use super::backend::{self, Backend, BackendChoice, Preopened};
use super::bdf::Bdf;
use super::checks::{self, HostDevice, HostError, HostPaths, IrqRemap};
use crate::error::exit_code;

/// What the checks are run for.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Devices to pass through.
    pub devices: &'a [Bdf],
    /// Guest RAM that VFIO will pin, in bytes.
    pub memory: u64,
    /// Accept a host without interrupt remapping.
    pub allow_unsafe_interrupts: bool,
    /// Guest RAM comes from 2 MiB huge pages.
    pub hugepages: bool,
    /// The VFIO interface asked for.
    pub backend: BackendChoice,
    /// Descriptors a launcher opened for us.
    pub preopened: &'a Preopened,
}

/// No pre-opened descriptors.
#[cfg(test)]
static NONE_PREOPENED: Preopened = Preopened {
    iommufd: None,
    devices: Vec::new(),
};

#[cfg(test)]
impl<'a> Request<'a> {
    /// A request with the automatic backend and no pre-opened descriptors.
    pub fn new(devices: &'a [Bdf], memory: u64, allow_unsafe_interrupts: bool) -> Self {
        Request {
            devices,
            memory,
            allow_unsafe_interrupts,
            backend: BackendChoice::Auto,
            preopened: &NONE_PREOPENED,
            hugepages: false,
        }
    }
}

/// What pre-flight found: the checked devices and the VFIO backend.
#[derive(Debug)]
pub struct Checked {
    /// The devices, with their cdevs when the backend is iommufd.
    pub devices: Vec<HostDevice>,
    /// The VFIO interface the VM will use.
    pub backend: Backend,
}

/// How one check came out.
#[derive(Debug)]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Passed, with something the operator should know.
    Warn(&'static str),
    /// Passed; what was decided.
    Note(String),
    /// Failed.
    Failed(HostError),
}

/// One check: what it looked at, and the outcome.
#[derive(Debug)]
pub struct Check {
    /// What was checked (a BDF, "/dev/kvm", ...).
    pub name: String,
    /// How it came out.
    pub outcome: Outcome,
}

fn outcome<T>(r: Result<T, HostError>, warn: impl FnOnce(T) -> Option<&'static str>) -> Outcome {
    match r {
        Ok(v) => warn(v).map_or(Outcome::Ok, Outcome::Warn),
        Err(e) => Outcome::Failed(e),
    }
}

/// Runs every check for `req`; returns them in order and what passed.
pub fn run_checks(
    p: &HostPaths,
    req: &Request,
    memlock: impl Fn(u64) -> Result<(), HostError>,
) -> (Vec<Check>, Checked) {
    let mut out = Vec::new();
    let found: Vec<Result<HostDevice, HostError>> = req
        .devices
        .iter()
        .map(|&bdf| checks::check_device(p, bdf))
        .collect();
    let mut devices: Vec<HostDevice> = found
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let selected = if req.devices.is_empty() {
        Ok((Backend::Group, String::new()))
    } else {
        backend::select(p, req.backend, &mut devices, req.preopened)
    };
    let chosen = selected.as_ref().map_or(Backend::Group, |(b, _)| *b);
    let mut passed = Vec::new();
    for (bdf, r) in req.devices.iter().zip(found) {
        let r = r.and_then(|_| {
            let d = devices
                .iter()
                .find(|d| d.bdf == *bdf)
                .cloned()
                .ok_or(HostError::DeviceNotFound(*bdf))?;
            if chosen == Backend::Group {
                checks::check_group_nodes(p, &d)?;
            }
            Ok(d)
        });
        let r = r.map(|d| {
            let warning = (!d.is_vf).then_some("not an SR-IOV VF (passthrough still works)");
            passed.push(d);
            warning
        });
        out.push(Check {
            name: bdf.to_string(),
            outcome: outcome(r, |w| w),
        });
    }
    if !req.devices.is_empty() {
        out.push(Check {
            name: "vfio backend".into(),
            outcome: match selected {
                Ok((b, why)) => Outcome::Note(format!("{} ({why})", b.name())),
                Err(e) => Outcome::Failed(e),
            },
        });
    }
    out.push(Check {
        name: "/dev/kvm".into(),
        outcome: outcome(checks::check_kvm(p), |()| None),
    });
    // Without devices nothing pins 4 KiB guest RAM: the host may overcommit it.
    if req.hugepages || !req.devices.is_empty() {
        let r = super::guest_memory::check_host_memory(p, req.memory, req.hugepages);
        out.push(Check {
            name: "guest memory".into(),
            outcome: outcome(r, |()| None),
        });
    }
    let checked = Checked {
        devices: passed,
        backend: chosen,
    };
    if req.devices.is_empty() {
        return (out, checked);
    }
    let accounting = (chosen == Backend::Iommufd)
        .then(|| backend::iommufd_accounting(p, req.preopened))
        .flatten();
    out.push(Check {
        name: "locked memory".into(),
        outcome: match (memlock(req.memory), accounting) {
            (Ok(()), Some(note)) => Outcome::Note(note.to_string()),
            (r, _) => outcome(r, |()| None),
        },
    });
    let remap = checks::check_interrupt_remapping(p, req.allow_unsafe_interrupts);
    out.push(Check {
        name: "interrupt remapping".into(),
        outcome: outcome(remap, IrqRemap::warning),
    });
    (out, checked)
}

/// The checks for `vflaunch run`: the first failure, or the checked devices
/// (warnings are logged).
pub fn preflight(p: &HostPaths, req: &Request) -> Result<Checked, HostError> {
    preflight_with(p, req, checks::check_memlock)
}

fn preflight_with(
    p: &HostPaths,
    req: &Request,
    memlock: impl Fn(u64) -> Result<(), HostError>,
) -> Result<Checked, HostError> {
    let (list, checked) = run_checks(p, req, memlock);
    for c in list {
        match c.outcome {
            Outcome::Ok => {}
            Outcome::Note(n) => log::info!("{}: {n}", c.name),
            Outcome::Warn(w) => log::warn!("{}: {w}", c.name),
            Outcome::Failed(e) => return Err(e),
        }
    }
    Ok(checked)
}

/// `vflaunch check`: writes one line per check to `out`; returns the exit
/// code (0 all passed, [`exit_code::HOST`] something failed).
pub fn report(p: &HostPaths, req: &Request, out: &mut dyn Write) -> i32 {
    let (mut list, _) = run_checks(p, req, checks::check_memlock);
    if req.devices.is_empty() {
        list.push(Check {
            name: "devices".into(),
            outcome: Outcome::Warn("none given (--device, PCIDEVICE_* or network-info)"),
        });
    }
    let mut failed = false;
    for c in list {
        let _ = match c.outcome {
            Outcome::Ok => writeln!(out, "ok      {}", c.name),
            Outcome::Note(n) => writeln!(out, "ok      {}: {n}", c.name),
            Outcome::Warn(w) => writeln!(out, "WARN    {}: {w}", c.name),
            Outcome::Failed(e) => {
                failed = true;
                writeln!(out, "FAILED  {}: {e}", c.name)
            }
        };
    }
    if failed {
        exit_code::HOST
    } else {
        exit_code::OK
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::host::fake::{bdf, fake};

    fn req(devices: &[Bdf]) -> Request<'_> {
        Request::new(devices, 64 << 20, false)
    }

    #[test]
    fn run_stops_at_the_first_failure_in_order() {
        let f = fake();
        let ok = |_: u64| Ok(());
        assert!(preflight_with(&f.p, &req(&[]), ok)
            .unwrap()
            .devices
            .is_empty());
        let devices = [bdf("0000:03:02.1"), bdf("0000:03:02.2")];
        // Device problems come first, even before a missing /dev/kvm.
        fs::remove_file(f.p.dev.join("kvm")).unwrap();
        let err = preflight_with(&f.p, &req(&devices), ok).unwrap_err();
        assert!(matches!(err, HostError::DeviceNotFound(_)), "{err}");
        f.add("0000:03:02.1", Some("vfio-pci"), Some(1));
        f.add("0000:03:02.2", Some("vfio-pci"), Some(1));
        let err = preflight_with(&f.p, &req(&devices), ok).unwrap_err();
        assert!(matches!(err, HostError::KvmUnavailable { .. }), "{err}");
        fs::write(f.p.dev.join("kvm"), "").unwrap();
        // Then guest memory the host cannot provide: 64 MiB, 32 MiB available.
        let meminfo = f.p.proc.join("meminfo");
        let full = fs::read_to_string(&meminfo).unwrap();
        fs::write(&meminfo, "MemTotal: 4000000 kB\nMemAvailable: 32768 kB\n").unwrap();
        let low = |need| Err(HostError::MemlockTooLow { limit: 0, need });
        let err = preflight_with(&f.p, &req(&devices), low).unwrap_err();
        assert!(matches!(err, HostError::MemoryShort { .. }), "{err}");
        fs::write(&meminfo, full).unwrap();
        // Then memlock, then interrupt remapping.
        let low = |need| Err(HostError::MemlockTooLow { limit: 0, need });
        let err = preflight_with(&f.p, &req(&devices), low).unwrap_err();
        assert!(matches!(err, HostError::MemlockTooLow { need, .. } if need == 64 << 20));
        let err = preflight_with(&f.p, &req(&devices), ok).unwrap_err();
        assert!(
            matches!(err, HostError::NoInterruptRemapping { .. }),
            "{err}"
        );
        let unsafe_ok = Request {
            allow_unsafe_interrupts: true,
            ..req(&devices)
        };
        let got = preflight_with(&f.p, &unsafe_ok, ok).unwrap();
        assert_eq!(
            got.devices.iter().map(|d| d.group).collect::<Vec<_>>(),
            [1, 1]
        );
        assert_eq!(
            got.backend,
            Backend::Group,
            "no /dev/iommu in the fake host"
        );
    }

    #[test]
    fn check_prints_every_problem_once_in_the_same_order() {
        let f = fake();
        fs::remove_file(f.p.dev.join("kvm")).unwrap();
        f.add("0000:03:02.2", Some("vfio-pci"), Some(1));
        let devices = [bdf("0000:03:02.1"), bdf("0000:03:02.2")];
        let mut out = Vec::new();
        let code = report(&f.p, &req(&devices), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, exit_code::HOST, "{text}");
        let heads: Vec<&str> = text
            .lines()
            .map(|l| l.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(heads[0], "FAILED  0000");
        assert!(text.lines().next().unwrap().contains("not found"), "{text}");
        assert!(text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("WARN    0000:03:02.2: not an SR-IOV VF"));
        assert_eq!(
            text.lines().nth(2).unwrap(),
            "ok      vfio backend: vfio-group (auto: the group interface, because {}/iommu is missing (kernel without CONFIG_IOMMUFD))".replace("{}", &f.p.dev.display().to_string())
        );
        assert!(text.lines().nth(3).unwrap().starts_with("FAILED  /dev/kvm"));
        assert_eq!(text.lines().nth(4).unwrap(), "ok      guest memory");
        assert!(text
            .lines()
            .nth(6)
            .unwrap()
            .starts_with("FAILED  interrupt remapping"));
        assert_eq!(text.lines().count(), 7, "{text}");
    }

    #[test]
    fn no_devices_only_checks_kvm() {
        let f = fake();
        let mut out = Vec::new();
        assert_eq!(report(&f.p, &req(&[]), &mut out), exit_code::OK);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "ok      /dev/kvm\nWARN    devices: none given (--device, PCIDEVICE_* or network-info)\n");
    }

    #[test]
    fn huge_pages_are_checked_even_without_devices() {
        let f = fake();
        let hp = Request {
            hugepages: true,
            ..req(&[])
        };
        let mut out = Vec::new();
        assert_eq!(report(&f.p, &hp, &mut out), exit_code::HOST);
        let text = String::from_utf8(out).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(
            line.starts_with("FAILED  guest memory: guest memory is 64 MiB but only 0 2 MiB huge pages are free: reserve 32 more"),
            "{text}"
        );
        f.write(
            "kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
            "32\n",
        );
        assert!(preflight_with(&f.p, &hp, |_| Ok(()))
            .unwrap()
            .devices
            .is_empty());
    }
}
