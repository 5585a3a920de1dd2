//! The control API: Cloud Hypervisor's REST dialect (HTTP/1.1, JSON,
//! `/api/v1/`) on a unix socket, so orchestrators that drive Cloud
//! Hypervisor (Kata's clh driver) can drive vflaunch unchanged.
//!
//! The server thread only speaks HTTP: each request is parsed on a short-
//! lived handler thread (a slow client holds only its own), turned into an
//! [`Action`] and handed to the controller on the main thread, which owns
//! the VM and answers. Nothing here can block or stop the VM.

pub mod client;
pub mod routes;
pub mod types;

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

pub use routes::Action;
use routes::RouteError;

/// Largest request body accepted.
const MAX_BODY: u64 = 1 << 20;
/// Requests handled at once; more get 503.
const MAX_IN_FLIGHT: usize = 16;
/// How long a handler waits for the controller before answering 503.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another live process serves the socket.
    #[error("{0} is in use by a running process: stop it or pick another --api-socket")]
    InUse(PathBuf),
    /// Something other than a socket is there.
    #[error("{0} exists and is not a socket: remove it or pick another --api-socket")]
    NotASocket(PathBuf),
    /// The socket could not be set up.
    #[error("cannot serve the API on {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// The server thread could not start.
    #[error("cannot start the API thread")]
    Thread(#[source] std::io::Error),
}

/// An answer: a status and, for 200 and errors, a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Option<Value>,
}

impl Reply {
    /// 204 No Content.
    pub fn done() -> Self {
        Reply {
            status: 204,
            body: None,
        }
    }

    /// 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Reply {
            status: 200,
            body: Some(body),
        }
    }

    /// `status` with a message saying what is wrong.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Self {
        Reply {
            status,
            body: Some(json!({ "error": message.to_string() })),
        }
    }
}

/// A request for the controller, and where its answer goes.
pub type Call = (Action, mpsc::SyncSender<Reply>);

/// The running server; stops and removes its socket when dropped.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// Removes a stale socket at `path` (no process answers on it); refuses a live one.
fn clear_stale(path: &Path) -> Result<(), ApiError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ApiError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|e| ApiError::Bind(path.to_path_buf(), e))
}

impl ApiServer {
    /// Serves on `path` (mode 0600), handing each call to `calls` and
    /// waking the controller through `wake`.
    pub fn start(
        path: &Path,
        calls: mpsc::Sender<Call>,
        wake: Arc<EventFd>,
    ) -> Result<Self, ApiError> {
        clear_stale(path)?;
        let bind = |e: Box<dyn std::error::Error + Send + Sync>| {
            ApiError::Bind(path.to_path_buf(), std::io::Error::other(e.to_string()))
        };
        // The socket is born 0600: no moment in which others may connect.
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let server = tiny_http::Server::http_unix(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let server = server.map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ApiError::Bind(path.to_path_buf(), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), in_flight.clone());
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || serve(server, calls, wake, s, n))
            .map_err(ApiError::Thread)?;
        log::info!("API on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            stop,
            in_flight,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Let answers already given reach their clients (vmm.shutdown's 204).
        for _ in 0..100 {
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(
    server: tiny_http::Server,
    calls: mpsc::Sender<Call>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let rq = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rq)) => rq,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("api: {e}");
                continue;
            }
        };
        if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            respond(rq, Reply::error(503, "too many requests at once: retry"));
            continue;
        }
        let (calls, wake, n) = (calls.clone(), wake.clone(), in_flight.clone());
        let spawned = std::thread::Builder::new()
            .name("api-request".into())
            .spawn(move || {
                handle(rq, &calls, &wake);
                n.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            log::warn!("api: cannot start a request thread");
        }
    }
}

fn handle(mut rq: tiny_http::Request, calls: &mpsc::Sender<Call>, wake: &EventFd) {
    if rq.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        return respond(rq, Reply::error(413, "request body over 1 MiB"));
    }
    let mut body = Vec::new();
    if let Err(e) = rq.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
        return respond(
            rq,
            Reply::error(400, format!("cannot read the request body: {e}")),
        );
    }
    if body.len() as u64 > MAX_BODY {
        return respond(rq, Reply::error(413, "request body over 1 MiB"));
    }
    let method = rq.method().as_str().to_string();
    let reply = match routes::route(&method, rq.url(), Some(&body)) {
        Err(RouteError::NotFound) => Reply::error(404, format!("no endpoint {}", rq.url())),
        Err(RouteError::MethodNotAllowed) => {
            Reply::error(405, format!("{method} is not allowed on {}", rq.url()))
        }
        Err(RouteError::BadBody(m)) => Reply::error(400, m),
        Ok(Action::Unsupported(why)) => Reply::error(400, why),
        Ok(action) => {
            log::debug!("api: {method} {}", rq.url());
            let (tx, rx) = mpsc::sync_channel(1);
            if calls.send((action, tx)).is_err() || wake.write(1).is_err() {
                Reply::error(503, "the VMM is shutting down")
            } else {
                rx.recv_timeout(CONTROLLER_TIMEOUT)
                    .unwrap_or_else(|_| Reply::error(503, "the VMM did not answer in time"))
            }
        }
    };
    respond(rq, reply);
}

fn respond(rq: tiny_http::Request, reply: Reply) {
    let json = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let response = match (&reply.body, json) {
        (Some(body), Ok(h)) => tiny_http::Response::from_data(body.to_string().into_bytes())
            .with_status_code(reply.status)
            .with_header(h)
            .boxed(),
        _ => tiny_http::Response::empty(reply.status).boxed(),
    };
    if let Err(e) = rq.respond(response) {
        log::debug!("api: the client went away: {e}");
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
