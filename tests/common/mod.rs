//! Helpers shared by the integration tests: tiny guest kernels, running the
//! binary with a deadline, skip checks and the skip report.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod tiny;
pub use tiny::*;

/// Returns a reason to skip if KVM cannot be used here.
pub fn kvm_unusable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm not usable: {e}")),
    }
}

/// Where a skipping test appends `<test name>: <reason>` (one line per skip),
/// so the test command can count and list the skips; unset: print only.
pub const SKIP_LOG_ENV: &str = "VFLAUNCH_SKIP_LOG";

/// Reports that `test` did nothing because of `reason`: prints
/// `SKIPPED: <reason>` and, if `VFLAUNCH_SKIP_LOG` names a file, appends
/// `<test>: <reason>\n` to it (see `append_skip`). Call it once per test.
pub fn skip(test: &str, reason: &str) {
    let reason = reason.replace('\n', " ");
    println!("SKIPPED: {reason}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        append_skip(Path::new(&path), test, &reason);
    }
}

/// Appends `<test>: <reason>\n` to `path` (created if missing) in a single
/// write, so lines from tests running in parallel never interleave. Panics
/// if it cannot: a skip nobody can see is what the log exists to prevent.
pub fn append_skip(path: &Path, test: &str, reason: &str) {
    let line = format!("{test}: {reason}\n");
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write(line.as_bytes()));
    match written {
        Ok(n) if n == line.len() => {}
        Ok(n) => panic!(
            "short write to {}: {n} of {} bytes",
            path.display(),
            line.len()
        ),
        Err(e) => panic!("cannot append to skip log {}: {e}", path.display()),
    }
}

/// The vflaunch binary with `args`: no stdin, stdout and stderr piped.
pub fn vflaunch_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vflaunch"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the vflaunch binary with `args`, killing it after `timeout`.
pub fn run_vflaunch(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut cmd = vflaunch_command(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vflaunch");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut stderr)
                .unwrap();
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "vflaunch {args:?} did not finish in {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// Waits for `child` up to `limit`; kills it and panics past that.
pub fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: vflaunch still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `bytes` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

/// Boots `kernel` (an ELF image) with `--memory 64M` plus `args`; `None`
/// (after reporting `test` as skipped) where /dev/kvm cannot be used.
pub fn boot_tiny(
    test: &str,
    kernel: &[u8],
    args: &[&str],
    env: &[(&str, &str)],
) -> Option<std::process::Output> {
    if let Some(why) = kvm_unusable() {
        skip(test, &why);
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "guest.elf", kernel);
    let mut argv = vec![
        "run",
        "--kernel",
        &path,
        "--memory",
        "64M",
        "--no-devices-from-env",
    ];
    argv.extend_from_slice(args);
    Some(run_vflaunch(&argv, env, Duration::from_secs(120)))
}

#[cfg(test)]
mod tests {
    // `super::` paths, no `use`: in the bench (harness = false) the tests
    // compile away and an import would be unused.

    #[test]
    fn parallel_skips_append_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        std::fs::write(&log, "earlier: kept\n").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        super::append_skip(&log, &format!("t{t}_{i}"), &"x".repeat(100 + i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.remove(0), "earlier: kept", "appends, never truncates");
        assert_eq!(lines.len(), 8 * 50);
        for line in lines {
            let (name, reason) = line.split_once(": ").expect("name: reason");
            let i: usize = name.split_once('_').unwrap().1.parse().unwrap();
            assert_eq!(reason, "x".repeat(100 + i), "line {name} is whole");
        }
    }

    #[test]
    fn skip_log_is_created_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("new");
        super::append_skip(&log, "some_test", "no /dev/kvm");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "some_test: no /dev/kvm\n"
        );
    }
}
