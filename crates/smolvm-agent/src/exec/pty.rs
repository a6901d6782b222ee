//! Pseudo-terminals for `tty` commands. Both ends are opened close-on-exec
//! atomically, so a command started concurrently by another session can
//! never inherit them (which would keep this pty open forever).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use smolvm_proto::TtySize;

use crate::sys;

/// Master and slave of a new pty.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a pty with the given window size.
pub fn open(size: TtySize) -> io::Result<Pty> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: posix_openpt has no pointer arguments.
    let master = sys::cvt(unsafe { libc::posix_openpt(flags) })?;
    // SAFETY: posix_openpt returned a new descriptor that we own.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: both take an open pty master descriptor.
    sys::cvt(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    sys::cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let slave = open_peer(&master, flags)?;
    set_size(&master, size)?;
    Ok(Pty { master, slave })
}

/// Opens the slave side: TIOCGPTPEER (Linux 4.13+) works without looking
/// the path up in /dev/pts; older kernels fall back to ptsname.
fn open_peer(master: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as its integer argument.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd >= 0 {
        // SAFETY: the ioctl returned a new descriptor that we own.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is a writable buffer of the length given.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: `path` is a valid C string.
    let fd = sys::cvt(unsafe { libc::open(path.as_ptr(), flags) })?;
    // SAFETY: open returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the window size (the kernel sends SIGWINCH to the foreground job).
pub fn set_size(fd: &impl AsRawFd, size: TtySize) -> io::Result<()> {
    let mut ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer.
    unsafe { sys::ioctl_ptr(fd.as_raw_fd(), libc::TIOCSWINSZ, &mut ws) }.map(drop)
}
