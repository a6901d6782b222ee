//! A small, synchronous HTTP/1.1 client for Firecracker's API socket.
//!
//! Firecracker serves a REST API on a unix socket. Each call here:
//! 1. connects to the socket (a fresh connection per call, so a request
//!    that timed out can never leave a late answer for the next one);
//! 2. writes one request with a `Content-Length` JSON body (or none);
//! 3. reads the status line and headers, then exactly `Content-Length`
//!    body bytes (or a chunked body), within the read timeout;
//! 4. maps any status >= 300 to [`ApiError::Fault`] carrying Firecracker's
//!    own `fault_message`.
//!
//! The wire part ([`exchange`]) is generic over `Read + Write`, so tests
//! drive it with in-memory streams. Nothing here prints.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Largest response body we accept (Firecracker's answers are small).
const MAX_BODY: usize = 1 << 20;
/// Largest header section we accept.
const MAX_HEADERS: usize = 64 * 1024;

/// HTTP methods Firecracker's API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// PUT
    Put,
    /// PATCH
    Patch,
}

impl Method {
    /// The method's token.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// Failures of one API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket did not accept a connection.
    #[error("Cannot connect to Firecracker's API socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed, or timed out.
    #[error("Firecracker's API did not answer {method} {path} ({during})")]
    Io {
        /// Method.
        method: &'static str,
        /// Request path.
        path: String,
        /// Which step failed.
        during: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Firecracker refused the request: its status and `fault_message`.
    #[error("Firecracker refused {method} {path} (HTTP {status}): {fault_message}")]
    Fault {
        /// Method.
        method: &'static str,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Firecracker's explanation.
        fault_message: String,
    },
    /// The answer was not HTTP as we know it.
    #[error("Firecracker's API sent a malformed answer to {method} {path}: {reason}")]
    Malformed {
        /// Method.
        method: &'static str,
        /// Request path.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

impl ApiError {
    /// True when the error is a timeout (the call may still complete).
    #[cfg(test)]
    pub fn is_timeout(&self) -> bool {
        matches!(self, ApiError::Io { source, .. } if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status (2xx).
    pub status: u16,
    /// Body bytes (often empty: 204).
    pub body: Vec<u8>,
}

impl Response {
    /// The body parsed as JSON.
    #[cfg(test)]
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A client for one Firecracker API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client { socket: socket.into() }
    }

    /// Sends one request; `timeout` bounds each read and write.
    pub fn call<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>, timeout: Duration) -> Result<Response, ApiError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let stream = crate::agent::connect_unix(&self.socket).map_err(|source| ApiError::Connect { path: self.socket.clone(), source })?;
        let io = |during, source| ApiError::Io { method: method.as_str(), path: path.to_string(), during, source };
        stream.set_read_timeout(Some(timeout)).map_err(|e| io("setting the timeout", e))?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| io("setting the timeout", e))?;
        exchange(stream, method, path, body.as_deref())
    }

    /// `PUT path` with a JSON body.
    pub fn put<B: Serialize>(&self, path: &str, body: &B, timeout: Duration) -> Result<Response, ApiError> {
        self.call(Method::Put, path, Some(body), timeout)
    }

    /// `PATCH path` with a JSON body.
    pub fn patch<B: Serialize>(&self, path: &str, body: &B, timeout: Duration) -> Result<Response, ApiError> {
        self.call(Method::Patch, path, Some(body), timeout)
    }

    /// `GET path`.
    pub fn get(&self, path: &str, timeout: Duration) -> Result<Response, ApiError> {
        self.call::<()>(Method::Get, path, None, timeout)
    }
}

/// Writes one request to `stream` and reads its answer.
pub fn exchange<S: Read + Write>(mut stream: S, method: Method, path: &str, body: Option<&[u8]>) -> Result<Response, ApiError> {
    let m = method.as_str();
    let io = |during, source| ApiError::Io { method: m, path: path.to_string(), during, source };
    let malformed = |reason: String| ApiError::Malformed { method: m, path: path.to_string(), reason };
    let mut req = format!("{m} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    match body {
        Some(b) => req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len())),
        None => req.push_str("\r\n"),
    }
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).and_then(|_| stream.flush()).map_err(|e| io("sending the request", e))?;

    let mut reader = BufReader::new(stream);
    let mut status_line = Vec::new();
    read_line(&mut reader, &mut status_line).map_err(|e| io("reading the status line", e))?;
    let status_text = String::from_utf8_lossy(&status_line);
    let mut parts = status_text.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(malformed(format!("status line {:?}", status_text.trim_end())));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("status line {:?}", status_text.trim_end())))?;

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut header_bytes = 0usize;
    loop {
        let mut line = Vec::new();
        read_line(&mut reader, &mut line).map_err(|e| io("reading the headers", e))?;
        header_bytes += line.len();
        if header_bytes > MAX_HEADERS {
            return Err(malformed("headers larger than 64 KiB".into()));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(malformed(format!("header line {text:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| malformed(format!("Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(malformed(format!("body of {n} bytes")));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }

    let body = if chunked {
        read_chunked(&mut reader).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => malformed(e.to_string()),
            _ => io("reading the body", e),
        })?
    } else {
        let mut body = vec![0u8; content_length.unwrap_or(0)];
        reader.read_exact(&mut body).map_err(|e| io("reading the body", e))?;
        body
    };

    if status >= 300 {
        let fault_message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("fault_message").and_then(|f| f.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(ApiError::Fault { method: m, path: path.to_string(), status, fault_message });
    }
    Ok(Response { status, body })
}

/// Reads one line (through `\n`), refusing endless ones.
fn read_line<R: BufRead>(reader: &mut R, out: &mut Vec<u8>) -> io::Result<()> {
    let n = reader.by_ref().take(8192).read_until(b'\n', out)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed"));
    }
    if !out.ends_with(b"\n") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line longer than 8 KiB"));
    }
    Ok(())
}

