//! Kata's virtio calls against the real binary and a tiny guest:
//! vm.create with `vsock`, `disks` and `rng`, vm.add-net with a tap fd sent
//! as SCM_RIGHTS in the same sendmsg as the request (as Kata's clh driver
//! does), vm.add-disk, vm.boot, vm.info, a host client on the hybrid vsock
//! socket, vmm.shutdown — the client's connection closes with the VM.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// One request on a connection of its own, `fds` attached to its one sendmsg.
fn http(
    sock: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&Value>,
    fds: &[i32],
) -> (u16, String) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let Ok(s) = UnixStream::connect(sock) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_with_fds(&[req.as_bytes()], fds).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    (&s).read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A tap opened the way a launcher does (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
fn open_tap(name: &str) -> Option<OwnedFd> {
    let path = std::ffi::CString::new("/dev/net/tun").unwrap();
    // SAFETY: open(2) with a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a 40-byte ifreq, which `ifr` is.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54ca, ifr.as_mut_ptr()) };
    (r == 0).then_some(fd)
}

#[test]
fn katas_virtio_sequence() {
    let test = "katas_virtio_sequence";
    if let Some(why) = kvm_unusable() {
        return skip(test, &why);
    }
    let Some(tap) = open_tap("vflkata0") else {
        return skip(test, "cannot open a tap (/dev/net/tun)");
    };
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"up\n"), false),
    );
    let img = dir.path().join("root.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let extra = dir.path().join("extra.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("clh-api.sock");
    let vsock = dir.path().join("clh.sock_vsock");
    let mut child = vflaunch_command(&[
        "--api-socket",
        sock.to_str().unwrap(),
        "-v",
        "--seccomp",
        "false",
    ])
    .spawn()
    .unwrap();
    let t = Instant::now();
    while http(&sock, "GET", "vmm.ping", None, &[]).0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no answer to vmm.ping"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let body = json!({
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 67108864},
        "serial": {"mode": "Off"}, "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "disks": [{"path": img, "readonly": false, "id": "rootfs", "vhost_user": false}],
        "vsock": {"cid": 3, "socket": vsock, "iommu": false},
        "fs": []
    });
    let (status, msg) = http(&sock, "PUT", "vm.create", Some(&body), &[]);
    assert_eq!(status, 204, "{msg}");
    let net = json!({"mac": "52:54:00:aa:bb:01", "num_queues": 2, "queue_size": 256,
                     "ip": "10.0.0.2", "mask": "255.255.255.0", "vhost_mode": "Client",
                     "offload_tso": true, "offload_ufo": true, "offload_csum": true});
    let (status, msg) = http(&sock, "PUT", "vm.add-net", Some(&net), &[tap.as_raw_fd()]);
    assert_eq!(status, 200, "{msg}");
    let info: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(
        info["bdf"], "0000:00:04.0",
        "rng, disk, vsock, then the net: {msg}"
    );
    // The same with `vflaunch api --tap`, which opens the tap and sends it.
    let out = vflaunch_command(&[
        "api",
        "--api-socket",
        sock.to_str().unwrap(),
        "--tap",
        "vflkata1",
        "PUT",
        "vm.add-net",
        r#"{"mac": "52:54:00:aa:bb:02"}"#,
    ])
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said} {err}");
    assert!(said.contains("0000:00:05.0"), "the second net: {said}");
    let (status, msg) = http(
        &sock,
        "PUT",
        "vm.add-disk",
        Some(&json!({"path": extra})),
        &[],
    );
    assert_eq!(status, 200, "{msg}");
    let (status, msg) = http(
        &sock,
        "PUT",
        "vm.add-vsock",
        Some(&json!({"cid": 4, "socket": "/x"})),
        &[],
    );
    assert_eq!(status, 409, "one vsock: {msg}");
    let (status, msg) = http(
        &sock,
        "PUT",
        "vm.add-fs",
        Some(&json!({"tag": "kataShared"})),
        &[],
    );
    assert_eq!((status, msg.contains("shared_fs")), (400, true), "{msg}");
    let (status, msg) = http(&sock, "PUT", "vm.boot", None, &[]);
    assert_eq!(status, 204, "{msg}");
    let (_, msg) = http(&sock, "GET", "vm.info", None, &[]);
    let info: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(
        info["config"]["disks"].as_array().map(Vec::len),
        Some(2),
        "{msg}"
    );
    let tree = info["device_tree"].as_object().unwrap();
    assert_eq!(tree["virtio-rng"]["pci_bdf"], "0000:00:01.0", "{msg}");
    assert_eq!(tree["virtio-vsock"]["pci_bdf"], "0000:00:04.0", "{msg}");
    assert_eq!(tree.len(), 6, "rng, two disks, vsock, two nets: {msg}");
    // A host client on the hybrid socket (the guest has no driver: no answer yet).
    let mut client = UnixStream::connect(&vsock).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();
    // A second VM on the same writable image is refused.
    let img_arg = format!("path={}", img.display());
    let out = run_vflaunch(
        &[
            "run",
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--no-devices-from-env",
            "--serial",
            "off",
            "--disk",
            &img_arg,
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another VM"));
    assert_eq!(http(&sock, "PUT", "vmm.shutdown", None, &[]).0, 204);
    let (status, _) = wait_within(&mut child, Duration::from_secs(10), "vmm.shutdown");
    assert_eq!(status.code(), Some(0));
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 16];
    assert_eq!(
        client.read(&mut b).unwrap_or(0),
        0,
        "the vsock client is closed with the VM"
    );
    assert!(!vsock.exists(), "the hybrid socket is removed");
}
