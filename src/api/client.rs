//! A small client for the API socket: `vflaunch ping`/`vflaunch api` (a
//! readiness probe, scripts, the test rig) and the tests. One request per
//! connection, `Connection: close`, bounded reads.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// Errors talking to the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("cannot talk to the API socket {0}")]
    Io(String, #[source] std::io::Error),
    /// The answer is not HTTP.
    #[error("the API socket {0} answered something that is not HTTP")]
    NotHttp(String),
}

/// An answer: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: String,
}

/// Sends `method /api/v1/<endpoint>` with an optional JSON `body` to the
/// socket at `path`, waiting at most `timeout` for each step.
pub fn call(
    path: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let name = path.display().to_string();
    let io = |e| ClientError::Io(name.clone(), e);
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
    parse(&raw).ok_or(ClientError::NotHttp(name))
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let content_type = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_string())
    });
    Some(Answer {
        status,
        content_type,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        let a = parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
        assert_eq!(
            (a.status, a.content_type.as_deref(), a.body.as_str()),
            (200, Some("application/json"), "{}")
        );
        let a = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((a.status, a.content_type, a.body.as_str()), (204, None, ""));
        assert!(parse(b"garbage").is_none());
    }
}
