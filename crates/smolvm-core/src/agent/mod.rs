//! The host side of the agent protocol (see `smolvm_proto` for the wire
//! format and the session steps).
//!
//! On QEMU the agent is reached through virtio-serial ports, one unix
//! socket per port. A QEMU socket chardev serves one client at a time, so
//! each port has a lock file: a client takes the first free port, which
//! lets several host processes use one sandbox at once without ever
//! sharing a port. On Firecracker the agent is reached through the vsock
//! unix socket with Firecracker's `CONNECT <port>` handshake.

mod session;

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use session::{AgentSession, ExecOutcome, Health, OutputStream};

use crate::error::{Coded, ErrorCode};
use crate::lock::{try_lock_exclusive, LockGuard};

/// How to reach a sandbox's agent.
#[derive(Debug, Clone)]
pub enum AgentEndpoint {
    /// virtio-serial ports: sockets `agent-<n>.sock` in `dir`, each guarded
    /// by `agent-<n>.lock`, for n in `0..count`.
    SerialPorts {
        /// The sandbox directory.
        dir: PathBuf,
        /// Number of ports.
        count: u32,
    },
    /// Firecracker's vsock host socket.
    VsockUds {
        /// The host-side unix socket.
        path: PathBuf,
        /// Guest vsock port.
        port: u32,
    },
}

/// Failures talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Could not connect to the agent's socket.
    #[error("Cannot reach the guest agent at {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Every agent port is in use by other smolvm processes.
    #[error("All {count} agent channels of this sandbox are in use by other smolvm commands; retry when one finishes")]
    Busy {
        /// Ports.
        count: u32,
    },
    /// The agent did not answer in time.
    #[error("The guest agent did not answer within {waited:?} while {during}")]
    Timeout {
        /// What we were doing.
        during: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The agent's bytes did not follow the protocol.
    #[error("The guest agent broke the protocol: {0}")]
    Protocol(String),
    /// The connection failed mid-request.
    #[error("The connection to the guest agent failed while {during}")]
    Io {
        /// What we were doing.
        during: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The agent refused or failed the request.
    #[error("The guest agent reported {code}: {message}")]
    Remote {
        /// Agent's error code.
        code: String,
        /// Agent's message.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("Cannot use local file {path}")]
    LocalFile {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl Coded for AgentError {
    fn code(&self) -> ErrorCode {
        match self {
            AgentError::Busy { .. } => ErrorCode::Busy,
            AgentError::Remote { code, .. } if code == "not_found" => ErrorCode::NotFound,
            AgentError::LocalFile { .. } => ErrorCode::InvalidInput,
            _ => ErrorCode::RuntimeError,
        }
    }
}

/// Connects to a unix socket, also when its path is longer than the
/// ~108-byte `sun_path` limit (by going through the parent directory's
/// file descriptor in /proc/self/fd).
pub fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path);
    }
    let parent = path.parent().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = path.file_name().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dir = std::fs::File::open(parent)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    UnixStream::connect(short)
}

/// Opens a session with the agent: takes a free port (QEMU) or connects
/// through the vsock socket (Firecracker), then runs the Hello handshake.
/// `timeout` bounds the whole attempt.
pub fn connect(endpoint: &AgentEndpoint, timeout: Duration) -> Result<AgentSession, AgentError> {
    let deadline = Instant::now() + timeout;
    let (stream, lock) = match endpoint {
        AgentEndpoint::SerialPorts { dir, count } => take_serial_port(dir, *count, deadline)?,
        AgentEndpoint::VsockUds { path, port } => (vsock_connect(path, *port, deadline)?, None),
    };
    AgentSession::handshake(stream, lock, deadline)
}

/// Keeps trying [`connect`] + a health check until the agent answers or
/// `timeout` passes; `still_booting` is asked between attempts and can
/// end the wait early with its own error (e.g. the VMM exited).
pub fn wait_ready<E>(
    endpoint: &AgentEndpoint,
    timeout: Duration,
    mut still_booting: impl FnMut() -> Result<(), E>,
) -> Result<Result<Health, AgentError>, E> {
    let deadline = Instant::now() + timeout;
    let mut last_err;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.min(Duration::from_millis(1500)).max(Duration::from_millis(200));
        match connect(endpoint, attempt).and_then(|mut s| s.health()) {
            Ok(h) => return Ok(Ok(h)),
            Err(e) => last_err = e,
        }
        still_booting()?;
        if Instant::now() >= deadline {
            return Ok(Err(match last_err {
                AgentError::Timeout { during, .. } => AgentError::Timeout { during, waited: timeout },
                other => other,
            }));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn take_serial_port(dir: &Path, count: u32, deadline: Instant) -> Result<(UnixStream, Option<LockGuard>), AgentError> {
    loop {
        for n in 0..count {
            let lock_path = dir.join(format!("agent-{n}.lock"));
            let lock = try_lock_exclusive(&lock_path)
                .map_err(|source| AgentError::Connect { path: lock_path.clone(), source })?;
            let Some(lock) = lock else { continue };
            let sock = dir.join(format!("agent-{n}.sock"));
            return match connect_unix(&sock) {
                Ok(s) => Ok((s, Some(lock))),
                Err(source) => Err(AgentError::Connect { path: sock, source }),
            };
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Busy { count });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn vsock_connect(path: &Path, port: u32, deadline: Instant) -> Result<UnixStream, AgentError> {
    let mut s = connect_unix(path).map_err(|source| AgentError::Connect { path: path.into(), source })?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
    s.set_read_timeout(Some(left)).ok();
    let io_err = |source| AgentError::Io { during: "the vsock CONNECT handshake".into(), source };
    s.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(io_err)?;
    // Read the reply line byte by byte so no session bytes are consumed.
    let mut line = Vec::new();
    let mut reader = BufReader::with_capacity(1, &mut s);
    reader.by_ref().take(64).read_until(b'\n', &mut line).map_err(io_err)?;
    if !line.starts_with(b"OK ") {
        return Err(AgentError::Protocol(format!(
            "vsock CONNECT handshake failed: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(s)
}

use std::io::Read as _;
