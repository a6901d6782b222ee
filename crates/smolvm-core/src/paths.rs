//! Where smolvm keeps its state, and the one place that knows the layout:
//!
//! ```text
//! <data>/smolvm.db                 state store (SQLite)
//! <data>/sandboxes/<name>/         disk.qcow2, console.log, vmm.log, sockets
//! <data>/snapshots/<id>/           manifest.json + artifacts
//! <data>/images/<name>/            immutable guest images
//! <data>/layers/<id>.qcow2          disk layers shared by sandboxes and snapshots
//! <data>/locks/                    flock files
//! <data>/cache/                    downloaded packages
//! ```
//! Every directory is created 0700: it holds guest memory and disks.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The resolved data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Resolves the data directory: `SMOLVM_DATA_DIR`, else
    /// `$XDG_STATE_HOME/smolvm`, else `~/.local/state/smolvm` for users and
    /// `/var/lib/smolvm` for root.
    pub fn resolve() -> io::Result<Self> {
        let root = if let Some(dir) = std::env::var_os("SMOLVM_DATA_DIR").filter(|d| !d.is_empty()) {
            PathBuf::from(dir)
        } else if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(xdg).join("smolvm")
        } else if rustix::process::geteuid().is_root() {
            PathBuf::from("/var/lib/smolvm")
        } else if let Some(home) = std::env::var_os("HOME") {
            PathBuf::from(home).join(".local/state/smolvm")
        } else {
            PathBuf::from("/var/lib/smolvm")
        };
        Self::open(root)
    }

    /// Opens (creating if needed) a data directory at `root`.
    pub fn open(root: PathBuf) -> io::Result<Self> {
        let root = if root.is_absolute() { root } else { std::env::current_dir()?.join(root) };
        let dir = DataDir { root };
        for d in [dir.root.clone(), dir.sandboxes(), dir.snapshots(), dir.layers(), dir.locks(), dir.cache()] {
            create_private_dir(&d)?;
        }
        Ok(dir)
    }

    /// The root path.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The SQLite database file.
    pub fn db(&self) -> PathBuf {
        self.root.join("smolvm.db")
    }
    /// Parent of all sandbox directories.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }
    /// One sandbox's directory (name must be validated).
    pub fn sandbox(&self, name: &str) -> PathBuf {
        self.sandboxes().join(name)
    }
    /// Parent of all snapshot directories.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    /// One snapshot's directory (id must be validated).
    pub fn snapshot(&self, id: &str) -> PathBuf {
        self.snapshots().join(id)
    }
    /// Where images live: `SMOLVM_IMAGE_DIR`, else `<data>/images`.
    pub fn images(&self) -> PathBuf {
        match std::env::var_os("SMOLVM_IMAGE_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => self.root.join("images"),
        }
    }
    /// Disk layers.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    /// Lock files.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    /// Download cache.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }
}

/// Creates `path` (and parents) with mode 0700, and tightens it if it
/// already existed with looser permissions.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} is not a directory", path.display())));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
