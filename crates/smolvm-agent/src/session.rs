//! One session on one stream (the protocol crate's module doc has the
//! host's view).
//!
//! 1. Frames before the first Hello are discarded; garbage that breaks the
//!    framing before it is skipped byte by byte until a Hello header.
//! 2. A Hello with another protocol version gets `unsupported_version` and
//!    ends the session; otherwise HelloAck echoes the nonce.
//! 3. Requests run one after another. Exec runs in the background (its
//!    waiter thread sends `Exited`) so this loop keeps reading the Stdin,
//!    Resize and Signal frames meant for it. A Request or Hello that
//!    arrives while a command still runs kills that command first, so its
//!    Exited is on the wire before anything else is answered.
//! 4. A Request whose JSON does not parse gets `bad_request` (the stream is
//!    still in sync); a broken frame after the handshake ends the session.
//!    Stray Data/Stdin/Resize/Signal frames (late ones, or the rest of a
//!    refused upload) are ignored.
//! 5. When the stream ends, every process the session started is killed.

use std::io::{self, BufRead, BufReader, Read};

use smolvm_proto::{hello_payload, parse_hello, read_frame, Frame, FrameKind, Request, NONCE_LEN, PROTOCOL_VERSION};

use crate::exec::{self, RunningExec};
use crate::files::{self, UploadEnd};
use crate::procs::SessionProcesses;
use crate::server::AgentConfig;
use crate::sink::FrameSink;
use crate::system::{self, freeze, identity};
use crate::transport::Transport;

/// Read buffer for incoming frames.
const READ_BUFFER: usize = 64 * 1024;

/// Serves one session until the host goes away or the stream breaks.
pub fn run_session<T: Transport>(stream: T, config: &AgentConfig) -> io::Result<()> {
    let writer = stream.try_clone()?;
    let closer = stream.try_clone()?;
    let mut session = Session {
        reader: BufReader::with_capacity(READ_BUFFER, stream),
        sink: FrameSink::new(writer),
        config,
        processes: SessionProcesses::default(),
        exec: None,
        pending: None,
        greeted: false,
    };
    let result = session.serve();
    session.processes.kill_all();
    // Unblock output threads stuck writing to a host that stopped reading.
    closer.shut_down();
    session.finish_exec();
    result
}

/// Whether the session goes on after a frame.
enum Flow {
    Continue,
    End,
}

struct Session<'a, T: Transport> {
    reader: BufReader<T>,
    sink: FrameSink,
    config: &'a AgentConfig,
    processes: SessionProcesses,
    /// The command of the current Exec request, until it is joined.
    exec: Option<RunningExec>,
    /// A frame read by a request handler that the loop must handle next.
    pending: Option<Frame>,
    greeted: bool,
}

impl<T: Transport> Session<'_, T> {
    fn serve(&mut self) -> io::Result<()> {
        loop {
            let Some(frame) = self.next_frame()? else { return Ok(()) };
            let flow = match frame.kind {
                FrameKind::Hello => self.hello(&frame.payload)?,
                _ if !self.greeted => Flow::Continue,
                FrameKind::Request => self.request(&frame.payload)?,
                FrameKind::Stdin | FrameKind::StdinEof | FrameKind::Resize | FrameKind::Signal => {
                    if let Some(exec) = self.exec.as_mut() {
                        exec.control_frame(frame);
                    }
                    Flow::Continue
                }
                _ => Flow::Continue,
            };
            if let Flow::End = flow {
                return Ok(());
            }
        }
    }

    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.pending.take() {
            return Ok(Some(frame));
        }
        match read_frame(&mut self.reader) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData && !self.greeted => {
                crate::diag!("skipping garbage before the handshake ({e})");
                scan_for_hello(&mut self.reader)
            }
            other => other,
        }
    }

    fn hello(&mut self, payload: &[u8]) -> io::Result<Flow> {
        let Some((nonce, version)) = parse_hello(payload) else {
            self.sink.error("bad_request", "malformed Hello payload")?;
            return Ok(Flow::Continue);
        };
        // A Hello starts a new session on this stream.
        self.finish_exec();
        self.processes.kill_all();
        self.greeted = false;
        if version != PROTOCOL_VERSION {
            self.sink.error(
                "unsupported_version",
                format!("agent speaks protocol {PROTOCOL_VERSION}, host sent {version}"),
            )?;
            return Ok(Flow::End);
        }
        self.sink
            .frame(FrameKind::HelloAck, &hello_payload(&nonce, PROTOCOL_VERSION))?;
        self.greeted = true;
        Ok(Flow::Continue)
    }

    fn request(&mut self, payload: &[u8]) -> io::Result<Flow> {
        self.finish_exec();
        let request: Request = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                self.sink.error("bad_request", format!("invalid request: {e}"))?;
                return Ok(Flow::Continue);
            }
        };
        let response = match request {
            Request::Exec(req) => {
                self.processes.prune();
                match exec::start(req, self.sink.clone()) {
                    Ok(running) => {
                        self.processes.add(running.pid());
                        self.exec = Some(running);
                        return Ok(Flow::Continue);
                    }
                    Err(response) => response,
                }
            }
            Request::Upload {
                path,
                mode,
                create_dirs,
            } => {
                let reader = &mut self.reader;
                let mut next = || read_frame(reader);
                return Ok(match files::upload(&mut next, &self.sink, &path, mode, create_dirs)? {
                    UploadEnd::Done => Flow::Continue,
                    UploadEnd::Interrupted(frame) => {
                        self.pending = Some(frame);
                        Flow::Continue
                    }
                    UploadEnd::StreamEnded => Flow::End,
                });
            }
            Request::Download { path } => {
                files::download(&self.sink, &path)?;
                return Ok(Flow::Continue);
            }
            Request::Shutdown => {
                system::shutdown(&self.sink, self.config)?;
                return Ok(Flow::Continue);
            }
            Request::Health => system::health(),
            Request::Sync {
                freeze,
                freeze_timeout_ms,
            } => freeze::sync(freeze, freeze_timeout_ms),
            Request::Thaw => freeze::thaw_request(),
            Request::SetClock { unix_secs, nanos } => system::set_clock(unix_secs, nanos),
            Request::AddEntropy { hex } => system::add_entropy(&hex),
            Request::SetIdentity { hostname, machine_id } => identity::set_identity(&hostname, &machine_id),
        };
        self.sink.respond(&response)?;
        Ok(Flow::Continue)
    }

    /// Waits for the current command's Exited to be sent, killing the
    /// command first if it has not ended on its own.
    fn finish_exec(&mut self) {
        if let Some(exec) = self.exec.take() {
            if !exec.reported() {
                exec.kill();
            }
            exec.join();
        }
    }
}

/// Finds the next Hello header in a stream whose framing was lost, then
/// reads that Hello. `None` at end of stream.
fn scan_for_hello(reader: &mut BufReader<impl Read>) -> io::Result<Option<Frame>> {
    const PAYLOAD: usize = NONCE_LEN + 4;
    let header = [FrameKind::Hello as u8, 0, 0, 0, PAYLOAD as u8];
    let mut window = [0u8; 5];
    let mut seen = 0usize;
    loop {
        let byte = match reader.fill_buf() {
            Ok([]) => return Ok(None),
            Ok(buf) => buf[0],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        reader.consume(1);
        window.rotate_left(1);
        window[4] = byte;
        seen += 1;
        if seen >= window.len() && window == header {
            let mut payload = vec![0u8; PAYLOAD];
            reader.read_exact(&mut payload)?;
            return Ok(Some(Frame {
                kind: FrameKind::Hello,
                payload,
            }));
        }
    }
}
