//! The server against a stand-in controller: socket rules, status codes,
//! JSON content type, bounded bodies, a slow client.

use std::io::Write;
use std::time::Duration;

use super::client::call;
use super::*;

/// A server on a fresh socket whose controller answers every call with
/// `{"action": "<Debug of the action>"}`.
fn serve_echo(dir: &tempfile::TempDir) -> (ApiServer, PathBuf) {
    let path = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel::<Call>();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let server = ApiServer::start(&path, tx, wake).unwrap();
    std::thread::spawn(move || {
        for (action, reply) in rx {
            let name = format!("{action:?}");
            let _ = reply.send(Reply::ok(json!({ "action": name })));
        }
    });
    (server, path)
}

const T: Duration = Duration::from_secs(5);

#[test]
fn answers_in_json_with_the_dialects_status_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, path) = serve_echo(&dir);
    let a = call(&path, "GET", "vmm.ping", None, T).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type.as_deref(), Some("application/json"));
    assert!(a.body.contains("Ping"), "{}", a.body);
    let a = call(&path, "GET", "vm.nothing", None, T).unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/json"),
        "errors are JSON too"
    );
    assert_eq!(call(&path, "POST", "vm.boot", None, T).unwrap().status, 405);
    assert_eq!(
        call(&path, "PUT", "vm.create", Some("{nope"), T)
            .unwrap()
            .status,
        400
    );
    let a = call(&path, "PUT", "vm.add-net", Some("{}"), T).unwrap();
    assert_eq!(a.status, 400);
    assert!(a.body.contains("virtio-net"), "{}", a.body);
    let a = call(&path, "PUT", "vm.create", Some(r#"{"payload":{}}"#), T).unwrap();
    assert!(a.body.contains("VmCreate"), "{}", a.body);
}

#[test]
fn socket_is_private_stale_ones_are_replaced_live_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    // A stale socket: bound, then its owner gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let (server, path) = serve_echo(&dir);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (tx, _rx) = mpsc::channel::<Call>();
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let err = ApiServer::start(&path, tx.clone(), wake.clone())
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::InUse(_)), "{err}");
    drop(server);
    assert!(!path.exists(), "the socket goes with the server");
    std::fs::write(&path, "not a socket").unwrap();
    let err = ApiServer::start(&path, tx, wake).err().unwrap();
    assert!(matches!(err, ApiError::NotASocket(_)), "{err}");
}

#[test]
fn big_bodies_and_slow_clients_hold_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, path) = serve_echo(&dir);
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2 << 20));
    let a = call(&path, "PUT", "vm.create", Some(&big), T).unwrap();
    assert_eq!(a.status, 413);
    // A client that sends half a request and waits.
    let mut slow = UnixStream::connect(&path).unwrap();
    slow.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let start = std::time::Instant::now();
    assert_eq!(call(&path, "GET", "vmm.ping", None, T).unwrap().status, 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(slow);
}
