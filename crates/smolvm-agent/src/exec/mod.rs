//! Commands for Exec requests.
//!
//! Each command runs in its own Unix session (setsid), optionally under a
//! new pty. Threads per command: an output pump (Stdout/Stderr frames), a
//! stdin feeder when input is wanted, a timeout watcher when a limit is
//! set, and a waiter that sends `Exited` once the command is gone and its
//! output drained. The session's request loop keeps reading frames
//! meanwhile and forwards Stdin/Resize/Signal through [`RunningExec`].

mod control;
mod pty;
mod pump;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use smolvm_proto::{ExecRequest, Frame, FrameKind, Response, SignalRequest, TtySize};

use self::control::ExecControl;
use self::pump::OutputSource;
use crate::sink::{error, io_error, FrameSink};
use crate::sys;

/// Largest signal number a host may send (SIGRTMAX on Linux).
const MAX_SIGNAL: i32 = 64;
/// How long stdin may stay backed up before it is closed.
const STDIN_STALL_LIMIT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 30 });
const STDIN_RETRY: Duration = Duration::from_millis(5);
/// End-of-transmission (Ctrl-D): how StdinEof reaches a program on a pty,
/// whose input cannot be closed without hanging the terminal up.
const EOT: u8 = 0x04;

/// A started command, owned by the session that started it.
pub struct RunningExec {
    pid: libc::pid_t,
    control: Arc<ExecControl>,
    stdin: Option<SyncSender<Vec<u8>>>,
    /// Master side of the command's pty, for Resize.
    pty_master: Option<OwnedFd>,
    waiter: Option<JoinHandle<()>>,
}

impl RunningExec {
    /// Pid (= process group and session id) of the command.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Whether the command's Exited response was sent.
    pub fn reported(&self) -> bool {
        self.control.reported()
    }

    /// SIGKILLs the command's process group.
    pub fn kill(&self) {
        self.control.signal(libc::SIGKILL);
    }

    /// Waits until the waiter has sent the final response.
    pub fn join(mut self) {
        self.stdin = None;
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
    }

    /// Applies a Stdin, StdinEof, Resize or Signal frame from the host.
    /// Bad payloads are logged and dropped: answering them would put a
    /// Response in the middle of this command's output.
    pub fn control_frame(&mut self, frame: Frame) {
        match frame.kind {
            FrameKind::Stdin if !frame.payload.is_empty() => self.feed(frame.payload),
            FrameKind::StdinEof if self.pty_master.is_some() => self.feed(vec![EOT]),
            FrameKind::StdinEof => self.stdin = None,
            FrameKind::Resize => match (serde_json::from_slice::<TtySize>(&frame.payload), &self.pty_master) {
                (Ok(size), Some(master)) => {
                    if let Err(e) = pty::set_size(master, size) {
                        crate::diag!("resize failed: {e}");
                    }
                }
                (Ok(_), None) => {}
                (Err(e), _) => crate::diag!("ignoring a malformed Resize frame: {e}"),
            },
            FrameKind::Signal => match serde_json::from_slice::<SignalRequest>(&frame.payload) {
                Ok(SignalRequest { signal }) if (1..=MAX_SIGNAL).contains(&signal) => self.control.signal(signal),
                Ok(SignalRequest { signal }) => crate::diag!("ignoring signal {signal}: out of range"),
                Err(e) => crate::diag!("ignoring a malformed Signal frame: {e}"),
            },
            _ => {}
        }
    }

    /// Queues stdin for the feeder thread. A full queue holds the request
    /// loop back (flow control), but not forever: a command that reads
    /// nothing for [`STDIN_STALL_LIMIT`] gets its stdin closed, so the loop
    /// can again notice the host leaving and clean up.
    fn feed(&mut self, mut chunk: Vec<u8>) {
        let Some(tx) = &self.stdin else { return };
        let blocked_since = Instant::now();
        loop {
            match tx.try_send(chunk) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(_)) => break,
                Err(TrySendError::Full(back)) => {
                    if blocked_since.elapsed() >= STDIN_STALL_LIMIT {
                        crate::diag!("command {} stopped reading stdin; closing it", self.pid);
                        self.control.abandon_stdin();
                        break;
                    }
                    chunk = back;
                    thread::sleep(STDIN_RETRY);
                }
            }
        }
        self.stdin = None;
    }
}

