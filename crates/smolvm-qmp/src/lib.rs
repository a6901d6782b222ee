//! A small synchronous client for QMP, the QEMU Machine Protocol.
//!
//! The protocol, as this client drives it:
//! 1. QEMU sends a greeting object `{"QMP": {...}}` when a client connects.
//! 2. The client sends `{"execute": "qmp_capabilities"}` to leave
//!    negotiation mode and waits for `{"return": {}}`.
//! 3. Each command is one JSON object; QEMU answers with exactly one
//!    `{"return": ...}` or `{"error": {"class", "desc"}}`. Asynchronous
//!    `{"event": ...}` objects may arrive at any time in between; they are
//!    kept in a queue for [`Qmp::wait_event`].
//!
//! Every read is bounded by a timeout and every line by a size cap, so a
//! hung or hostile peer costs a bounded wait, never a hang or an unbounded
//! allocation.

#![deny(missing_docs)]

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest line accepted from QEMU (QMP answers here are small; 4 MiB
/// leaves room for large `query-*` results).
const MAX_LINE: usize = 4 << 20;

/// Errors from a QMP exchange.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Connecting to or talking over the socket failed.
    #[error("QMP I/O failed")]
    Io(#[from] io::Error),
    /// QEMU closed the connection.
    #[error("QMP socket closed unexpectedly")]
    Closed,
    /// No answer arrived in time.
    #[error("QMP timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
    },
    /// The peer did not speak QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// QEMU answered a command with an error.
    #[error("QMP command '{command}' failed: {desc}")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A block job or migration ended in failure.
    #[error("QEMU job '{job}' failed: {reason}")]
    JobFailed {
        /// Job or operation name.
        job: String,
        /// QEMU's error text.
        reason: String,
    },
}

/// Applies a read timeout to a stream (UnixStream::set_read_timeout).
type SetTimeout<S> = Box<dyn Fn(&S, Option<Duration>) -> io::Result<()> + Send>;

/// A QMP connection.
pub struct Qmp<S: Read + Write> {
    reader: BufReader<S>,
    events: VecDeque<Value>,
    timeout: Duration,
    set_timeout: SetTimeout<S>,
}

impl Qmp<UnixStream> {
    /// Connects to QEMU's QMP unix socket, retrying until `connect_timeout`
    /// passes (QEMU creates the socket shortly after it starts), then
    /// negotiates capabilities. `timeout` bounds each later answer.
    pub fn connect(path: &Path, connect_timeout: Duration, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(QmpError::Io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Self::handshake(stream, timeout, |s, t| s.set_read_timeout(t))
    }
}

impl<S: Read + Write> Qmp<S> {
    /// Runs the greeting and capability negotiation over any stream.
    /// `set_timeout` applies a read timeout to the stream (tests pass a no-op).
    pub fn handshake(
        stream: S,
        timeout: Duration,
        set_timeout: impl Fn(&S, Option<Duration>) -> io::Result<()> + Send + 'static,
    ) -> Result<Self, QmpError> {
        set_timeout(&stream, Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            events: VecDeque::new(),
            timeout,
            set_timeout: Box::new(set_timeout),
        };
        let greeting = qmp.read_message("the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("invalid greeting: {}", truncate(&greeting))));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Sends a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg).map_err(io::Error::other)?;
        line.push(b'\n');
        self.reader.get_mut().write_all(&line)?;
        self.reader.get_mut().flush()?;
        loop {
            let reply = self.read_message(&format!("the answer to '{command}'"))?;
            if reply.get("event").is_some() {
                self.events.push_back(reply);
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err.get("class").and_then(Value::as_str).unwrap_or("").to_string(),
                    desc: err.get("desc").and_then(Value::as_str).unwrap_or("").to_string(),
                });
            }
            return Err(QmpError::Protocol(format!("unexpected message: {}", truncate(&reply))));
        }
    }

