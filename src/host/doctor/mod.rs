//! `vflaunch doctor`: the whole SR-IOV host setup, one line per check, in
//! the order a person would fix it: CPU and KVM (`cpu`), the IOMMU, the
//! kernel command line and interrupt remapping (`iommu`), kernel support for
//! VFIO (`kconfig`), every SR-IOV device with its VFs and their groups
//! (`sriov`, with the VFs' administrative settings read over rtnetlink by
//! `netlink`), hints from the kernel log (`klog`), huge pages and locked
//! memory (`memory`), then with `--device` every check of `vflaunch check`
//! (through [`preflight::run_checks`]). Every path is rooted at
//! [`HostPaths`].

mod cpu;
mod iommu;
mod kconfig;
mod klog;
mod memory;
pub mod netlink;
mod sriov;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;

use super::backend::{BackendChoice, Preopened};
use super::bdf::Bdf;
use super::checks::{HostError, HostPaths};
use super::preflight::{self, Outcome};
use crate::error::exit_code;
use netlink::{NetlinkError, VfLink};

/// The most a sysfs/procfs text file is read (the kernel config is read by `kconfig`).
const MAX_TEXT: u64 = 1 << 20;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but something should be known or fixed.
    Warn,
    /// Passthrough cannot work until this is fixed.
    Failed,
}

/// One line of the report: what was checked, how it came out, what was
/// seen, and for anything not ok the fix (or the message says it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    /// What was checked.
    pub check: String,
    /// The verdict.
    pub status: Status,
    /// What the check saw.
    pub saw: String,
    /// The exact fix: a command, a kernel parameter or a firmware setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Line {
    fn new(check: impl Into<String>, status: Status, saw: impl Into<String>) -> Self {
        Line {
            check: check.into(),
            status,
            saw: saw.into(),
            fix: None,
        }
    }

    /// A passing check.
    pub fn ok(check: impl Into<String>, saw: impl Into<String>) -> Self {
        Line::new(check, Status::Ok, saw)
    }

    /// A warning with its fix.
    pub fn warn(check: impl Into<String>, saw: impl Into<String>, fix: impl Into<String>) -> Self {
        Line::new(check, Status::Warn, saw).with_fix(fix)
    }

    /// A failure with its fix.
    pub fn failed(
        check: impl Into<String>,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Line::new(check, Status::Failed, saw).with_fix(fix)
    }

    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Failed => "FAILED",
        };
        write!(f, "{label:<8}{}: {}", self.check, self.saw)?;
        match &self.fix {
            Some(fix) => write!(f, "; fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// What the doctor is asked.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// Devices to run every `vflaunch check` check on.
    pub devices: &'a [Bdf],
    /// Guest RAM to check locked memory and huge pages against, in bytes.
    pub memory: u64,
}

/// What the doctor cannot read from files: the RLIMIT_MEMLOCK check of
/// `check` and the PF's VF settings over rtnetlink.
pub struct Probes<'a> {
    /// `checks::check_memlock` in production.
    pub memlock: &'a dyn Fn(u64) -> Result<(), HostError>,
    /// [`netlink::vf_links`] in production: a PF netdev's VFs.
    pub vf_links: &'a dyn Fn(&str) -> Result<Vec<VfLink>, NetlinkError>,
}

/// Every check, in order.
pub fn diagnose(p: &HostPaths, req: &Request, probes: &Probes) -> Vec<Line> {
    let mut out = Vec::new();
    cpu::check(p, &mut out);
    iommu::check(p, &mut out);
    kconfig::check(p, &mut out);
    sriov::check(p, probes.vf_links, &mut out);
    klog::check(p, &mut out);
    memory::check(p, req.memory, &mut out);
    if !req.devices.is_empty() {
        let preopened = Preopened::default();
        let check_req = preflight::Request {
            devices: req.devices,
            memory: req.memory,
            allow_unsafe_interrupts: false,
            backend: BackendChoice::Auto,
            preopened: &preopened,
            hugepages: false,
        };
        let (list, _) = preflight::run_checks(p, &check_req, probes.memlock);
        for c in list {
            let name = format!("check {}", c.name);
            out.push(match c.outcome {
                Outcome::Ok => Line::ok(name, "passes"),
                Outcome::Note(n) => Line::ok(name, n),
                Outcome::Warn(w) => Line::new(name, Status::Warn, w),
                // The message names its own fix.
                Outcome::Failed(e) => Line::new(name, Status::Failed, e.to_string()),
            });
        }
    }
    out
}

/// The exit code for these lines: [`exit_code::HOST`] if anything failed.
pub fn exit_code_of(lines: &[Line]) -> i32 {
    if lines.iter().any(|l| l.status == Status::Failed) {
        exit_code::HOST
    } else {
        exit_code::OK
    }
}

#[derive(Serialize)]
struct Document<'a> {
    checks: &'a [Line],
    failed: usize,
    warnings: usize,
    exit_code: i32,
}

/// `vflaunch doctor`: prints the lines (or one JSON document); returns the exit code.
pub fn report(
    p: &HostPaths,
    req: &Request,
    probes: &Probes,
    json: bool,
    out: &mut dyn Write,
) -> i32 {
    let lines = diagnose(p, req, probes);
    let code = exit_code_of(&lines);
    if json {
        let count = |s| lines.iter().filter(|l| l.status == s).count();
        let doc = Document {
            checks: &lines,
            failed: count(Status::Failed),
            warnings: count(Status::Warn),
            exit_code: code,
        };
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        let _ = writeln!(out, "{text}");
    } else {
        for l in &lines {
            let _ = writeln!(out, "{l}");
        }
    }
    code
}

/// Reads a text file of at most [`MAX_TEXT`] bytes.
fn read_text(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.take(MAX_TEXT).read_to_string(&mut s)?;
    Ok(s)
}

/// A one-value sysfs file, trimmed.
fn read_value(path: &Path) -> Option<String> {
    read_text(path).ok().map(|s| s.trim().to_string())
}

/// Whether a module parameter file says yes.
fn param_set(path: &Path) -> bool {
    matches!(read_value(path).as_deref(), Some("Y" | "y" | "1"))
}

/// The names in a directory, sorted (empty when it cannot be read).
fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The kernel command line's words.
fn cmdline(p: &HostPaths) -> Vec<String> {
    read_text(&p.proc.join("cmdline"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
#[cfg(test)]
#[path = "tests_kernel.rs"]
mod tests_kernel;