/// Starts the command. `Err` is the Response that ends the request at once
/// (bad request, spawn failure).
pub fn start(req: ExecRequest, sink: FrameSink) -> Result<RunningExec, Response> {
    let mut cmd = build_command(&req)?;
    let pty = match req.tty {
        Some(size) => Some(pty::open(size).map_err(|e| io_error("cannot open a pty", &e))?),
        None => None,
    };
    match &pty {
        Some(p) => {
            let stdio = || {
                p.slave
                    .try_clone()
                    .map(Stdio::from)
                    .map_err(|e| io_error("cannot set up the pty", &e))
            };
            cmd.stdin(stdio()?).stdout(stdio()?).stderr(stdio()?);
        }
        None => {
            cmd.stdin(if req.stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let with_tty = pty.is_some();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls (setsid, ioctl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if with_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = if req.shell { "/bin/sh" } else { req.argv[0].as_str() };
    let child = cmd
        .spawn()
        .map_err(|e| error("spawn_failed", format!("cannot run `{program}`: {e}")))?;
    // The Command holds our copies of the child's pty descriptors.
    drop(cmd);
    let pid = child.id() as libc::pid_t;
    let control = ExecControl::new(pid);
    wire_up(child, pty, &control, req.timeout_ms, sink).map_err(|e| {
        abandon(pid, &control);
        io_error("cannot start the command's helper threads", &e)
    })
}

/// Connects a spawned command to the session: output pump, stdin feeder,
/// timeout watcher and the waiter that sends Exited.
fn wire_up(
    mut child: Child,
    pty: Option<pty::Pty>,
    control: &Arc<ExecControl>,
    timeout_ms: Option<u64>,
    sink: FrameSink,
) -> io::Result<RunningExec> {
    let pid = child.id() as libc::pid_t;
    let mut sources = Vec::new();
    let (stdin_fd, pty_master, pty_slave) = match pty {
        Some(p) => {
            sources.push(OutputSource {
                fd: p.master.try_clone()?,
                kind: FrameKind::Stdout,
            });
            // The slave stays open until output is drained: while a slave is
            // open, the master never reports EIO and loses buffered output.
            (Some(p.master.try_clone()?), Some(p.master), Some(p.slave))
        }
        None => {
            if let Some(out) = child.stdout.take() {
                sources.push(OutputSource {
                    fd: out.into(),
                    kind: FrameKind::Stdout,
                });
            }
            if let Some(err) = child.stderr.take() {
                sources.push(OutputSource {
                    fd: err.into(),
                    kind: FrameKind::Stderr,
                });
            }
            (child.stdin.take().map(OwnedFd::from), None, None)
        }
    };
    for source in &sources {
        sys::set_nonblocking(source.fd.as_raw_fd(), true)?;
    }
    let stdin = match stdin_fd {
        Some(fd) => {
            sys::set_nonblocking(fd.as_raw_fd(), true)?;
            Some(pump::spawn_stdin_feeder(fd, control.clone())?)
        }
        None => None,
    };
    let (notice_rx, notice_tx) = sys::pipe()?;
    let pump_sink = sink.clone();
    let pump = thread::Builder::new()
        .name("exec-output".into())
        .spawn(move || pump::pump_output(sources, notice_rx, &pump_sink))?;
    if let Some(ms) = timeout_ms {
        let control = control.clone();
        thread::Builder::new()
            .name("exec-timeout".into())
            .spawn(move || control.enforce_timeout(Duration::from_millis(ms)))?;
    }
    let waiter_control = control.clone();
    let waiter = thread::Builder::new().name("exec-wait".into()).spawn(move || {
        wait_for_exit(pid);
        waiter_control.mark_exited();
        drop(notice_tx);
        let _ = pump.join();
        drop(pty_slave);
        let response = exit_response(child.wait(), waiter_control.timed_out());
        waiter_control.mark_reported();
        let _ = sink.respond(&response);
    })?;
    Ok(RunningExec {
        pid,
        control: control.clone(),
        stdin,
        pty_master,
        waiter: Some(waiter),
    })
}

/// Cleans up after a command whose helper threads could not start.
fn abandon(pid: libc::pid_t, control: &ExecControl) {
    sys::kill_group(pid, libc::SIGKILL);
    control.mark_exited();
    // SAFETY: waitpid with a null status pointer is allowed.
    let _ = sys::cvt_retry(|| unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) });
}

/// Blocks until `pid` has exited without reaping it, so its pid (and
/// process group id) stays reserved until the waiter calls wait().
fn wait_for_exit(pid: libc::pid_t) {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t for waitid to fill.
    let _ = sys::cvt_retry(|| unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
    });
}

/// The final response for a command that ended with `status`.
fn exit_response(status: io::Result<ExitStatus>, timed_out: bool) -> Response {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => Response::Exited {
                exit_code: code,
                timed_out,
                signal: None,
            },
            (None, Some(signal)) => Response::Exited {
                exit_code: 128 + signal,
                timed_out,
                signal: Some(signal),
            },
            (None, None) => error("io", format!("unrecognised exit status {status:?}")),
        },
        Err(e) => io_error("cannot collect the exit status", &e),
    }
}

/// Validates the request and prepares the Command (program, arguments,
/// working directory, environment).
fn build_command(req: &ExecRequest) -> Result<Command, Response> {
    if req.argv.is_empty() || req.argv[0].is_empty() {
        return Err(error("bad_request", "argv is empty"));
    }
    if req.argv.iter().any(|a| a.contains('\0')) {
        return Err(error("bad_request", "argv contains a NUL byte"));
    }
    check_env(&req.env)?;
    let cwd = match &req.cwd {
        Some(dir) if dir.contains('\0') => return Err(error("bad_request", "cwd contains a NUL byte")),
        Some(dir) => dir.clone(),
        None if Path::new("/root").is_dir() => "/root".to_string(),
        None => "/".to_string(),
    };
    if !Path::new(&cwd).is_dir() {
        return Err(error("spawn_failed", format!("working directory {cwd} does not exist")));
    }
    let mut cmd = if req.shell {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c").arg(req.argv.join(" "));
        sh
    } else {
        let mut direct = Command::new(&req.argv[0]);
        direct.args(&req.argv[1..]);
        direct
    };
    cmd.current_dir(cwd).envs(&req.env);
    Ok(cmd)
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), Response> {
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(error("bad_request", format!("invalid environment variable {key:?}")));
        }
    }
    Ok(())
}
