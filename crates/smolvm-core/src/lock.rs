//! Advisory file locks (flock) with a bounded wait, so that parallel
//! `smolvm` processes serialise their changes to one sandbox or snapshot
//! and a stuck holder produces a clear "busy" error instead of a hang.
//! The kernel drops a flock when its holder dies, so a crashed process
//! never leaves a lock behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process held it for the whole wait.
    #[error("{what} is busy: another smolvm command is still working on it (waited {waited:?})")]
    Busy {
        /// What the lock protects, e.g. "sandbox 'demo'".
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file could not be opened.
    #[error("cannot open lock file {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Opens (creating) a lock file, never through a symlink.
fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Takes an exclusive lock on `path`, waiting up to `wait`.
pub fn lock_exclusive(path: &Path, what: &str, wait: Duration) -> Result<LockGuard, LockError> {
    let file = open_lock_file(path).map_err(|source| LockError::Io { path: path.to_path_buf(), source })?;
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(LockGuard { _file: file, path: path.to_path_buf() }),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(LockError::Io { path: path.to_path_buf(), source: e.into() }),
        }
        if start.elapsed() >= wait {
            return Err(LockError::Busy { what: what.to_string(), waited: start.elapsed() });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Tries once to take an exclusive lock; `Ok(None)` when someone holds it.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<LockGuard>> {
    let file = open_lock_file(path)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(LockGuard { _file: file, path: path.to_path_buf() })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_gets_busy_then_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let g = lock_exclusive(&p, "sandbox 'x'", Duration::from_millis(10)).unwrap();
        let err = lock_exclusive(&p, "sandbox 'x'", Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().starts_with("sandbox 'x' is busy"), "{err}");
        assert!(try_lock_exclusive(&p).unwrap().is_none());
        drop(g);
        assert!(try_lock_exclusive(&p).unwrap().is_some());
    }

    #[test]
    fn symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let p = dir.path().join("evil.lock");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(lock_exclusive(&p, "x", Duration::from_millis(10)).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
