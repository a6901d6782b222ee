//! Byte streams the host reaches the agent through, and the listeners that
//! turn them into sessions: virtio-serial ports (QEMU) and AF_VSOCK
//! connections (Firecracker, or QEMU with vhost-vsock).

pub mod virtio;
pub mod vsock;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::server::AgentConfig;
use crate::sys;

/// A session stream: readable and writable from different threads through
/// clones, and forcibly closable so no thread stays blocked on a host that
/// went away.
pub trait Transport: Read + Write + Send + Sized + 'static {
    /// Another handle on the same stream (a dup'd descriptor).
    fn try_clone(&self) -> io::Result<Self>;
    /// Makes blocked and future reads and writes on every clone return.
    fn shut_down(&self);
}

impl Transport for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shut_down(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

/// A connected socket that is not a Unix socket (AF_VSOCK). Plain
/// read/write work on it through `File`; shutdown(2) unblocks it.
pub struct SocketStream(File);

impl SocketStream {
    /// Takes ownership of a connected socket.
    pub fn new(socket: std::os::fd::OwnedFd) -> Self {
        SocketStream(File::from(socket))
    }
}

impl Read for SocketStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SocketStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for SocketStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(SocketStream(self.0.try_clone()?))
    }
    fn shut_down(&self) {
        // SAFETY: shutdown(2) on our own open socket descriptor.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// How long a blocked port read or write sleeps before re-checking whether
/// the session was shut down.
const PORT_RECHECK: Duration = Duration::from_millis(200);

/// An open virtio-serial port. The port is opened O_NONBLOCK because a
/// blocking write on a port whose host side is disconnected would wait
/// until some host connects (and then hand it a stale session's frames);
/// reads and writes here wait with poll() instead and give up on hang-up.
pub struct PortStream {
    file: File,
    closed: Arc<AtomicBool>,
}

impl PortStream {
    /// Wraps a port opened with O_NONBLOCK.
    pub fn new(file: File) -> Self {
        PortStream {
            file,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Read for PortStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.is_closed() {
                return Ok(0);
            }
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sys::poll_one(self.file.as_raw_fd(), libc::POLLIN, Some(PORT_RECHECK))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl Write for PortStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            if self.is_closed() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match self.file.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ev = sys::poll_one(self.file.as_raw_fd(), libc::POLLOUT, Some(PORT_RECHECK))?;
                    if ev & libc::POLLHUP != 0 && ev & libc::POLLOUT == 0 {
                        // The host disconnected: nobody will ever read this.
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for PortStream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(PortStream {
            file: self.file.try_clone()?,
            closed: self.closed.clone(),
        })
    }
    fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Runs one session to its end on the current thread, containing any panic
/// so the caller can always recycle the transport.
pub fn serve_session<T: Transport>(stream: T, config: &AgentConfig, peer: &str) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| crate::session::run_session(stream, config)));
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => crate::diag!("session on {peer} ended: {e}"),
        Err(_) => crate::diag!("session on {peer} panicked"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::thread;

    use smolvm_proto::{read_frame, write_frame, write_json, FrameKind, Request};

    use super::*;

    /// A PortStream over a non-blocking socket: reads and writes hit
    /// EAGAIN and must wait in poll() (a real port behaves the same while
    /// the host is connected).
    #[test]
    fn port_stream_carries_a_session_through_eagain() {
        let (mut host, agent) = UnixStream::pair().expect("socketpair");
        agent.set_nonblocking(true).expect("nonblocking");
        let port = PortStream::new(File::from(OwnedFd::from(agent)));
        let session = thread::spawn(move || crate::session::run_session(port, &AgentConfig::default()));

        let nonce = [9u8; smolvm_proto::NONCE_LEN];
        write_frame(
            &mut host,
            FrameKind::Hello,
            &smolvm_proto::hello_payload(&nonce, smolvm_proto::PROTOCOL_VERSION),
        )
        .expect("hello");
        assert_eq!(
            read_frame(&mut host).expect("read").expect("ack").kind,
            FrameKind::HelloAck
        );
        // Enough output to fill the socket buffer many times over.
        let exec = crate::tests::shell("head -c 4000000 /dev/zero");
        write_json(&mut host, FrameKind::Request, &Request::Exec(exec)).expect("request");
        let mut total = 0;
        loop {
            let frame = read_frame(&mut host).expect("read").expect("frame");
            match frame.kind {
                FrameKind::Stdout => total += frame.payload.len(),
                FrameKind::Response => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(total, 4_000_000);
        drop(host);
        session.join().expect("no panic").expect("clean end");
    }

    #[test]
    fn shut_down_port_stream_reports_end_and_broken_pipe() {
        let (_host, agent) = UnixStream::pair().expect("socketpair");
        agent.set_nonblocking(true).expect("nonblocking");
        let mut port = PortStream::new(File::from(OwnedFd::from(agent)));
        let mut clone = Transport::try_clone(&port).expect("clone");
        // A reader blocked with no data returns end-of-stream on shutdown.
        let reader = thread::spawn(move || clone.read(&mut [0u8; 8]).expect("read"));
        thread::sleep(Duration::from_millis(50));
        port.shut_down();
        assert_eq!(reader.join().expect("reader"), 0);
        assert_eq!(port.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
