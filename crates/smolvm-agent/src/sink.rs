//! The sending half of a session. Output pumps, exec waiters and the
//! request loop all send frames concurrently; a mutex around the writer
//! keeps every frame whole on the wire.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use smolvm_proto::{write_frame, write_json, FrameKind, Response};

/// Cloneable, thread-safe frame writer for one session.
#[derive(Clone)]
pub struct FrameSink {
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl FrameSink {
    /// Wraps the write half of a session stream.
    pub fn new(writer: impl Write + Send + 'static) -> Self {
        FrameSink {
            writer: Arc::new(Mutex::new(Box::new(writer))),
        }
    }

    /// Sends one frame with a raw payload.
    pub fn frame(&self, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *w, kind, payload)
    }

    /// Sends one frame whose payload is `value` as JSON.
    pub fn json<T: Serialize>(&self, kind: FrameKind, value: &T) -> io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        write_json(&mut *w, kind, value)
    }

    /// Sends a Response frame (which ends the current request).
    pub fn respond(&self, response: &Response) -> io::Result<()> {
        self.json(FrameKind::Response, response)
    }

    /// Sends `Response::Error`.
    pub fn error(&self, code: &str, message: impl Into<String>) -> io::Result<()> {
        self.respond(&error(code, message))
    }
}

/// Builds a `Response::Error`.
pub fn error(code: &str, message: impl Into<String>) -> Response {
    Response::Error {
        code: code.to_string(),
        message: message.into(),
    }
}

/// Maps an I/O error to a stable error code for the host.
pub fn io_error_code(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "not_found",
        io::ErrorKind::PermissionDenied => "permission_denied",
        io::ErrorKind::AlreadyExists => "already_exists",
        _ => "io",
    }
}

/// `Response::Error` for an I/O failure while doing `what`.
pub fn io_error(what: &str, e: &io::Error) -> Response {
    error(io_error_code(e), format!("{what}: {e}"))
}
