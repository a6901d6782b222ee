//! The wire protocol between the smolvm host and its guest agent.
//!
//! One byte stream carries one *session*: a virtio-serial port connection
//! (QEMU) or one AF_VSOCK connection (Firecracker). Several host processes
//! use one sandbox at once by taking different ports / connections, so a
//! session never interleaves two clients.
//!
//! A session runs like this:
//! 1. The host sends a [`FrameKind::Hello`] frame carrying a random nonce
//!    and its protocol version.
//! 2. The agent answers with a [`FrameKind::HelloAck`] frame carrying the
//!    same nonce. The host discards every byte before that exact frame, so a
//!    previous client's leftovers can never be read as this session's data.
//! 3. The host sends a [`FrameKind::Request`] (JSON [`Request`]); data
//!    frames may follow in either direction (see each request); the agent
//!    ends every request with one [`FrameKind::Response`] (JSON
//!    [`Response`]). Requests run one after another within a session.
//! 4. A Hello at any time resets the session; end of stream ends it (the
//!    agent kills what the session started).
//!
//! Frame layout: `kind: u8`, `len: u32` big-endian, `len` bytes of payload.
//! Payloads above [`MAX_FRAME_PAYLOAD`] are a protocol error on both sides.

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Version of this protocol. The agent refuses a Hello with another major.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest payload a frame may carry (1 MiB).
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// Size of the chunks files and output are streamed in.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// virtio-serial port names are `smolvm.agent.<n>`, n in `0..AGENT_PORTS`.
pub const AGENT_PORT_PREFIX: &str = "smolvm.agent.";

/// How many virtio-serial agent ports a QEMU sandbox gets (parallel sessions).
pub const AGENT_PORTS: u32 = 8;

/// AF_VSOCK port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Length of the Hello nonce in bytes.
pub const NONCE_LEN: usize = 16;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// host → agent: `[nonce; 16]` then protocol version as u32 BE.
    Hello = 1,
    /// agent → host: the same nonce then the agent's protocol version u32 BE.
    HelloAck = 2,
    /// host → agent: a JSON [`Request`].
    Request = 3,
    /// agent → host: a JSON [`Response`]; ends the current request.
    Response = 4,
    /// agent → host: bytes the command wrote to stdout (or the pty).
    Stdout = 5,
    /// agent → host: bytes the command wrote to stderr.
    Stderr = 6,
    /// host → agent: bytes for the command's stdin (or the pty).
    Stdin = 7,
    /// host → agent: stdin is closed (empty payload).
    StdinEof = 8,
    /// either way: a chunk of file content (upload: host → agent,
    /// download: agent → host).
    Data = 9,
    /// either way: end of file content (empty payload).
    DataEnd = 10,
    /// host → agent: JSON [`TtySize`], the terminal was resized.
    Resize = 11,
    /// host → agent: JSON [`SignalRequest`], deliver a signal to the command.
    Signal = 12,
}

impl FrameKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        use FrameKind::*;
        Some(match b {
            1 => Hello,
            2 => HelloAck,
            3 => Request,
            4 => Response,
            5 => Stdout,
            6 => Stderr,
            7 => Stdin,
            8 => StdinEof,
            9 => Data,
            10 => DataEnd,
            11 => Resize,
            12 => Signal,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload is.
    pub kind: FrameKind,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Writes one frame. Refuses payloads larger than [`MAX_FRAME_PAYLOAD`].
pub fn write_frame(w: &mut impl Write, kind: FrameKind, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame payload of {} bytes exceeds {MAX_FRAME_PAYLOAD}", payload.len()),
        ));
    }
    let mut header = [0u8; 5];
    header[0] = kind as u8;
    header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    // One write for small frames keeps frames whole on byte-oriented ports.
    if payload.len() <= 4096 {
        let mut buf = Vec::with_capacity(5 + payload.len());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(payload);
        w.write_all(&buf)?;
    } else {
        w.write_all(&header)?;
        w.write_all(payload)?;
    }
    w.flush()
}

/// Writes a frame whose payload is `value` as JSON.
pub fn write_json<T: Serialize>(w: &mut impl Write, kind: FrameKind, value: &T) -> io::Result<()> {
    let payload = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_frame(w, kind, &payload)
}

/// Reads one frame. `Ok(None)` means a clean end of stream before a frame
/// started; a stream that ends inside a frame is an `UnexpectedEof` error.
/// Unknown kinds and oversized lengths are `InvalidData` errors.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 5];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = FrameKind::from_u8(header[0]).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame kind {}", header[0]))
    })?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME_PAYLOAD}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { kind, payload }))
}

/// Encodes the Hello / HelloAck payload.
pub fn hello_payload(nonce: &[u8; NONCE_LEN], version: u32) -> Vec<u8> {
    let mut p = nonce.to_vec();
    p.extend_from_slice(&version.to_be_bytes());
    p
}

/// Decodes a Hello / HelloAck payload into (nonce, version).
pub fn parse_hello(payload: &[u8]) -> Option<([u8; NONCE_LEN], u32)> {
    if payload.len() != NONCE_LEN + 4 {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&payload[..NONCE_LEN]);
    let v = &payload[NONCE_LEN..];
    Some((nonce, u32::from_be_bytes([v[0], v[1], v[2], v[3]])))
}

/// Terminal size for a pty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Payload of a [`FrameKind::Signal`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Signal number (e.g. 2 for SIGINT, 15 for SIGTERM).
    pub signal: i32,
}