fn read_chunked<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        read_line(reader, &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {size_text:?}")))?;
        if body.len() + size > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunked body larger than 1 MiB"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = Vec::new();
        read_line(reader, &mut crlf)?;
        if size == 0 {
            return Ok(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// An in-memory peer: reads come from `input`, writes go to `output`.
    struct Scripted {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Scripted {
        fn new(answer: &str) -> Self {
            Scripted { input: io::Cursor::new(answer.as_bytes().to_vec()), output: Vec::new() }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }


    #[test]
    fn request_has_content_length_and_body() {
        let mut peer = Scripted::new("HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n");
        let r = exchange(&mut peer, Method::Put, "/vm", Some(br#"{"state":"Paused"}"#)).unwrap();
        assert_eq!(r.status, 204);
        let sent = String::from_utf8(peer.output.clone()).unwrap();
        assert!(sent.starts_with("PUT /vm HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("Content-Length: 18\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\n{\"state\":\"Paused\"}"), "{sent}");
    }

    #[test]
    fn get_without_body_reads_json_answer() {
        let body = r#"{"firecracker_version":"1.16.1"}"#;
        let mut peer = Scripted::new(&format!("HTTP/1.1 200 \r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        let r = exchange(&mut peer, Method::Get, "/version", None).unwrap();
        assert_eq!(r.json().unwrap()["firecracker_version"], "1.16.1");
        let sent = String::from_utf8(peer.output.clone()).unwrap();
        assert!(!sent.contains("Content-Length"), "{sent}");
    }

    #[test]
    fn fault_message_is_surfaced() {
        let body = r#"{"fault_message":"Load snapshot error: Cannot restore microvm state"}"#;
        let mut peer = Scripted::new(&format!("HTTP/1.1 400 \r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        let e = exchange(&mut peer, Method::Put, "/snapshot/load", Some(b"{}")).unwrap_err();
        match &e {
            ApiError::Fault { status, fault_message, .. } => {
                assert_eq!(*status, 400);
                assert_eq!(fault_message, "Load snapshot error: Cannot restore microvm state");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("Cannot restore microvm state"));
    }

    #[test]
    fn chunked_bodies_and_truncated_answers() {
        let mut peer = Scripted::new("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n");
        let r = exchange(&mut peer, Method::Get, "/", None).unwrap();
        assert_eq!(r.json().unwrap()["a"], 1);
        let mut peer = Scripted::new("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\"");
        assert!(matches!(exchange(&mut peer, Method::Get, "/", None), Err(ApiError::Io { .. })));
        let mut peer = Scripted::new("SSH-2.0-OpenSSH\r\n");
        assert!(matches!(exchange(&mut peer, Method::Get, "/", None), Err(ApiError::Malformed { .. })));
        let mut peer = Scripted::new("");
        assert!(matches!(exchange(&mut peer, Method::Get, "/", None), Err(ApiError::Io { .. })));
        let mut peer = Scripted::new(&format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1));
        assert!(matches!(exchange(&mut peer, Method::Get, "/", None), Err(ApiError::Malformed { .. })));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let e = exchange(&a, Method::Get, "/", None).unwrap_err();
        assert!(e.is_timeout(), "{e:?}");
    }
}
