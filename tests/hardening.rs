//! Through the binary: bad inputs and bad surroundings end in one line and
//! the right exit code, never in a hang or an unbounded read.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
    s
}

#[test]
fn a_console_nobody_reads_does_not_stop_sigterm() {
    if let Some(why) = kvm_unusable() {
        skip("a_console_nobody_reads_does_not_stop_sigterm", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "flood.elf",
        &elf64(&tiny_flood_code(b'x'), false),
    );
    // stdout is a pipe this test never reads: it fills after 64 KiB, as a
    // container runtime's slow log pipe does. The guest ignores the power
    // button, so SIGTERM stops it hard after the 1 s shutdown timeout.
    let mut child = vflaunch_command(&[
        "run",
        "--kernel",
        &kernel,
        "--memory",
        "64M",
        "--no-devices-from-env",
        "--shutdown-timeout",
        "1",
    ])
    .spawn()
    .unwrap();
    let _unread = child.stdout.take();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the flooding guest runs"
    );
    sigterm(&child);
    let (status, took) = wait_within(&mut child, Duration::from_secs(30), "flood");
    let stderr = stderr_of(&mut child);
    // A vCPU blocked in a console write would only be given up on after
    // the vCPU stop deadline; the time bound only catches a hang.
    assert!(
        !stderr.contains("did not stop within"),
        "a vCPU was stuck: {stderr}"
    );
    assert!(
        took < Duration::from_secs(20),
        "SIGTERM took {took:?}: {stderr}"
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("bytes of guest output were dropped"),
        "the drop count is logged: {stderr}"
    );
}

#[test]
fn sigterm_while_the_vm_is_built_tears_down_in_order() {
    if let Some(why) = kvm_unusable() {
        skip("sigterm_while_the_vm_is_built_tears_down_in_order", &why);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"spinning\n"), false),
    );
    // A large initramfs makes the build take a while (it is copied into
    // guest RAM after "guest RAM:" is logged).
    let initrd = dir.path().join("initrd");
    std::fs::File::create(&initrd)
        .unwrap()
        .set_len(1400 << 20)
        .unwrap();
    let initrd = initrd.to_string_lossy().into_owned();
    let mut cmd = vflaunch_command(&[
        "run",
        "--kernel",
        &kernel,
        "--initramfs",
        &initrd,
        "--memory",
        "2G",
        "--no-devices-from-env",
    ]);
    cmd.env("RUST_LOG", "debug");
    let mut child = cmd.spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "no build log: {log}");
        log.push_str(&line);
        if line.contains("guest RAM:") {
            break;
        }
    }
    sigterm(&child);
    let (status, _) = wait_within(&mut child, Duration::from_secs(30), "early SIGTERM");
    err.read_to_string(&mut log).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{log}");
    assert!(log.contains("stopped by signal 15"), "{log}");
    assert!(
        !log.contains("starting 1 vCPU"),
        "the guest never started: {log}"
    );
}

#[test]
fn unbounded_inputs_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "k", b"not a kernel");
    let big = dir.path().join("network-info");
    {
        // 100 MB of valid-looking JSON whitespace: refused by size, unread.
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(100 << 20).unwrap();
    }
    let big = big.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--config", "/dev/zero"],
            "/dev/zero: check the --config path: not a regular file",
        ),
        (
            &["--network-info", "/dev/zero"],
            "/dev/zero: check --network-info or the pod's downward-API volume: not a regular file",
        ),
        (&["--network-info", &big], "it is larger than 1 MiB"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["run", "--kernel", &kernel];
        argv.extend_from_slice(args);
        let start = Instant::now();
        let out = run_vflaunch(&argv, &[], Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(start.elapsed() < Duration::from_secs(15), "{args:?}");
    }
}

#[test]
fn a_control_character_in_the_command_line_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "k", b"not a kernel");
    let out = run_vflaunch(
        &[
            "run",
            "--kernel",
            &kernel,
            "--no-devices-from-env",
            "--cmdline",
            "console=ttyS0\u{7}",
        ],
        &[],
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'\\u{7}' at byte 13: use printable ASCII only"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
