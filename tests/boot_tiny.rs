//! End to end through the binary and /dev/kvm: a tiny 64-bit guest prints
//! on the serial console and powers off through ACPI, or resets.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn tiny_guest_prints_and_powers_off() {
    if let Some(why) = kvm_unusable() {
        println!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "tiny.elf",
        &elf64(&tiny_poweroff_code(b"hello from the guest\n", 0x34)),
    );
    let out = run_vflaunch(
        &[
            "run",
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--no-devices-from-env",
        ],
        &[("RUST_LOG", "info")],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "hello from the guest\n", "stderr: {stderr}");
    assert!(stderr.contains("guest powered off"), "stderr: {stderr}");
}

#[test]
fn tiny_guest_reset_exits_nonzero() {
    if let Some(why) = kvm_unusable() {
        println!("SKIPPED: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Writing the ACPI reset value instead of S5: a guest reboot.
    let kernel = write_file(
        dir.path(),
        "tiny.elf",
        &elf64(&tiny_poweroff_code(b"bye\n", 0x01)),
    );
    let out = run_vflaunch(
        &[
            "run",
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--cpus",
            "2",
            "--no-devices-from-env",
        ],
        &[],
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "stderr: {stderr}");
    assert!(stderr.contains("guest rebooted"), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
}
