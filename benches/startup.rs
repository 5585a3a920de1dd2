//! Start-up benchmark: how long `vflaunch run` takes from exec to the
//! guest's first serial byte, and to process exit, for a tiny guest that
//! prints one line and powers off. Prints figures; asserts nothing.
//!
//! `cargo bench --bench startup` (needs a usable /dev/kvm; `BENCH_RUNS=N`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<28} min {:7.2} ms   median {:7.2} ms   max {:7.2} ms   (n={})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    if let Some(why) = common::kvm_unusable() {
        common::skip("startup", &why);
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = common::write_file(
        dir.path(),
        "tiny.elf",
        &common::elf64(&common::tiny_poweroff_code(b"up\n", 0x34), false),
    );
    for mem in ["64M", "512M", "2G"] {
        let (mut first, mut total) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let start = Instant::now();
            let mut child = common::vflaunch_command(&[
                "run",
                "--kernel",
                &kernel,
                "--memory",
                mem,
                "--no-devices-from-env",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vflaunch");
            let mut out = child.stdout.take().expect("stdout");
            let mut b = [0u8; 1];
            out.read_exact(&mut b).expect("first serial byte");
            first.push(start.elapsed());
            let status = child.wait().expect("wait");
            total.push(start.elapsed());
            assert!(status.success(), "vflaunch failed");
        }
        stats(&format!("first serial byte, {mem}"), first);
        stats(&format!("exec to exit, {mem}"), total);
    }
}
