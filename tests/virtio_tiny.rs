//! virtio devices on real KVM with a tiny guest: the guest reads the IDs of
//! the functions in slots 1 to 3 through the config ports and powers off
//! only if they are a modern virtio-rng, virtio-blk and virtio-vsock (else it resets).
//! Linux does not boot here; the HIL rig runs the drivers.

mod common;

use std::os::fd::AsRawFd;

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

/// Boots `kernel` with `RUST_LOG=info`, so that the device lines can be checked.
fn boot(test: &str, kernel: &[u8], args: &[&str]) -> Option<std::process::Output> {
    boot_tiny(test, kernel, args, &[("RUST_LOG", "info")])
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

/// A few x86 instructions (32-bit protected mode, flat, no paging) with
/// forward-jump fixups: enough for a guest driver.
#[derive(Default)]
struct Asm {
    c: Vec<u8>,
    fixups: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn b(&mut self, bytes: &[u8]) -> &mut Self {
        self.c.extend_from_slice(bytes);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b(&v.to_le_bytes())
    }
    fn out32(&mut self, port: u16, v: u32) -> &mut Self {
        self.b(&[0x66, 0xba]).b(&port.to_le_bytes()); // mov dx, port
        self.b(&[0xb8]).u32(v).b(&[0xef]) // mov eax, v; out dx, eax
    }
    fn out16(&mut self, port: u16, v: u16) -> &mut Self {
        self.b(&[0x66, 0xba]).b(&port.to_le_bytes());
        self.b(&[0x66, 0xb8]).b(&v.to_le_bytes()).b(&[0x66, 0xef])
    }
    fn store8(&mut self, addr: u32, v: u8) -> &mut Self {
        self.b(&[0xc6, 0x05]).u32(addr).b(&[v])
    }
    fn store16(&mut self, addr: u32, v: u16) -> &mut Self {
        self.b(&[0x66, 0xc7, 0x05]).u32(addr).b(&v.to_le_bytes())
    }
    fn store32(&mut self, addr: u32, v: u32) -> &mut Self {
        self.b(&[0xc7, 0x05]).u32(addr).u32(v)
    }
    /// A rel32 jump (`op` = [0xe9] or [0x0f, 0x8x]) to `label`, fixed up later.
    fn jump(&mut self, op: &[u8], label: &'static str) -> &mut Self {
        self.b(op);
        self.fixups.push((self.c.len(), label));
        self.u32(0)
    }
    fn label(&mut self, l: &'static str) -> &mut Self {
        self.labels.push((l, self.c.len()));
        self
    }
    fn here(&self) -> usize {
        self.c.len()
    }
    fn finish(mut self) -> Vec<u8> {
        for (at, l) in &self.fixups {
            let target = self.labels.iter().find(|(n, _)| n == l).unwrap().1;
            let rel = target as i32 - (*at as i32 + 4);
            self.c[*at..*at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        self.c
    }
}

#[test]
fn a_tiny_driver_gets_random_bytes_through_an_ioeventfd_kick() {
    // The rng function is the only PCI device: slot 1, BAR0 first in the 32-bit window.
    const BAR: u32 = 0xc000_0000;
    const DESC: u32 = 0x30_0000;
    const AVAIL: u32 = DESC + 0x100;
    const USED: u32 = DESC + 0x200;
    const BUF: u32 = DESC + 0x1000;
    let mut a = Asm::default();
    bring_up(&mut a, BAR, DESC, 0); // 16 trapped stores
                                    // One writable 16-byte buffer, made available, and the kick: a KVM
                                    // ioeventfd, no exit.
    a.store32(DESC, BUF).store32(DESC + 4, 0);
    a.store32(DESC + 8, 16).store32(DESC + 12, 2);
    a.store16(AVAIL + 4, 0).store16(AVAIL + 2, 1);
    kick_and_wait(&mut a, BAR, USED, 1, "used");
    a.b(&[0xa1]).u32(BUF); // mov eax, [buf]
    for off in [4, 8, 12] {
        a.b(&[0x0b, 0x05]).u32(BUF + off); // or eax, [buf + off]
    }
    a.b(&[0x85, 0xc0]); // test eax, eax
    a.jump(&[0x0f, 0x84], "fail"); // all zero: no random bytes
                                   // Print the message, then spin.
    let msg = b"rng bytes via ioeventfd\n";
    a.b(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    a.b(&[0xbe]);
    let msg_at = a.here();
    a.u32(0); // mov esi, msg (patched below)
    a.b(&[0xb9]).u32(msg.len() as u32); // mov ecx, len
    a.b(&[0xac, 0xee, 0x49, 0x75, 0xfb]); // lodsb; out dx, al; dec ecx; jnz
    a.b(&[0xeb, 0xfe]); // spin: the test reads the exit counters, then stops it
    a.label("fail");
    a.b(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]); // reset
    let mut code = a.finish();
    let msg_addr = (TINY_ENTRY as usize + code.len()) as u32;
    code[msg_at..msg_at + 4].copy_from_slice(&msg_addr.to_le_bytes());
    code.extend_from_slice(msg);
    let test = "a_tiny_driver_gets_random_bytes_through_an_ioeventfd_kick";
    if let Some(why) = kvm_unusable() {
        return skip(test, &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "driver.elf", &elf64(&code, true));
    let sock = dir.path().join("api.sock");
    let s = sock.to_str().unwrap();
    let args = [
        "run",
        "--kernel",
        &kernel,
        "--memory",
        "64M",
        "--no-devices-from-env",
        "--rng",
    ];
    let mut child = vflaunch_command(&args)
        .args(["--api-socket", s])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let counters = vflaunch_command(&["api", "--api-socket", s, "GET", "vm.counters"])
        .output()
        .unwrap();
    // SAFETY: kill(2) on our own child: SIGINT stops the VM at once.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(line, "rng bytes via ioeventfd\n", "stderr: {stderr}");
    assert!(stderr.contains("virtio-rng: driver ready"), "{stderr}");
    let c: serde_json::Value = serde_json::from_slice(&counters.stdout).unwrap();
    // 16 trapped stores set the device up; the 17th, the kick, never left the guest.
    assert_eq!(c["vcpu_exits"]["mmio_write"], 16, "{c}");
}

/// The driver's side of bringing a device in slot 1 up with queue 0 of 4
/// entries at `desc`/`desc + 0x100`/`desc + 0x200` (16 trapped stores).
fn bring_up(a: &mut Asm, bar: u32, desc: u32, features: u32) {
    a.out32(0xcf8, 0x8000_0804).out16(0xcfc, 0x6); // memory decode + bus master
    a.store8(bar + 0x14, 1 | 2);
    a.store32(bar + 0x08, 0).store32(bar + 0x0c, features);
    a.store32(bar + 0x08, 1).store32(bar + 0x0c, 1); // VERSION_1
    a.store8(bar + 0x14, 1 | 2 | 8);
    a.store16(bar + 0x16, 0).store16(bar + 0x18, 4);
    a.store32(bar + 0x20, desc).store32(bar + 0x24, 0);
    a.store32(bar + 0x28, desc + 0x100).store32(bar + 0x2c, 0);
    a.store32(bar + 0x30, desc + 0x200).store32(bar + 0x34, 0);
    a.store16(bar + 0x1c, 1);
    a.store8(bar + 0x14, 0xf);
}

/// Kicks queue 0 and waits for the used index to reach `n`; else jumps to "fail".
fn kick_and_wait(a: &mut Asm, bar: u32, used: u32, n: u16, done: &'static str) {
    a.store16(bar + 0x3000, 0);
    a.b(&[0xb9]).u32(200_000_000); // mov ecx, bound
    let poll = a.here();
    a.b(&[0x66, 0xa1]).u32(used + 2); // mov ax, [used.idx]
    a.b(&[0x66, 0x3d]).b(&n.to_le_bytes()); // cmp ax, n
    a.jump(&[0x0f, 0x84], done);
    a.b(&[0x49]); // dec ecx
    let back = poll as i32 - (a.here() as i32 + 6);
    a.b(&[0x0f, 0x85]).b(&back.to_le_bytes()); // jnz poll
    a.jump(&[0xe9], "fail");
    a.label(done);
}

/// Jumps to "fail" unless the byte at `addr` is 0 (VIRTIO_BLK_S_OK).
fn expect_zero_byte(a: &mut Asm, addr: u32) {
    a.b(&[0x80, 0x3d]).u32(addr).b(&[0]); // cmp byte [addr], 0
    a.jump(&[0x0f, 0x85], "fail");
}

#[test]
fn a_tiny_driver_writes_and_flushes_a_disk_sector() {
    const BAR: u32 = 0xc000_0000;
    const DESC: u32 = 0x30_0000;
    const HDR: u32 = DESC + 0x1000;
    const FLUSH: u32 = DESC + 0x1010;
    const DATA: u32 = DESC + 0x2000;
    const STATUS: u32 = DESC + 0x3000;
    let mut a = Asm::default();
    bring_up(&mut a, BAR, DESC, 1 << 9); // VIRTIO_BLK_F_FLUSH
                                         // 512 bytes of "OKOK" at DATA: mov edi; mov eax; mov ecx, 128; rep stosd.
    a.b(&[0xbf])
        .u32(DATA)
        .b(&[0xb8])
        .u32(0x4b4f_4b4f)
        .b(&[0xb9])
        .u32(128)
        .b(&[0xf3, 0xab]);
    // OUT to sector 2: header, data, status.
    a.store32(HDR, 1)
        .store32(HDR + 4, 0)
        .store32(HDR + 8, 2)
        .store32(HDR + 12, 0);
    let desc = |a: &mut Asm, i: u32, addr: u32, len: u32, flags: u16, next: u16| {
        let at = DESC + 16 * i;
        a.store32(at, addr).store32(at + 4, 0).store32(at + 8, len);
        a.store16(at + 12, flags).store16(at + 14, next);
    };
    desc(&mut a, 0, HDR, 16, 1, 1);
    desc(&mut a, 1, DATA, 512, 1, 2);
    desc(&mut a, 2, STATUS, 1, 2, 0);
    a.store8(STATUS, 0xff)
        .store16(DESC + 0x104, 0)
        .store16(DESC + 0x102, 1);
    kick_and_wait(&mut a, BAR, DESC + 0x200, 1, "written");
    expect_zero_byte(&mut a, STATUS);
    // FLUSH: header and the status descriptor again.
    a.store32(FLUSH, 4)
        .store32(FLUSH + 4, 0)
        .store32(FLUSH + 8, 0)
        .store32(FLUSH + 12, 0);
    desc(&mut a, 3, FLUSH, 16, 1, 2);
    a.store8(STATUS, 0xff)
        .store16(DESC + 0x106, 3)
        .store16(DESC + 0x102, 2);
    kick_and_wait(&mut a, BAR, DESC + 0x200, 2, "flushed");
    expect_zero_byte(&mut a, STATUS);
    a.b(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xf4, 0xeb, 0xfd]); // S5
    a.label("fail");
    a.b(&[0x66, 0xba, 0x00, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd]); // reset
    let code = a.finish();
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(8 * 512).unwrap();
    let disk = format!("path={}", img.path().display());
    let Some(out) = boot(
        "a_tiny_driver_writes_and_flushes_a_disk_sector",
        &elf64(&code, true),
        &["--disk", &disk, "--serial", "off"],
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "powered off, not reset: {stderr}"
    );
    let bytes = std::fs::read(img.path()).unwrap();
    assert_eq!(
        &bytes[1024..1536],
        "OKOK".repeat(128).as_bytes(),
        "sector 2 on disk"
    );
    assert!(
        bytes[..1024].iter().chain(&bytes[1536..]).all(|b| *b == 0),
        "nothing else"
    );
}
