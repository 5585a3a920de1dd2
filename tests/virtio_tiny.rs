//! virtio devices on real KVM with a tiny guest: the guest reads the IDs of
//! the functions in slots 1 to 3 through the config ports and powers off
//! only if they are a modern virtio-rng, virtio-blk and virtio-vsock (else it resets).
//! Linux does not boot here; the HIL rig runs the drivers.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

/// 64-bit code: for each (slot, id), read config dword 0 of 00:slot.0 and
/// reset on a mismatch; then print `msg` and power off.
fn check_ids_code(ids: &[(u8, u32)], msg: &[u8]) -> Vec<u8> {
    let mut c = Vec::new();
    for &(slot, id) in ids {
        let addr = 0x8000_0000u32 | (u32::from(slot) << 11);
        c.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
        c.push(0xb8); // mov eax, addr
        c.extend_from_slice(&addr.to_le_bytes());
        c.push(0xef); // out dx, eax
        c.extend_from_slice(&[0x66, 0xba, 0xfc, 0x0c]); // mov dx, 0xcfc
        c.push(0xed); // in eax, dx
        c.push(0x3d); // cmp eax, id
        c.extend_from_slice(&id.to_le_bytes());
        c.extend_from_slice(&[0x74, 0x0a]); // je +10
                                            // reset through the ACPI sleep register (as the PVH test's failure path)
        c.extend_from_slice(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]);
    }
    c.extend_from_slice(&tiny_poweroff_code(msg, 0x34));
    c
}

fn boot(test: &str, kernel: &[u8], args: &[&str]) -> Option<std::process::Output> {
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
    Some(run_vflaunch(
        &argv,
        &[("RUST_LOG", "info")],
        Duration::from_secs(120),
    ))
}

#[test]
fn guest_sees_virtio_rng_blk_and_vsock_on_the_bus() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let disk = format!("path={},id=tiny", img.path().display());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let vsock = format!("cid=3,socket={}", sock.display());
    let ids = [(1, 0x1044_1af4), (2, 0x1042_1af4), (3, 0x1053_1af4)];
    let code = check_ids_code(&ids, b"virtio ok\n");
    let Some(out) = boot(
        "guest_sees_virtio_rng_blk_and_vsock_on_the_bus",
        &elf64(&code, false),
        &["--rng", "--disk", &disk, "--vsock", &vsock],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "virtio ok\n");
    assert!(
        stderr.contains("virtio-rng: guest PCI 0000:00:01.0"),
        "{stderr}"
    );
    assert!(stderr.contains("2048 sectors"), "{stderr}");
    assert!(stderr.contains("guest PCI 0000:00:02.0"), "{stderr}");
    assert!(
        stderr.contains("virtio-vsock: guest PCI 0000:00:03.0"),
        "{stderr}"
    );
    assert!(!sock.exists(), "the hybrid socket is removed at exit");
}

#[test]
fn a_locked_disk_is_refused_with_one_line() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    // Another VM (this test) holds the image.
    let holder = std::fs::File::open(img.path()).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    let disk = format!("path={}", img.path().display());
    let code = tiny_poweroff_code(b"must not run\n", 0x34);
    let Some(out) = boot(
        "a_locked_disk_is_refused_with_one_line",
        &elf64(&code, false),
        &["--disk", &disk],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "the guest never ran");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(line.contains("is in use by another VM"), "{stderr}");
    drop(holder);
}

#[test]
fn guest_sees_virtio_net_on_a_tap() {
    let test = "guest_sees_virtio_net_on_a_tap";
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip(test, "no /dev/net/tun");
    }
    let code = check_ids_code(&[(1, 0x1041_1af4)], b"net ok\n");
    let Some(out) = boot(
        test,
        &elf64(&code, false),
        &["--net", "tap=vfltiny0,mac=52:54:00:aa:bb:cc"],
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("cannot open /dev/net/tun") || stderr.contains("cannot attach to tap") {
        return skip(test, "taps cannot be made here");
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "net ok\n");
    assert!(
        stderr.contains("tap vfltiny0 with MAC 52:54:00:aa:bb:cc"),
        "{stderr}"
    );
}
