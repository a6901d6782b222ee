//! `manifest.json`: the versioned, self-describing record beside each
//! snapshot's files. It is the source of truth (the SQLite row is an index
//! plus the restore mark), so a snapshot whose row was lost still lists
//! and restores. Read as untrusted input: size-capped, strictly parsed,
//! every id and file name re-validated before it is used as a path.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::integrity::Digest;
use super::SnapshotError;
use crate::backend::BackendKind;
use crate::layers::Layers;
use crate::names;
use crate::sandbox::SandboxConfig;

/// Magic value of the `format` field.
pub const FORMAT: &str = "smolvm-snapshot";
/// Current manifest version; a newer one is refused, never guessed at.
/// Version 2 adds a separate device-state file and memory deltas; a
/// manifest that uses neither is still written as version 1.
pub const FORMAT_VERSION: u32 = 2;
/// Manifest file name.
pub const MANIFEST: &str = "manifest.json";
/// Memory (and device state) file name.
pub const MEMORY: &str = "memory.bin";
/// Device state file name, for backends that keep it apart (Firecracker).
pub const STATE: &str = "vmstate.bin";
/// Largest manifest we read.
const MAX_MANIFEST: u64 = 1 << 20;

/// What a snapshot captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotType {
    /// Memory, device state and disk of one instant.
    Full,
    /// Like full, chained to the sandbox's previous snapshot.
    Diff,
    /// Disk only (guest filesystems flushed and frozen first).
    Disk,
}

impl SnapshotType {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotType::Full => "full",
            SnapshotType::Diff => "diff",
            SnapshotType::Disk => "disk",
        }
    }
    /// Whether memory is part of it.
    pub fn has_memory(self) -> bool {
        !matches!(self, SnapshotType::Disk)
    }
}

/// The snapshot record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// Snapshot id.
    pub snapshot_id: String,
    /// Source sandbox name.
    pub vm_id: String,
    /// Backend that took it.
    pub backend: BackendKind,
    /// VMM version that took it (a restore needs a compatible one).
    pub vmm_version: String,
    /// Type.
    pub snapshot_type: SnapshotType,
    /// The previous snapshot of the same sandbox lineage (diff chains).
    pub parent: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// The sandbox's configuration at capture time.
    pub vm_config: SandboxConfig,
    /// Disk layers, base first; the last was sealed by this snapshot.
    pub disk_chain: Vec<String>,
    /// Memory file name inside the snapshot directory, if any.
    pub memory_file: Option<String>,
    /// Size and hash of the memory file.
    pub memory_digest: Option<Digest>,
    /// Size and hash of every layer of `disk_chain`.
    pub layer_digests: BTreeMap<String, Digest>,
    /// Device state file name inside the snapshot directory, for backends
    /// that keep device state apart from memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// Size and hash of the state file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_digest: Option<Digest>,
    /// When the memory file is a delta: the snapshot whose memory it
    /// applies to (restore loads that one's memory with this one's
    /// changes written over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_base: Option<String>,
    /// Guest pause window in milliseconds.
    pub pause_ms: u64,
    /// Bytes this snapshot added on disk (memory + its sealed layer).
    pub size_bytes: u64,
}

impl Manifest {
    /// Checks everything a hostile edit could use to escape the data dir
    /// or to confuse a restore.
    pub fn validate(&self, expected_id: &str) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("not a smolvm snapshot manifest (format '{}')", self.format));
        }
        if self.format_version == 0 || self.format_version > FORMAT_VERSION {
            return Err(format!(
                "manifest format version {} is not supported by this smolvm (it reads up to {FORMAT_VERSION}); upgrade smolvm",
                self.format_version
            ));
        }
        if self.snapshot_id != expected_id {
            return Err(format!("manifest names snapshot '{}' but lives in '{expected_id}'", self.snapshot_id));
        }
        names::validate("vm_id", &self.vm_id).map_err(|e| e.to_string())?;
        names::validate("image", &self.vm_config.image).map_err(|e| e.to_string())?;
        if let Some(p) = &self.parent {
            names::validate("parent", p).map_err(|e| e.to_string())?;
        }
        if self.disk_chain.is_empty() || !self.disk_chain.iter().all(|id| Layers::is_valid_id(id)) {
            return Err("disk_chain holds an invalid layer id".into());
        }
        match (&self.memory_file, &self.memory_digest, self.snapshot_type.has_memory()) {
            (Some(f), Some(_), true) if f == MEMORY => {}
            (None, None, false) => {}
            _ => return Err("memory_file does not match the snapshot type".into()),
        }
        if !self.layer_digests.keys().eq(self.disk_chain.iter().collect::<std::collections::BTreeSet<_>>()) {
            return Err("layer_digests does not match disk_chain".into());
        }
        match (&self.state_file, &self.state_digest) {
            (Some(f), Some(_)) if f == STATE && self.snapshot_type.has_memory() => {}
            (None, None) => {}
            _ => return Err("state_file does not match the snapshot type".into()),
        }
        if let Some(base) = &self.memory_base {
            names::validate("memory_base", base).map_err(|e| e.to_string())?;
            if base == &self.snapshot_id || self.memory_file.is_none() {
                return Err("memory_base names no usable base".into());
            }
        }
        Ok(())
    }
}

/// Reads and validates `dir/manifest.json` (no symlinks followed).
pub fn read(dir: &Path, expected_id: &str) -> Result<Manifest, SnapshotError> {
    let path = dir.join(MANIFEST);
    let bad = |reason: String| SnapshotError::Unreadable { id: expected_id.into(), reason };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| bad(format!("cannot open {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(MAX_MANIFEST + 1).read_to_string(&mut text).map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(bad("manifest is larger than 1 MiB".into()));
    }
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    manifest.validate(expected_id).map_err(bad)?;
    Ok(manifest)
}

/// Writes `dir/manifest.json` durably: temp file, fsync, rename, fsync dir.
pub fn write(dir: &Path, manifest: &Manifest) -> Result<(), SnapshotError> {
    let tmp = dir.join(".manifest.json.tmp");
    let io = |source| SnapshotError::Io { path: dir.join(MANIFEST), source };
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    let mut text = serde_json::to_vec_pretty(manifest).map_err(|e| io(std::io::Error::other(e)))?;
    text.push(b'\n');
    f.write_all(&text).and_then(|_| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, dir.join(MANIFEST)).map_err(io)?;
    fsync_dir(dir).map_err(io)
}

/// fsyncs a directory so renames and new entries in it are durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
