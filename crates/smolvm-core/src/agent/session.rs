//! One agent session: the handshake and the typed requests on top of it.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use smolvm_proto::{
    hello_payload, read_frame, write_frame, write_json, ExecRequest, Frame, FrameKind, Request, Response, TtySize,
    CHUNK_SIZE, NONCE_LEN, PROTOCOL_VERSION,
};

use super::AgentError;
use crate::lock::LockGuard;

/// How long an unanswered Hello waits before it is sent again.
const HELLO_RETRY: Duration = Duration::from_millis(100);

/// Default bound on a simple request's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent reports about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// Agent version.
    pub agent_version: String,
    /// Protocol version.
    pub protocol_version: u32,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Guest uptime.
    pub uptime_ms: u64,
    /// Guest wall clock (seconds since the epoch).
    pub wall_clock: f64,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// stdout (or the pty).
    Stdout,
    /// stderr.
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutcome {
    /// Exit code (128+signal when killed).
    pub exit_code: i32,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Killing signal, if any.
    pub signal: Option<i32>,
}

/// An open, handshaken session with the guest agent.
pub struct AgentSession {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    _port_lock: Option<LockGuard>,
}

impl AgentSession {
    /// Sends Hello and skips everything until the matching HelloAck.
    pub(super) fn handshake(stream: UnixStream, lock: Option<LockGuard>, deadline: Instant) -> Result<Self, AgentError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| AgentError::Protocol(format!("no randomness for the nonce: {e}")))?;
        let writer = stream.try_clone().map_err(|source| AgentError::Io { during: "opening the session".into(), source })?;
        let mut session = AgentSession { reader: BufReader::new(stream), writer, _port_lock: lock };
        let during = "waiting for the agent's handshake";
        let started = Instant::now();
        let hello = hello_payload(&nonce, PROTOCOL_VERSION);
        // The guest drops data that reaches a port while it reopens it, so
        // an unanswered Hello is sent again (same nonce: duplicates are
        // harmless, the stream order keeps them before our first request).
        let mut next_hello = Instant::now();
        // Expected bytes: kind, length 20 (BE), then the nonce; a previous
        // client's leftovers before it are skipped byte by byte.
        let mut expect = vec![FrameKind::HelloAck as u8, 0, 0, 0, (NONCE_LEN + 4) as u8];
        expect.extend_from_slice(&nonce);
        let mut matched = 0;
        let mut skipped = 0usize;
        let mut byte = [0u8; 1];
        while matched < expect.len() {
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout { during: during.into(), waited: started.elapsed() });
            }
            if now >= next_hello {
                write_frame(&mut session.writer, FrameKind::Hello, &hello).map_err(|e| session.io_err(e, during, started))?;
                next_hello = now + HELLO_RETRY;
            }
            session.set_deadline(next_hello.min(deadline), during)?;
            match session.reader.read(&mut byte) {
                Ok(0) => {
                    return Err(AgentError::Io { during: during.into(), source: io::ErrorKind::UnexpectedEof.into() })
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => continue,
                Err(e) => return Err(session.io_err(e, during, started)),
            }
            if byte[0] == expect[matched] {
                matched += 1;
            } else {
                matched = usize::from(byte[0] == expect[0]);
                skipped += 1;
                if skipped > 64 << 20 {
                    return Err(AgentError::Protocol("no handshake answer in 64 MiB of data".into()));
                }
            }
        }
        session.set_deadline(deadline, during)?;
        let mut version = [0u8; 4];
        session.reader.read_exact(&mut version).map_err(|e| session.io_err(e, during, started))?;
        let version = u32::from_be_bytes(version);
        if version != PROTOCOL_VERSION {
            return Err(AgentError::Protocol(format!(
                "the guest agent speaks protocol {version}, this smolvm speaks {PROTOCOL_VERSION}; rebuild the image with 'smolvm image build'"
            )));
        }
        Ok(session)
    }

    fn set_deadline(&self, deadline: Instant, during: &str) -> Result<(), AgentError> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        self.set_timeout(Some(left), during)
    }

    fn set_timeout(&self, t: Option<Duration>, during: &str) -> Result<(), AgentError> {
        self.writer
            .set_read_timeout(t)
            .and_then(|_| self.writer.set_write_timeout(t))
            .map_err(|source| AgentError::Io { during: during.into(), source })
    }

    fn io_err(&self, e: io::Error, during: &str, started: Instant) -> AgentError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                AgentError::Timeout { during: during.into(), waited: started.elapsed() }
            }
            _ => AgentError::Io { during: during.into(), source: e },
        }
    }

    fn send(&mut self, req: &Request, during: &str) -> Result<(), AgentError> {
        write_json(&mut self.writer, FrameKind::Request, req)
            .map_err(|source| AgentError::Io { during: during.into(), source })
    }

    fn next_frame(&mut self, during: &str, started: Instant) -> Result<Frame, AgentError> {
        match read_frame(&mut self.reader) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(AgentError::Io { during: during.into(), source: io::ErrorKind::UnexpectedEof.into() }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(AgentError::Protocol(e.to_string())),
            Err(e) => Err(self.io_err(e, during, started)),
        }
    }

    fn response(frame: &Frame) -> Result<Response, AgentError> {
        let resp: Response =
            serde_json::from_slice(&frame.payload).map_err(|e| AgentError::Protocol(format!("bad response: {e}")))?;
        if let Response::Error { code, message } = resp {
            return Err(AgentError::Remote { code, message });
        }
        Ok(resp)
    }

    /// Sends a request that is answered by one Response.
    fn simple(&mut self, req: Request, during: &str, timeout: Duration) -> Result<Response, AgentError> {
        self.set_timeout(Some(timeout), during)?;
        let started = Instant::now();
        self.send(&req, during)?;
        loop {
            let f = self.next_frame(during, started)?;
            if f.kind == FrameKind::Response {
                return Self::response(&f);
            }
        }
    }

    /// Liveness, versions, capabilities and the guest clock.
    pub fn health(&mut self) -> Result<Health, AgentError> {
        match self.simple(Request::Health, "checking the agent's health", REQUEST_TIMEOUT)? {
            Response::Health { agent_version, protocol_version, capabilities, uptime_ms, wall_clock } => {
                Ok(Health { agent_version, protocol_version, capabilities, uptime_ms, wall_clock })
            }
            other => Err(AgentError::Protocol(format!("unexpected answer to health: {other:?}"))),
        }
    }

    /// Runs a command, handing each output chunk to `on_output` as it
    /// arrives. `stdin`, when given, is copied to the command from a
    /// helper thread while output streams.
    pub fn exec(
        &mut self,
        mut req: ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        on_output: &mut dyn FnMut(OutputStream, &[u8]) -> io::Result<()>,
    ) -> Result<ExecOutcome, AgentError> {
        let during = "running a command";
        req.stdin = stdin.is_some();
        // The command's own timeout is enforced by the agent; ours only
        // catches an agent that vanished.
        let wait = req.timeout_ms.map(|ms| Duration::from_millis(ms) + Duration::from_secs(30));
        self.set_timeout(wait, during)?;
        self.writer.set_write_timeout(Some(REQUEST_TIMEOUT)).ok();
        let started = Instant::now();
        self.send(&Request::Exec(req), during)?;
        let pump = match stdin {
            Some(input) => Some(self.spawn_stdin_pump(input)?),
            None => None,
        };
        let result = loop {
            let f = match self.next_frame(during, started) {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            let sink = match f.kind {
                FrameKind::Stdout => OutputStream::Stdout,
                FrameKind::Stderr => OutputStream::Stderr,
                FrameKind::Response => match Self::response(&f) {
                    Ok(Response::Exited { exit_code, timed_out, signal }) => {
                        break Ok(ExecOutcome { exit_code, timed_out, signal })
                    }
                    Ok(other) => break Err(AgentError::Protocol(format!("unexpected answer to exec: {other:?}"))),
                    Err(e) => break Err(e),
                },
                _ => continue,
            };
            if let Err(source) = on_output(sink, &f.payload) {
                // Our reader went away (e.g. a closed pipe): stop the command.
                let _ = write_json(&mut self.writer, FrameKind::Signal, &smolvm_proto::SignalRequest { signal: 9 });
                break Err(AgentError::Io { during: "writing the command's output".into(), source });
            }
        };
        if let Some(pump) = pump {
            // The pump ends when its input ends; on an interactive terminal
            // that may be never, so it is left detached (the process exits).
            if pump.is_finished() {
                let _ = pump.join();
            }
        }
        result
    }

    fn spawn_stdin_pump(&self, mut input: Box<dyn Read + Send>) -> Result<std::thread::JoinHandle<()>, AgentError> {
        let mut w = self
            .writer
            .try_clone()
            .map_err(|source| AgentError::Io { during: "starting the stdin copy".into(), source })?;
        Ok(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) => {
                        let _ = write_frame(&mut w, FrameKind::StdinEof, &[]);
                        return;
                    }
                    Ok(n) => {
                        if write_frame(&mut w, FrameKind::Stdin, &buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        let _ = write_frame(&mut w, FrameKind::StdinEof, &[]);
                        return;
                    }
                }
            }
        }))
    }

    /// A writer for control frames (resize, signals) that can be used from
    /// another thread while `exec` streams output.
    pub fn control_writer(&self) -> io::Result<ControlWriter> {
        Ok(ControlWriter { w: self.writer.try_clone()? })
    }

    /// Streams `local` into the guest file `guest_path`.
    pub fn upload(&mut self, local: &Path, guest_path: &str, mode: Option<u32>, create_dirs: bool) -> Result<u64, AgentError> {
        let during = "uploading a file";
        let local_err = |source| AgentError::LocalFile { path: local.to_path_buf(), source };
        let mut file = std::fs::File::open(local).map_err(local_err)?;
        let meta = file.metadata().map_err(local_err)?;
        if !meta.is_file() {
            return Err(local_err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
        }
        let mode = mode.unwrap_or(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777);
        self.set_timeout(Some(REQUEST_TIMEOUT), during)?;
        let started = Instant::now();
        self.send(&Request::Upload { path: guest_path.into(), mode, create_dirs }, during)?;
        let mut buf = vec![0u8; CHUNK_SIZE];
        loop {
            let n = file.read(&mut buf).map_err(local_err)?;
            let (kind, data) = if n == 0 { (FrameKind::DataEnd, &buf[..0]) } else { (FrameKind::Data, &buf[..n]) };
            write_frame(&mut self.writer, kind, data).map_err(|e| self.io_err(e, during, started))?;
            if n == 0 {
                break;
            }
        }
        loop {
            let f = self.next_frame(during, started)?;
            if f.kind == FrameKind::Response {
                return match Self::response(&f)? {
                    Response::Uploaded { bytes } => Ok(bytes),
                    other => Err(AgentError::Protocol(format!("unexpected answer to upload: {other:?}"))),
                };
            }
        }
    }

    /// Streams the guest file `guest_path` into `out`; returns (size, mode).
    pub fn download(&mut self, guest_path: &str, out: &mut dyn Write) -> Result<(u64, u32), AgentError> {
        let during = "downloading a file";
        self.set_timeout(Some(REQUEST_TIMEOUT), during)?;
        let started = Instant::now();
        self.send(&Request::Download { path: guest_path.into() }, during)?;
        let (size, mode) = loop {
            let f = self.next_frame(during, started)?;
            if f.kind == FrameKind::Response {
                match Self::response(&f)? {
                    Response::DownloadStart { size, mode } => break (size, mode),
                    other => return Err(AgentError::Protocol(format!("unexpected answer to download: {other:?}"))),
                }
            }
        };
        let mut got = 0u64;
        loop {
            let f = self.next_frame(during, started)?;
            match f.kind {
                FrameKind::Data => {
                    got += f.payload.len() as u64;
                    if got > size {
                        return Err(AgentError::Protocol(format!("the agent sent more than the announced {size} bytes")));
                    }
                    out.write_all(&f.payload).map_err(|source| AgentError::Io { during: "writing the local file".into(), source })?;
                }
                FrameKind::DataEnd => break,
                // The agent reports a read error in place of DataEnd.
                FrameKind::Response => {
                    Self::response(&f)?;
                    return Err(AgentError::Protocol("the agent ended the download with an unexpected answer".into()));
                }
                _ => {}
            }
        }
        if got != size {
            return Err(AgentError::Protocol(format!("file ended after {got} of {size} bytes")));
        }
        Ok((size, mode & 0o7777))
    }

    /// Flushes the guest's filesystems; with `freeze`, also freezes them
    /// until [`Self::thaw`] or `freeze_timeout` passes.
    pub fn sync(&mut self, freeze: bool, freeze_timeout: Duration) -> Result<(), AgentError> {
        let req = Request::Sync { freeze, freeze_timeout_ms: Some(freeze_timeout.as_millis() as u64) };
        self.simple(req, "flushing the guest's filesystems", REQUEST_TIMEOUT).map(drop)
    }

    /// Thaws filesystems frozen by [`Self::sync`].
    pub fn thaw(&mut self) -> Result<(), AgentError> {
        self.simple(Request::Thaw, "thawing the guest's filesystems", REQUEST_TIMEOUT).map(drop)
    }

    /// Sets the guest wall clock to the host's now.
    pub fn set_clock_now(&mut self) -> Result<(), AgentError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let req = Request::SetClock { unix_secs: now.as_secs() as i64, nanos: now.subsec_nanos() };
        self.simple(req, "setting the guest clock", REQUEST_TIMEOUT).map(drop)
    }

    /// Mixes `bytes` of fresh host entropy into the guest's random pool.
    pub fn add_entropy(&mut self, bytes: usize) -> Result<(), AgentError> {
        let mut seed = vec![0u8; bytes.min(512)];
        getrandom::fill(&mut seed).map_err(|e| AgentError::Protocol(format!("no host randomness: {e}")))?;
        let hex = seed.iter().map(|b| format!("{b:02x}")).collect();
        self.simple(Request::AddEntropy { hex }, "reseeding the guest's random pool", REQUEST_TIMEOUT).map(drop)
    }

    /// Sets hostname and machine-id (forks get their own identity).
    pub fn set_identity(&mut self, hostname: &str, machine_id: &str) -> Result<(), AgentError> {
        let req = Request::SetIdentity { hostname: hostname.into(), machine_id: machine_id.into() };
        self.simple(req, "setting the guest's identity", REQUEST_TIMEOUT).map(drop)
    }

    /// Asks the guest to flush and power off.
    pub fn shutdown(&mut self) -> Result<(), AgentError> {
        self.simple(Request::Shutdown, "asking the guest to power off", Duration::from_secs(10)).map(drop)
    }
}

/// Sends resize and signal frames alongside a running exec.
pub struct ControlWriter {
    w: UnixStream,
}

impl ControlWriter {
    /// Tells the guest pty its new size.
    pub fn resize(&mut self, size: TtySize) -> io::Result<()> {
        write_json(&mut self.w, FrameKind::Resize, &size)
    }
    /// Delivers a signal to the running command.
    pub fn signal(&mut self, signal: i32) -> io::Result<()> {
        write_json(&mut self.w, FrameKind::Signal, &smolvm_proto::SignalRequest { signal })
    }
}
