//! Moving bytes between a command and the host: output is streamed as it
//! comes (never buffered whole), stdin is fed from a bounded queue.
//!
//! All command-side descriptors here are non-blocking and waited on with
//! poll(), so no thread can hang on a pipe that a background process of the
//! command keeps open after the command itself has exited.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use smolvm_proto::FrameKind;

use super::control::ExecControl;
use crate::sink::FrameSink;
use crate::sys;

/// Largest Stdout/Stderr frame payload.
pub const OUTPUT_CHUNK: usize = 64 * 1024;
/// After the command exits, output still arriving (from a pty's buffer or
/// a background child) is forwarded until the streams are quiet this long…
const QUIET_AFTER_EXIT: Duration = Duration::from_millis(20);
/// …but never for longer than this.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Stdin chunks queued before the request loop waits for the command.
const STDIN_QUEUE: usize = 16;
/// How often a blocked stdin write re-checks whether the command exited.
const STDIN_RECHECK: Duration = Duration::from_millis(100);

/// One output stream of a command and the frame kind it becomes.
pub struct OutputSource {
    pub fd: OwnedFd,
    pub kind: FrameKind,
}

/// Forwards the sources as frames until they end, or until the command has
/// exited (`exit_notice` becomes readable or hangs up) and output has gone
/// quiet. Returns early if the host can no longer be written to.
pub fn pump_output(mut sources: Vec<OutputSource>, exit_notice: OwnedFd, sink: &FrameSink) {
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    let mut notice = Some(exit_notice);
    let mut exited_at: Option<Instant> = None;
    loop {
        if let Some(at) = exited_at {
            if sources.is_empty() || at.elapsed() >= DRAIN_LIMIT {
                return;
            }
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|s| sys::pollfd(s.fd.as_raw_fd(), libc::POLLIN))
            .collect();
        if let Some(n) = &notice {
            fds.push(sys::pollfd(n.as_raw_fd(), libc::POLLIN));
        }
        let timeout = exited_at.map(|_| QUIET_AFTER_EXIT);
        let ready = match sys::poll(&mut fds, timeout) {
            Ok(n) => n,
            Err(e) => {
                crate::diag!("poll on command output failed: {e}");
                return;
            }
        };
        if exited_at.is_some() && ready == 0 {
            return;
        }
        if notice.is_some() && fds[sources.len()].revents != 0 {
            notice = None;
            exited_at = Some(Instant::now());
        }
        let mut finished = Vec::new();
        for (index, source) in sources.iter().enumerate() {
            if fds[index].revents == 0 {
                continue;
            }
            match sys::read(&source.fd, &mut buf) {
                Ok(0) => finished.push(index),
                Ok(n) => {
                    if sink.frame(source.kind, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                // EIO is how a pty master reports that the slave is gone.
                Err(_) => finished.push(index),
            }
        }
        for index in finished.into_iter().rev() {
            sources.remove(index);
        }
    }
}

/// Starts a thread that writes queued stdin chunks to `fd` and closes it
/// when the returned sender is dropped. Once a write fails, the command has
/// exited or its stdin was abandoned, further chunks are discarded so the
/// sender never blocks for long.
pub fn spawn_stdin_feeder(fd: OwnedFd, control: Arc<ExecControl>) -> io::Result<SyncSender<Vec<u8>>> {
    let (tx, rx) = sync_channel::<Vec<u8>>(STDIN_QUEUE);
    thread::Builder::new().name("exec-stdin".into()).spawn(move || {
        let mut broken = false;
        for chunk in rx {
            if !broken && write_all(&fd, &chunk, &control).is_err() {
                broken = true;
            }
        }
    })?;
    Ok(tx)
}

fn write_all(fd: &OwnedFd, mut data: &[u8], control: &ExecControl) -> io::Result<()> {
    while !data.is_empty() {
        match sys::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if control.stdin_over() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                sys::poll_one(fd.as_raw_fd(), libc::POLLOUT, Some(STDIN_RECHECK))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