    /// Waits for an event named `name` (events already queued count).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        if let Some(pos) = self.events.iter().position(|e| e["event"] == name) {
            return Ok(self.events.remove(pos).unwrap_or_default());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout { what: format!("event {name}") });
            }
            (self.set_timeout)(self.reader.get_ref(), Some(left))?;
            let msg = self.read_message(&format!("event {name}"));
            (self.set_timeout)(self.reader.get_ref(), Some(self.timeout))?;
            let msg = msg?;
            if msg["event"] == name {
                return Ok(msg);
            }
            if msg.get("event").is_some() {
                self.events.push_back(msg);
            }
        }
    }

    /// Polls `query-migrate` until the migration completes or fails.
    /// Returns the final status object.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value, QmpError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let info = self.execute("query-migrate", None)?;
            match info.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => return Ok(info),
                "failed" | "cancelled" => {
                    let reason = info.get("error-desc").and_then(Value::as_str).unwrap_or("unknown error");
                    return Err(QmpError::JobFailed { job: "migrate".into(), reason: reason.into() });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout { what: "the migration to finish".into() });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    /// Polls `query-jobs` until job `id` concludes, dismisses it, and
    /// surfaces the job's own error text when it failed.
    pub fn wait_job(&mut self, id: &str, timeout: Duration) -> Result<(), QmpError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            let jobs = self.execute("query-jobs", None)?;
            let job = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["id"] == id))
                .cloned()
                .ok_or_else(|| QmpError::Protocol(format!("job {id} is not known to QEMU")))?;
            if job["status"] == "concluded" {
                let _ = self.execute("job-dismiss", Some(json!({ "id": id })));
                if let Some(err) = job.get("error").and_then(Value::as_str) {
                    return Err(QmpError::JobFailed { job: id.into(), reason: err.into() });
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout { what: format!("job {id} (last status {})", job["status"]) });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut self.reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
            match n {
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if line.len() > MAX_LINE => {
                    return Err(QmpError::Protocol(format!("a line longer than {MAX_LINE} bytes")))
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(QmpError::Timeout { what: what.to_string() })
                }
                Err(e) => return Err(QmpError::Io(e)),
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&line)
                .map_err(|e| QmpError::Protocol(format!("not JSON ({e}): {}", String::from_utf8_lossy(&line[..line.len().min(200)]))));
        }
    }
}

fn truncate(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}...", &s[..s.floor_char_boundary_compat(200)])
    } else {
        s
    }
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::thread;

    /// A scripted QMP peer on the other end of a socket pair: for each
    /// command it reads, it writes the lines `script` gives for it.
    fn peer(script: impl Fn(&Value) -> Vec<String> + Send + 'static, greeting: &str) -> UnixStream {
        let (a, b) = UnixStream::pair().unwrap();
        let greeting = greeting.to_string();
        thread::spawn(move || {
            let mut w = b.try_clone().unwrap();
            writeln!(w, "{greeting}").unwrap();
            for line in BufReader::new(b).lines() {
                let Ok(line) = line else { return };
                let cmd: Value = serde_json::from_str(&line).unwrap();
                for out in script(&cmd) {
                    if writeln!(w, "{out}").is_err() {
                        return;
                    }
                }
            }
        });
        a
    }

    fn open(s: UnixStream) -> Result<Qmp<UnixStream>, QmpError> {
        Qmp::handshake(s, Duration::from_millis(500), |s, t| s.set_read_timeout(t))
    }

    #[test]
    fn commands_skip_events_and_report_errors() {
        let s = peer(
            |cmd| match cmd["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![r#"{"return": {}}"#.into()],
                "stop" => vec![r#"{"event": "STOP", "data": {}}"#.into(), r#"{"return": {}}"#.into()],
                _ => vec![r#"{"error": {"class": "GenericError", "desc": "nope"}}"#.into()],
            },
            r#"{"QMP": {"version": {}}}"#,
        );
        let mut q = open(s).unwrap();
        assert_eq!(q.execute("stop", None).unwrap(), json!({}));
        let err = q.execute("frob", None).unwrap_err();
        assert_eq!(err.to_string(), "QMP command 'frob' failed: nope");
        // The STOP event seen while waiting for `stop` is still delivered.
        assert_eq!(q.wait_event("STOP", Duration::from_millis(10)).unwrap()["event"], "STOP");
    }

    #[test]
    fn bad_greeting_garbage_and_silence_are_errors_not_hangs() {
        let s = peer(|_| vec![], r#"{"hello": 1}"#);
        assert!(matches!(open(s), Err(QmpError::Protocol(_))));

        let s = peer(|_| vec!["this is not json".into()], r#"{"QMP": {}}"#);
        assert!(matches!(open(s), Err(QmpError::Protocol(_))));

        let s = peer(|_| vec![], r#"{"QMP": {}}"#);
        let start = Instant::now();
        assert!(matches!(open(s), Err(QmpError::Timeout { .. })));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn oversized_lines_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            let mut b = b;
            let big = vec![b'x'; MAX_LINE + 10];
            let _ = b.write_all(&big);
        });
        assert!(matches!(open(a), Err(QmpError::Protocol(_))));
    }

    #[test]
    fn job_failure_surfaces_the_jobs_own_error() {
        let s = peer(
            |cmd| match cmd["execute"].as_str().unwrap() {
                "query-jobs" => vec![
                    r#"{"return": [{"id": "j1", "status": "concluded", "error": "Device has no snapshot"}]}"#.into(),
                ],
                _ => vec![r#"{"return": {}}"#.into()],
            },
            r#"{"QMP": {}}"#,
        );
        let mut q = open(s).unwrap();
        let err = q.wait_job("j1", Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.to_string(), "QEMU job 'j1' failed: Device has no snapshot");
    }
}
