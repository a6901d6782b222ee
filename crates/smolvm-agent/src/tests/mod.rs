//! Session tests: a host side drives a real session over a Unix socket
//! pair, with real processes and files on this machine.

mod exec_tests;
mod file_tests;
mod session_tests;
mod tty_tests;

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use smolvm_proto::{
    hello_payload, parse_hello, read_frame, write_frame, write_json, ExecRequest, Frame, FrameKind, Request, Response,
    NONCE_LEN, PROTOCOL_VERSION,
};

use crate::server::AgentConfig;
use crate::session::run_session;

/// The host end of a session under test.
pub struct Host {
    pub stream: UnixStream,
    agent: Option<JoinHandle<io::Result<()>>>,
}

impl Host {
    /// Starts a session without handshaking.
    pub fn start() -> Host {
        let (host, agent) = UnixStream::pair().expect("socketpair");
        host.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let handle = thread::spawn(move || run_session(agent, &AgentConfig::default()));
        Host {
            stream: host,
            agent: Some(handle),
        }
    }

    /// Starts a session and completes the handshake.
    pub fn connect() -> Host {
        let mut host = Host::start();
        host.handshake();
        host
    }

    /// Sends a Hello and expects the matching HelloAck as the next frame.
    pub fn handshake(&mut self) {
        let nonce = self.send_hello(PROTOCOL_VERSION);
        let ack = self.recv().expect("HelloAck");
        assert_eq!(ack.kind, FrameKind::HelloAck);
        assert_eq!(parse_hello(&ack.payload), Some((nonce, PROTOCOL_VERSION)));
    }

    /// Sends a Hello with a fresh nonce; returns the nonce.
    pub fn send_hello(&mut self, version: u32) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        let mut rng = Rng::new();
        nonce.iter_mut().for_each(|b| *b = rng.next() as u8);
        self.send(FrameKind::Hello, &hello_payload(&nonce, version));
        nonce
    }

    pub fn send(&mut self, kind: FrameKind, payload: &[u8]) {
        write_frame(&mut self.stream, kind, payload).expect("send frame");
    }

    pub fn send_json<T: Serialize>(&mut self, kind: FrameKind, value: &T) {
        write_json(&mut self.stream, kind, value).expect("send json frame");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send bytes");
    }

    pub fn request(&mut self, request: &Request) {
        self.send_json(FrameKind::Request, request);
    }

    /// The next frame; `None` when the agent closed the stream.
    pub fn recv(&mut self) -> Option<Frame> {
        read_frame(&mut self.stream).expect("read frame (timed out?)")
    }

    /// The next frame, which must be a Response.
    pub fn response(&mut self) -> Response {
        let frame = self.recv().expect("a Response, got end of stream");
        assert_eq!(
            frame.kind,
            FrameKind::Response,
            "payload: {:?}",
            String::from_utf8_lossy(&frame.payload)
        );
        serde_json::from_slice(&frame.payload).expect("Response JSON")
    }

    pub fn call(&mut self, request: &Request) -> Response {
        self.request(request);
        self.response()
    }

    /// Runs a command to its end, collecting its output.
    pub fn exec(&mut self, req: ExecRequest) -> ExecOutput {
        self.request(&Request::Exec(req));
        self.collect_exec()
    }

    /// Collects Stdout/Stderr frames until the Response.
    pub fn collect_exec(&mut self) -> ExecOutput {
        let mut out = ExecOutput::default();
        loop {
            let frame = self.recv().expect("exec frames");
            match frame.kind {
                FrameKind::Stdout => {
                    out.largest_chunk = out.largest_chunk.max(frame.payload.len());
                    out.stdout.extend_from_slice(&frame.payload);
                }
                FrameKind::Stderr => out.stderr.extend_from_slice(&frame.payload),
                FrameKind::Response => {
                    out.response = Some(serde_json::from_slice(&frame.payload).expect("Response JSON"));
                    return out;
                }
                other => panic!("unexpected frame {other:?} during exec"),
            }
        }
    }

    /// Reads Stdout until it contains a full line; returns the text so far.
    pub fn read_stdout_line(&mut self) -> String {
        let mut text = Vec::new();
        while !text.contains(&b'\n') {
            let frame = self.recv().expect("stdout");
            assert_eq!(
                frame.kind,
                FrameKind::Stdout,
                "{:?}",
                String::from_utf8_lossy(&frame.payload)
            );
            text.extend_from_slice(&frame.payload);
        }
        String::from_utf8(text).expect("utf-8")
    }

    /// Closes the host end and waits for the session to finish.
    pub fn finish(mut self) -> io::Result<()> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.agent
            .take()
            .expect("joined once")
            .join()
            .expect("session thread panicked")
    }

    /// Waits for the session to end on its own (the agent closed it).
    pub fn join(mut self) -> io::Result<()> {
        self.agent
            .take()
            .expect("joined once")
            .join()
            .expect("session thread panicked")
    }
}

/// What an Exec produced.
#[derive(Default, Debug)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub largest_chunk: usize,
    pub response: Option<Response>,
}

impl ExecOutput {
    /// (exit_code, timed_out, signal) of an Exited response.
    pub fn exited(&self) -> (i32, bool, Option<i32>) {
        match &self.response {
            Some(Response::Exited {
                exit_code,
                timed_out,
                signal,
            }) => (*exit_code, *timed_out, *signal),
            other => panic!(
                "expected Exited, got {other:?}; stderr {:?}",
                String::from_utf8_lossy(&self.stderr)
            ),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// An ExecRequest running `argv` directly.
pub fn cmd(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        shell: false,
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        tty: None,
        stdin: false,
    }
}

/// An ExecRequest running `script` with `/bin/sh -c`.
pub fn shell(script: &str) -> ExecRequest {
    ExecRequest {
        shell: true,
        ..cmd(&[script])
    }
}

/// Asserts a Response is an Error with `code`.
pub fn assert_error(response: &Response, code: &str) {
    match response {
        Response::Error { code: got, .. } => assert_eq!(got, code, "{response:?}"),
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// Whether process `pid` is gone or a zombie (dead but not yet reaped by
/// whoever inherited it), waiting up to `limit` for that to happen.
pub fn wait_until_dead(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let dead = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => crate::procs::parse_stat(&stat).map_or(true, |p| p.state == 'Z' || p.state == 'X'),
        };
        if dead || Instant::now() >= deadline {
            return dead;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Small deterministic PRNG (xorshift64*) for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(time ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A fresh directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "smolvm-agent-test-{tag}-{}-{}",
            std::process::id(),
            Rng::new().next()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn entries(&self) -> Vec<String> {
        list_dir(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
