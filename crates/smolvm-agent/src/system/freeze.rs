//! Sync, FIFREEZE and FITHAW of the guest's block-device filesystems, so
//! the host can take a consistent disk snapshot.
//!
//! The frozen state is global to the agent (filesystems are global): any
//! session can thaw, and a timer thaws automatically so a host that
//! vanishes mid-snapshot never leaves the guest frozen.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use smolvm_proto::Response;

use crate::sink::{error, io_error};
use crate::sys;

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` from linux/fs.h.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;
/// Filesystem types that support freezing and live on the VM's disks.
const FREEZABLE: [&str; 5] = ["ext4", "ext3", "ext2", "xfs", "btrfs"];
const DEFAULT_THAW_AFTER: Duration = Duration::from_secs(10);
const MAX_THAW_AFTER: Duration = Duration::from_secs(600);

struct FreezeState {
    /// Mount points we froze, kept open to thaw them.
    frozen: Vec<File>,
    /// Bumped at every freeze and thaw; a thaw timer only acts if the
    /// generation it was started for is still current.
    generation: u64,
}

static STATE: Mutex<FreezeState> = Mutex::new(FreezeState {
    frozen: Vec::new(),
    generation: 0,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, FreezeState> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether filesystems are frozen right now (writing to them would block).
pub fn is_frozen() -> bool {
    !lock().frozen.is_empty()
}

/// Answers Sync: flush everything; with `freeze`, also freeze.
pub fn sync(freeze: bool, timeout_ms: Option<u64>) -> Response {
    let thaw_after = timeout_ms
        .map_or(DEFAULT_THAW_AFTER, Duration::from_millis)
        .min(MAX_THAW_AFTER);
    let mut state = lock();
    if !state.frozen.is_empty() {
        // Already frozen, so already consistent; sync() here could block on
        // the frozen filesystems. Only a new freeze extends the deadline.
        if freeze {
            start_thaw_timer(&mut state, thaw_after);
        }
        return Response::Ok;
    }
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if !freeze {
        return Response::Ok;
    }
    match freeze_all() {
        Ok(files) => {
            state.frozen = files;
            start_thaw_timer(&mut state, thaw_after);
            Response::Ok
        }
        Err(response) => response,
    }
}

/// Answers Thaw (fine when nothing is frozen).
pub fn thaw_request() -> Response {
    thaw();
    Response::Ok
}

/// Thaws what this agent froze.
pub fn thaw() {
    thaw_locked(&mut lock());
}

fn thaw_locked(state: &mut FreezeState) {
    state.generation += 1;
    for file in state.frozen.drain(..) {
        // SAFETY: FITHAW ignores its argument; the pointer is valid anyway.
        let _ = unsafe { sys::ioctl_ptr(file.as_raw_fd(), FITHAW, &mut 0i32) };
    }
    CHANGED.notify_all();
}

/// Thaws every block filesystem, frozen by us or not: used before power-off,
/// where a frozen filesystem would hang the final sync and remount.
pub fn thaw_everything() {
    thaw();
    for mount_point in block_mount_points() {
        if let Ok(dir) = File::open(&mount_point) {
            // SAFETY: as in thaw_locked; EINVAL (not frozen) is expected.
            let _ = unsafe { sys::ioctl_ptr(dir.as_raw_fd(), FITHAW, &mut 0i32) };
        }
    }
}

fn start_thaw_timer(state: &mut FreezeState, after: Duration) {
    state.generation += 1;
    let generation = state.generation;
    CHANGED.notify_all();
    let Some(deadline) = Instant::now().checked_add(after) else {
        return;
    };
    let spawned = thread::Builder::new().name("thaw-timer".into()).spawn(move || {
        let mut state = lock();
        loop {
            if state.generation != generation {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                crate::diag!("thawing filesystems: the freeze timed out after {after:?}");
                thaw_locked(&mut state);
                return;
            }
            state = CHANGED
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    });
    if let Err(e) = spawned {
        crate::diag!("cannot start the thaw timer ({e}); thawing now");
        thaw_locked(state);
    }
}

/// Freezes each block filesystem once; on failure thaws what it froze.
fn freeze_all() -> Result<Vec<File>, Response> {
    let mut frozen = Vec::new();
    let mut devices = HashSet::new();
    for mount_point in block_mount_points() {
        let dir = match File::open(&mount_point) {
            Ok(dir) => dir,
            Err(e) => {
                thaw_files(frozen);
                return Err(io_error(&format!("cannot open {mount_point}"), &e));
            }
        };
        // Bind mounts show the same filesystem twice; freezing twice fails.
        match dir.metadata() {
            Ok(meta) if !devices.insert(meta.dev()) => continue,
            _ => {}
        }
        // SAFETY: FIFREEZE ignores its argument; the pointer is valid anyway.
        if let Err(e) = unsafe { sys::ioctl_ptr(dir.as_raw_fd(), FIFREEZE, &mut 0i32) } {
            thaw_files(frozen);
            return Err(error("io", format!("cannot freeze {mount_point}: {e}")));
        }
        frozen.push(dir);
    }
    Ok(frozen)
}

fn thaw_files(files: Vec<File>) {
    for file in files {
        // SAFETY: as in thaw_locked.
        let _ = unsafe { sys::ioctl_ptr(file.as_raw_fd(), FITHAW, &mut 0i32) };
    }
}

fn block_mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mounts")
        .map(|m| parse_block_mounts(&m))
        .unwrap_or_default()
}

/// Mount points of freezable filesystems on block devices, from the text
/// of /proc/self/mounts.
pub fn parse_block_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (source.starts_with("/dev/") && FREEZABLE.contains(&fstype)).then(|| unescape_mount_path(target))
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for space) in mount paths.
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_block_device_filesystems_are_frozen() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      proc /proc proc rw 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n\
                      /dev/vdb /data\\040disk xfs rw 0 0\n\
                      /dev/vdc /mnt/v vfat rw 0 0\n\
                      short line\n";
        assert_eq!(
            parse_block_mounts(mounts),
            vec!["/".to_string(), "/data disk".to_string()]
        );
    }

    #[test]
    fn thaw_without_freeze_is_ok() {
        assert_eq!(thaw_request(), Response::Ok);
        assert!(!is_frozen());
    }
}