/// What to run for [`Request::Exec`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments, run directly (no shell) unless `shell` is set.
    pub argv: Vec<String>,
    /// When true, `argv` is joined with spaces and run by `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/root`, or `/` if that does not exist).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the process group after this many milliseconds (None: no limit).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run under a pseudo-terminal of this size (stdout carries the pty
    /// output; there is no separate stderr).
    #[serde(default)]
    pub tty: Option<TtySize>,
    /// Whether the host will send Stdin frames. When false the command's
    /// stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
}

/// A request from the host. Frames that follow a request:
/// - `Exec`: agent streams Stdout/Stderr frames; host may send Stdin,
///   StdinEof, Resize, Signal; the agent ends with `Response::Exited`.
/// - `Upload`: host streams Data frames then DataEnd; agent ends with
///   `Response::Uploaded` (or `Error`, possibly before all data arrived:
///   the host stops sending when it sees a Response).
/// - `Download`: agent answers `Response::DownloadStart`, then Data frames
///   and DataEnd (no further Response).
/// - all others: a single Response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Liveness, versions and capabilities.
    Health,
    /// Run a command.
    Exec(ExecRequest),
    /// Write a file (streamed); `mode` is masked with 0o7777.
    Upload {
        /// Absolute guest path.
        path: String,
        /// File mode bits.
        mode: u32,
        /// Create missing parent directories.
        #[serde(default)]
        create_dirs: bool,
    },
    /// Read a file (streamed).
    Download {
        /// Absolute guest path.
        path: String,
    },
    /// Flush every filesystem; with `freeze`, also freeze them (FIFREEZE)
    /// until `Thaw` or `freeze_timeout_ms` passes, whichever comes first.
    Sync {
        /// Freeze after flushing.
        #[serde(default)]
        freeze: bool,
        /// Automatic thaw deadline (default 10 s) so a lost host never
        /// leaves the guest frozen.
        #[serde(default)]
        freeze_timeout_ms: Option<u64>,
    },
    /// Thaw filesystems frozen by `Sync { freeze: true }`.
    Thaw,
    /// Set the wall clock (CLOCK_REALTIME).
    SetClock {
        /// Seconds since the Unix epoch.
        unix_secs: i64,
        /// Nanoseconds within the second.
        nanos: u32,
    },
    /// Mix host entropy into the kernel's pool and credit it (RNDADDENTROPY).
    AddEntropy {
        /// Hex-encoded random bytes (at most 512 bytes decoded).
        hex: String,
    },
    /// Give the sandbox a new identity after a fork: hostname and machine-id.
    SetIdentity {
        /// New hostname.
        hostname: String,
        /// New machine-id (32 lowercase hex chars).
        machine_id: String,
    },
    /// Flush filesystems and power the guest off.
    Shutdown,
}

/// The agent's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `Health`.
    Health {
        /// Agent version (crate version).
        agent_version: String,
        /// Protocol version spoken.
        protocol_version: u32,
        /// Feature names this agent supports (e.g. "exec", "tty", "sync",
        /// "freeze", "files", "clock", "entropy", "identity", "shutdown").
        capabilities: Vec<String>,
        /// Milliseconds since the guest booted (CLOCK_BOOTTIME).
        uptime_ms: u64,
        /// Guest wall clock, seconds since the epoch (as f64).
        wall_clock: f64,
    },
    /// A command ended.
    Exited {
        /// Exit code; 128+signal when killed by a signal.
        exit_code: i32,
        /// Killed because the timeout passed.
        timed_out: bool,
        /// The signal that killed it, if any.
        signal: Option<i32>,
    },
    /// Upload finished.
    Uploaded {
        /// Bytes written.
        bytes: u64,
    },
    /// Download begins; Data frames and DataEnd follow.
    DownloadStart {
        /// File size in bytes.
        size: u64,
        /// File mode bits (& 0o7777).
        mode: u32,
    },
    /// Done, nothing to report.
    Ok,
    /// The request failed.
    Error {
        /// Stable machine-readable code, e.g. "not_found", "spawn_failed",
        /// "io", "bad_request", "unsupported".
        code: String,
        /// Human-readable message.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_oversize() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Stdout, b"hello").unwrap();
        write_json(&mut buf, FrameKind::Request, &Request::Health).unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(f.kind, FrameKind::Stdout);
        assert_eq!(f.payload, b"hello");
        let f = read_frame(&mut r).unwrap().unwrap();
        let req: Request = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(req, Request::Health);
        assert!(read_frame(&mut r).unwrap().is_none());

        let big = vec![0u8; MAX_FRAME_PAYLOAD + 1];
        assert!(write_frame(&mut Vec::new(), FrameKind::Data, &big).is_err());
        let mut forged = vec![FrameKind::Data as u8];
        forged.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_frame(&mut &forged[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_and_unknown_frames_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Data, b"abcdef").unwrap();
        buf.truncate(8);
        assert_eq!(read_frame(&mut &buf[..]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let bad = [200u8, 0, 0, 0, 0];
        assert_eq!(read_frame(&mut &bad[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn requests_use_tagged_json_and_reject_unknown_fields() {
        let json = serde_json::to_string(&Request::Sync { freeze: true, freeze_timeout_ms: None }).unwrap();
        assert!(json.contains(r#""op":"sync""#), "{json}");
        let err = serde_json::from_str::<Request>(r#"{"op":"download","path":"/x","evil":1}"#);
        assert!(err.is_err());
        let hello = hello_payload(&[7; NONCE_LEN], PROTOCOL_VERSION);
        assert_eq!(parse_hello(&hello), Some(([7; NONCE_LEN], PROTOCOL_VERSION)));
        assert_eq!(parse_hello(&hello[1..]), None);
    }
}
