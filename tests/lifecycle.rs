//! The pod lifecycle on /dev/kvm with tiny guests: SIGTERM presses the
//! guest's ACPI power button, a guest that handles it powers off (exit 0);
//! one that does not is stopped after --shutdown-timeout or on a second
//! SIGTERM (exit 143). Events come out in order.

mod common;

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use common::*;

/// The GED event register and its power-button bit (src/arch/x86_64/layout.rs,
/// src/devices/ged.rs).
const GED_EVENTS: u32 = 0xfeb0_0000;
const POWER_BUTTON: u8 = 1 << 3;

fn start(kernel: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "run",
        "--kernel",
        kernel,
        "--memory",
        "64M",
        "--no-devices-from-env",
    ];
    args.extend_from_slice(extra);
    vflaunch_command(&args).spawn().unwrap()
}

/// Waits for the guest's first line on stdout.
fn wait_for(child: &mut Child, line: &[u8]) {
    let mut got = vec![0u8; line.len()];
    child.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
    assert_eq!(got, line);
}

fn wait_exit(child: &mut Child, limit: Duration) -> (ExitStatus, Duration, String) {
    let (status, took) = wait_within(child, limit, "vflaunch");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, took, stderr)
}

fn events(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}:{}",
                v["source"].as_str().unwrap(),
                v["event"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn sigterm_presses_the_power_button_and_the_guest_powers_off() {
    if let Some(why) = kvm_unusable() {
        return skip(
            "sigterm_presses_the_power_button_and_the_guest_powers_off",
            &why,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let code = tiny_pvh_power_button_code(b"waiting\n", GED_EVENTS, POWER_BUTTON);
    let kernel = write_file(dir.path(), "button.elf", &elf64(&code, true));
    let ev = dir.path().join("events");
    let mut child = start(
        &kernel,
        &["--event-monitor", &format!("path={}", ev.display())],
    );
    wait_for(&mut child, b"waiting\n");
    sigterm(&child);
    let (status, took, stderr) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let ev = events(&ev);
    let want = [
        "vmm:starting",
        "vm:created",
        "vm:booted",
        "vm:power-button",
        "vm:shutdown",
        "vmm:exit",
    ];
    assert_eq!(ev, want, "events in order");
}

#[test]
fn a_guest_that_ignores_the_button_is_stopped_after_the_timeout() {
    if let Some(why) = kvm_unusable() {
        return skip(
            "a_guest_that_ignores_the_button_is_stopped_after_the_timeout",
            &why,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"spinning\n"), false),
    );
    let mut child = start(&kernel, &["--cpus", "2", "--shutdown-timeout", "1"]);
    wait_for(&mut child, b"spinning\n");
    sigterm(&child);
    let (status, took, stderr) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        took >= Duration::from_secs(1),
        "waited for the guest: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(stderr.contains("did not power off within 1s"), "{stderr}");
}

#[test]
fn a_second_sigterm_stops_at_once() {
    if let Some(why) = kvm_unusable() {
        return skip("a_second_sigterm_stops_at_once", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"spinning\n"), false),
    );
    let mut child = start(&kernel, &[]);
    wait_for(&mut child, b"spinning\n");
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&child);
    let (status, took, stderr) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        took < Duration::from_secs(10),
        "the 25 s timeout was not waited for: {took:?}"
    );
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
}

#[test]
fn the_console_socket_keeps_output_for_a_late_client() {
    if let Some(why) = kvm_unusable() {
        return skip("the_console_socket_keeps_output_for_a_late_client", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"hello from COM1\n"), false),
    );
    let sock = dir.path().join("console.sock");
    let serial = format!("socket={}", sock.display());
    let mut child = start(&kernel, &["--serial", &serial, "--shutdown-timeout", "1"]);
    // The guest prints before anyone listens; the line waits in the buffer.
    std::thread::sleep(Duration::from_millis(500));
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = [0u8; 16];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello from COM1\n");
    sigterm(&child);
    let (status, _, stderr) = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(!sock.exists(), "the console socket is removed at exit");
}
