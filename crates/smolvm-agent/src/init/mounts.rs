//! The API filesystems PID 1 provides. The initramfs normally moved /dev,
//! /proc and /sys into the new root already; anything missing is mounted
//! here so the agent also boots without that initramfs.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// In mount order (parents before children).
const MOUNTS: [Mount; 7] = [
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "ptmxmode=0666,gid=5,mode=620",
    },
    Mount {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
];

/// The /dev symlinks devtmpfs does not create (bash's `<(...)` needs
/// /dev/fd, many scripts use /dev/stdin).
const DEV_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

/// Mounts whatever is missing, logging (not failing on) errors.
pub fn mount_api_filesystems() {
    for m in &MOUNTS {
        if let Err(e) = ensure_mounted(m) {
            crate::diag!("cannot mount {} on {}: {e}", m.fstype, m.target);
        }
    }
    for (link, target) in DEV_LINKS {
        if fs::symlink_metadata(link).is_err() {
            if let Err(e) = std::os::unix::fs::symlink(target, link) {
                crate::diag!("cannot create {link}: {e}");
            }
        }
    }
}

fn ensure_mounted(m: &Mount) -> io::Result<()> {
    fs::create_dir_all(m.target)?;
    if is_mount_point(Path::new(m.target)) {
        return Ok(());
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (source, target, fstype, data) = (cstr(m.source)?, cstr(m.target)?, cstr(m.fstype)?, cstr(m.data)?);
    // SAFETY: all pointers are valid NUL-terminated strings.
    crate::sys::cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data.as_ptr().cast(),
        )
    })
    .map(drop)
}

/// A directory on another device than its parent is a mount point.
fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else { return true };
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(dir), Ok(up)) => dir.dev() != up.dev(),
        _ => false,
    }
}
