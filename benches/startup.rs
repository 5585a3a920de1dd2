//! Start-up benchmark: how long `vflaunch run` takes from exec to the
//! guest's first serial byte, and to process exit, for a tiny guest that
//! prints one line and powers off. Prints figures; checks only that each
//! run printed the guest's line and exited the way its VMM should.
//!
//! When qemu (`qemu-system-x86_64` on PATH, qboot in /usr/share/qemu) is
//! installed, the same tiny guest in its PVH form also runs under vflaunch
//! and under qemu's `-M microvm` with qboot, alternating run by run (the
//! order flips every other run), and the ratios vflaunch / qemu of the
//! medians are printed. qemu powers off through an `isa-debug-exit` device at
//! the port the guest writes (0x600), so it exits with 105 ((0x34 << 1) | 1).
//!
//! `cargo bench --bench startup` (needs a usable /dev/kvm; `BENCH_RUNS=N`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const QBOOT: &str = "/usr/share/qemu/qboot.rom";

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn stats(name: &str, v: &[Duration]) {
    let mut v = v.to_vec();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<40} min {:7.2} ms   median {:7.2} ms   max {:7.2} ms   (n={})",
        ms(v[0]),
        ms(median(&v)),
        ms(v[v.len() - 1]),
        v.len()
    );
}

/// qemu's exit code when the guest writes 0x34 to isa-debug-exit.
const QEMU_DEBUG_EXIT: i32 = (0x34 << 1) | 1;

/// Spawns `cmd` (stdout piped), returns (exec -> first stdout byte, exec -> exit);
/// the guest must have printed "up" and the VMM exited with `code`.
fn time_one(mut cmd: Command, code: i32) -> (Duration, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the VMM");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    out.read_exact(&mut b).expect("first serial byte");
    let first = start.elapsed();
    // Drain the rest so the VMM never blocks on a full pipe.
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().expect("wait");
    let total = start.elapsed();
    rest.insert(0, b[0]);
    assert!(
        rest.starts_with(b"up"),
        "the guest did not print its line: {rest:?}"
    );
    assert_eq!(status.code(), Some(code), "the VMM exited with {status}");
    (first, total)
}

fn vflaunch_cmd(kernel: &str, mem: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vflaunch"));
    cmd.args([
        "run",
        "--kernel",
        kernel,
        "--memory",
        mem,
        "--no-devices-from-env",
    ]);
    cmd
}

/// qemu's microvm with qboot; the guest's write to port 0x600 hits
/// isa-debug-exit, which ends qemu with `QEMU_DEBUG_EXIT`.
fn qemu_cmd(qemu: &Path, kernel: &str, mem: &str) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        // qemu 10.0 sets IA32_ARCH_CAPABILITIES with `host`, which a nested
        // KVM can refuse ("failed to set MSR 0x10a", abort); vflaunch sets
        // no such MSR either.
        "host,arch-capabilities=off",
        "-m",
        mem,
        "-smp",
        "1",
        "-bios",
        QBOOT,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0x600,iosize=1",
        "-no-reboot",
        "-kernel",
        kernel,
    ]);
    cmd
}

/// qemu-system-x86_64 on PATH, if qboot is installed too.
fn find_qemu() -> Option<std::path::PathBuf> {
    if !Path::new(QBOOT).exists() {
        return None;
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|f| f.is_file())
    })
}

fn main() {
    if let Some(why) = common::kvm_unusable() {
        common::skip("startup", &why);
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
        .max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = common::write_file(
        dir.path(),
        "tiny.elf",
        &common::elf64(&common::tiny_poweroff_code(b"up\n", 0x34), false),
    );
    let pvh = common::write_file(
        dir.path(),
        "tiny-pvh.elf",
        &common::elf64(&common::tiny_pvh_code(b"up\n"), true),
    );
    let qemu = find_qemu();
    for mem in ["64M", "512M", "2G"] {
        let (mut first, mut total) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (f, t) = time_one(vflaunch_cmd(&kernel, mem), 0);
            first.push(f);
            total.push(t);
        }
        stats(&format!("first serial byte, {mem}"), &first);
        stats(&format!("exec to exit, {mem}"), &total);
    }
    let Some(qemu) = qemu else {
        println!("qemu vs vflaunch: not run (no qemu-system-x86_64 on PATH or no {QBOOT})");
        return;
    };
    for mem in ["64M", "512M", "2G"] {
        // [vflaunch, qemu] x [first byte, exit]
        let mut t: [[Vec<Duration>; 2]; 2] = Default::default();
        for i in 0..runs {
            let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for c in order {
                let (f, e) = if c == 0 {
                    time_one(vflaunch_cmd(&pvh, mem), 0)
                } else {
                    time_one(qemu_cmd(&qemu, &pvh, mem), QEMU_DEBUG_EXIT)
                };
                t[c][0].push(f);
                t[c][1].push(e);
            }
        }
        for (c, name) in ["vflaunch PVH", "qemu microvm PVH"].iter().enumerate() {
            stats(&format!("{name}: first byte, {mem}"), &t[c][0]);
            stats(&format!("{name}: exec to exit, {mem}"), &t[c][1]);
        }
        let ratio = |k: usize| median(&t[0][k]).as_secs_f64() / median(&t[1][k]).as_secs_f64();
        println!(
            "vflaunch / qemu microvm, {mem}: first byte {:.2}x, exit {:.2}x (medians)",
            ratio(0),
            ratio(1)
        );
    }
}
