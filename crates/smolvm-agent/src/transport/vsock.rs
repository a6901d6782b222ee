//! AF_VSOCK listener (Firecracker, QEMU with vhost-vsock): every accepted
//! connection is one session on its own thread. The listening socket
//! survives VM snapshots; connections do not, and hosts reconnect.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use smolvm_proto::AGENT_VSOCK_PORT;

use super::{serve_session, SocketStream};
use crate::server::{AgentConfig, Ready};
use crate::sys;

/// Most concurrent vsock sessions; further connections are closed at once.
const MAX_SESSIONS: usize = 64;
/// `_IO(7, 0xb9)` from linux/vm_sockets.h (not in the libc crate).
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;

/// Starts listening and accepting on a background thread. Logs one line and
/// returns if this kernel or VM has no usable vsock.
pub fn start(config: Arc<AgentConfig>, ready: Arc<Ready>) {
    let listener = match listen(AGENT_VSOCK_PORT) {
        Ok(fd) => fd,
        Err(e) => {
            crate::diag!("vsock not available ({e}); serving virtio-serial only");
            return;
        }
    };
    // The guest transport module registers even without a device; only a
    // real device gives the guest a CID, so only then count vsock as up.
    if local_cid().is_some_and(|cid| cid != libc::VMADDR_CID_ANY) {
        ready.mark("vsock");
    }
    let spawned = thread::Builder::new()
        .name("vsock-accept".into())
        .spawn(move || accept_loop(listener, config));
    if let Err(e) = spawned {
        crate::diag!("cannot start the vsock listener thread: {e}");
    }
}

fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = sys::cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded; we own the descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    sys::cvt(unsafe { libc::bind(socket.as_raw_fd(), (&addr as *const libc::sockaddr_vm).cast(), len) })?;
    // SAFETY: listen on our bound socket.
    sys::cvt(unsafe { libc::listen(socket.as_raw_fd(), 16) })?;
    Ok(socket)
}

fn local_cid() -> Option<u32> {
    let dev = File::open("/dev/vsock").ok()?;
    let mut cid: u32 = 0;
    // SAFETY: this ioctl writes one u32 through the pointer.
    unsafe { sys::ioctl_ptr(dev.as_raw_fd(), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid) }.ok()?;
    Some(cid)
}

fn accept_loop(listener: OwnedFd, config: Arc<AgentConfig>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = sys::cvt(
            // SAFETY: accept4 with null address pointers is allowed.
            unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            },
        );
        let fd = match accepted {
            // SAFETY: accept4 returned a new descriptor that we now own.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) => continue,
            Err(e) => {
                crate::diag!("vsock accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.load(Ordering::Acquire) >= MAX_SESSIONS {
            crate::diag!("too many vsock sessions; refusing a connection");
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let (config, counter) = (config.clone(), active.clone());
        let spawned = thread::Builder::new().name("vsock-session".into()).spawn(move || {
            serve_session(SocketStream::new(fd), &config, "vsock");
            counter.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            crate::diag!("cannot start a vsock session thread: {e}");
        }
    }
}
