//! The API as Kata's Cloud Hypervisor driver uses it, against the real
//! binary and a tiny guest: `vflaunch --api-socket S -v --seccomp false`,
//! ping until it answers, vm.create with Kata's body, vm.info Created,
//! vm.boot, vm.info Running, ping, vmm.shutdown — then the process is gone
//! within 3 s with exit 0. The client is `vflaunch api` / `vflaunch ping`.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// `vflaunch api --api-socket S METHOD ENDPOINT [BODY]`: (status, body).
fn api(sock: &Path, method: &str, endpoint: &str, body: Option<&Value>) -> (u16, String) {
    let sock = sock.to_str().unwrap();
    let body = body.map(Value::to_string);
    let mut args = vec!["api", "--api-socket", sock, method, endpoint];
    if let Some(b) = body.as_deref() {
        args.push(b);
    }
    let out = vflaunch_command(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let status = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vflaunch: HTTP "))
        .unwrap_or_else(|| panic!("no status from `vflaunch api`: {stderr}"))
        .trim()
        .parse()
        .unwrap();
    (
        status,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn state(sock: &Path) -> String {
    let (status, body) = api(sock, "GET", "vm.info", None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

/// Starts an empty VMM and polls `vmm.ping` (every 10 ms, as Kata does).
/// The caller waits for the child.
#[allow(clippy::zombie_processes)]
fn start_vmm(sock: &Path, events: &Path) -> Child {
    let ev = format!("path={}", events.display());
    let mut child = vflaunch_command(&[
        "--api-socket",
        sock.to_str().unwrap(),
        "-v",
        "--seccomp",
        "false",
        "--event-monitor",
        &ev,
    ])
    .spawn()
    .unwrap();
    let start = Instant::now();
    loop {
        let ok = vflaunch_command(&["ping", "--api-socket", sock.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            return child;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm.ping never answered");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kata's vm.create body with its defaults, for `kernel`.
fn kata_body(kernel: &str) -> Value {
    json!({
        "payload": {"kernel": kernel, "cmdline": "console=ttyS0"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "nested": true, "kvm_hyperv": false,
                 "topology": {"threads_per_core": 1, "cores_per_die": 1, "dies_per_package": 1, "packages": 1}},
        "memory": {"size": 67108864, "shared": false, "hugepages": false, "thp": true,
                   "hotplug_method": "Acpi", "hotplug_size": 25769803776u64},
        "serial": {"mode": "Off"},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        "platform": {"num_pci_segments": 2},
        "iommu": false, "watchdog": false, "pvpanic": false
    })
}

#[test]
fn katas_sequence_ends_with_the_process_gone_in_3_s() {
    if let Some(why) = kvm_unusable() {
        return skip("katas_sequence_ends_with_the_process_gone_in_3_s", &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"up\n"), false),
    );
    let sock = dir.path().join("clh-api.sock");
    let events = dir.path().join("events");
    let mut child = start_vmm(&sock, &events);
    assert_eq!(api(&sock, "GET", "vm.info", None).0, 404, "no VM yet");
    let (status, body) = api(&sock, "PUT", "vm.create", Some(&kata_body(&kernel)));
    assert_eq!(status, 204, "{body}");
    assert_eq!(state(&sock), "Created");
    let (status, body) = api(&sock, "PUT", "vm.boot", None);
    assert_eq!(status, 204, "{body}");
    assert_eq!(state(&sock), "Running");
    // What a running VM refuses.
    let dev = json!({"path": "/sys/bus/pci/devices/0000:7f:1f.7"});
    let (status, body) = api(&sock, "PUT", "vm.add-device", Some(&dev));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("hotplug"), "{body}");
    assert_eq!(
        api(&sock, "PUT", "vm.create", Some(&kata_body(&kernel))).0,
        400
    );
    assert_eq!(
        api(
            &sock,
            "PUT",
            "vm.resize",
            Some(&json!({"desired_vcpus": 2}))
        )
        .0,
        400
    );
    let (status, body) = api(&sock, "GET", "vm.counters", None);
    assert_eq!(status, 200);
    let c: Value = serde_json::from_str(&body).unwrap();
    assert!(
        c["vcpu_exits"]["io_out"].as_u64().unwrap() >= 3,
        "the guest printed: {c}"
    );
    // Pause and resume.
    assert_eq!(api(&sock, "PUT", "vm.pause", None).0, 204);
    assert_eq!(state(&sock), "Paused");
    assert_eq!(api(&sock, "PUT", "vm.resume", None).0, 204);
    assert_eq!(state(&sock), "Running");
    // The end of Kata's StopVM: one ping, then vmm.shutdown, then it waits 3 s.
    let (status, body) = api(&sock, "GET", "vmm.ping", None);
    assert_eq!(status, 200);
    assert!(body.contains(&format!("\"pid\":{}", child.id())), "{body}");
    let t = Instant::now();
    assert_eq!(api(&sock, "PUT", "vmm.shutdown", None).0, 204);
    let (status, _) = wait_within(&mut child, Duration::from_secs(3), "vmm.shutdown");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "still running 3 s after vmm.shutdown"
    );
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket is removed");
    let order: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let order: Vec<&str> = order.iter().map(String::as_str).collect();
    // Kata's body asks for `rng`: its virtio-rng function is the device added.
    assert_eq!(
        order,
        [
            "starting",
            "created",
            "device-added",
            "booted",
            "paused",
            "resumed",
            "exit"
        ]
    );
}

#[test]
fn create_refuses_what_vflaunch_lacks_and_checks_the_host_first() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(dir.path(), "k", b"not checked until boot");
    let sock = dir.path().join("api.sock");
    let mut child = start_vmm(&sock, &dir.path().join("events"));
    let mut body = kata_body(&kernel);
    body["iommu"] = json!(true);
    let (status, msg) = api(&sock, "PUT", "vm.create", Some(&body));
    assert_eq!(status, 400);
    assert!(msg.contains("iommu=true"), "{msg}");
    let mut body = kata_body("/nonexistent/kernel");
    body["serial"] = json!({"mode": "Tty"});
    let (status, msg) = api(&sock, "PUT", "vm.create", Some(&body));
    assert_eq!(
        (status, msg.contains("does not exist")),
        (400, true),
        "{msg}"
    );
    // A device the host does not have: the pre-flight line, as 4xx.
    let mut body = kata_body(&kernel);
    body["devices"] = json!([{"path": "/sys/bus/pci/devices/0000:7f:1f.7/", "id": "vf0"}]);
    let (status, msg) = api(&sock, "PUT", "vm.create", Some(&body));
    assert_eq!(status, 400);
    assert!(msg.contains("0000:7f:1f.7 not found"), "{msg}");
    // Cold plug before boot answers a root-bus address.
    assert_eq!(
        api(&sock, "PUT", "vm.create", Some(&kata_body(&kernel))).0,
        204
    );
    let dev = json!({"path": "/sys/bus/pci/devices/0000:7f:1f.7", "id": "vf0"});
    let (status, msg) = api(&sock, "PUT", "vm.add-device", Some(&dev));
    assert_eq!(status, 400, "not on this host: {msg}");
    assert_eq!(api(&sock, "PUT", "vm.delete", None).0, 204);
    assert_eq!(api(&sock, "GET", "vm.info", None).0, 404);
    // SIGTERM with no guest: out at once.
    sigterm(&child);
    wait_within(&mut child, Duration::from_secs(10), "SIGTERM with no guest");
}

/// schemathesis (installed by tests/run.sh, named by `VFLAUNCH_SCHEMATHESIS`)
/// against the live server, bridged to TCP on loopback by socat, with a VM
/// created first so that the VM endpoints meet every state: no 5xx, status
/// codes, content types and bodies as resources/api/vflaunch-api.yaml says.
#[test]
fn the_server_answers_as_its_openapi_description_says() {
    let name = "the_server_answers_as_its_openapi_description_says";
    let Some(st) = std::env::var_os("VFLAUNCH_SCHEMATHESIS") else {
        return skip(
            name,
            "VFLAUNCH_SCHEMATHESIS is not set (tests/run.sh installs schemathesis)",
        );
    };
    if let Some(why) = kvm_unusable() {
        return skip(name, &why);
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = write_file(
        dir.path(),
        "spin.elf",
        &elf64(&tiny_spin_code(b"up\n"), false),
    );
    let sock = dir.path().join("api.sock");
    let mut vmm = start_vmm(&sock, &dir.path().join("events"));
    assert_eq!(
        api(&sock, "PUT", "vm.create", Some(&kata_body(&kernel))).0,
        204
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut socat = std::process::Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .spawn()
        .expect("socat (tests/run.sh installs it)");
    std::thread::sleep(Duration::from_millis(300));
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/resources/api/vflaunch-api.yaml"
    );
    let out = std::process::Command::new(st)
        .args(["run", spec, "--url", &format!("http://127.0.0.1:{port}/api/v1")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
        .args(["--exclude-path", "/vmm.shutdown", "-n", "25", "--seed", "7", "-w", "1"])
        .args(["--no-color", "--generation-database", "none"])
        .output()
        .unwrap();
    let _ = socat.kill();
    let _ = socat.wait();
    let _ = vmm.kill();
    let _ = vmm.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed"), "{text}");
}
