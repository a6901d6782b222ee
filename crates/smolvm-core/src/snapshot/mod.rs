//! The snapshot engine, written once for every backend: `create`,
//! `restore`, `list`, `delete`. Backend-specific work (sealing a disk
//! layer, saving and loading memory) goes through the `Backend` trait.
//!
//! Data flow of a snapshot (see ARCHITECTURE.md):
//! 1. the guest is paused (or, for `disk`, its filesystems frozen);
//! 2. its top disk layer is sealed: the VM continues on a new overlay;
//! 3. memory and device state go to `memory.bin` (full/diff);
//! 4. the guest resumes (`--resume-source`) as soon as that is done;
//! 5. `manifest.json` is written into a temporary directory which is
//!    fsynced and renamed into `snapshots/<id>`, then indexed in SQLite.

mod create;
mod error;
mod fork;
mod integrity;
mod manifest;
mod restore;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use create::{create, CreateRequest, FlushPolicy};
pub use error::SnapshotError;
pub use fork::{fork, ForkOutcome};
pub use integrity::{ArtifactCheck, Digest};
pub use manifest::{Manifest, SnapshotType, FORMAT_VERSION};
pub use restore::{restore, RestoreOutcome, RestoreRequest};

use crate::lock::{lock_exclusive, LockGuard};
use crate::names;
use crate::sandbox::Engine;
use crate::store::SnapshotRow;

/// How long a command waits for another one holding the same snapshot.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A snapshot as shown to users: the reference tool's SnapshotRow plus
/// `size_bytes`, `parent` and `pause_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    /// Id.
    pub snapshot_id: String,
    /// Source sandbox.
    pub vm_id: String,
    /// Backend.
    pub backend: String,
    /// Type.
    pub snapshot_type: SnapshotType,
    /// Restored into its own identity.
    pub restored: bool,
    /// Which sandbox it was restored into.
    pub restored_vm_id: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Files.
    pub artifacts: Artifacts,
    /// Bytes this snapshot added on disk.
    pub size_bytes: u64,
    /// Parent snapshot (diff).
    pub parent: Option<String>,
    /// Guest pause window in ms.
    pub pause_ms: u64,
}

/// Artifact paths (absolute).
#[derive(Debug, Clone, Serialize)]
pub struct Artifacts {
    /// Separate device-state file (none on QEMU: it is inside memory).
    pub state_path: Option<PathBuf>,
    /// Memory file.
    pub memory_path: Option<PathBuf>,
    /// The disk layer this snapshot sealed (its chain is in the manifest).
    pub disk_path: PathBuf,
}

/// A snapshot loaded from its manifest and row.
pub(crate) struct Loaded {
    pub manifest: Manifest,
    pub restored: bool,
    pub restored_vm_id: Option<String>,
    pub dir: PathBuf,
}

impl Loaded {
    pub(crate) fn view(&self, engine: &Engine) -> SnapshotView {
        let m = &self.manifest;
        let top = m.disk_chain.last().map(|id| engine.layers().path(id)).unwrap_or_default();
        SnapshotView {
            snapshot_id: m.snapshot_id.clone(),
            vm_id: m.vm_id.clone(),
            backend: m.backend.as_str().to_string(),
            snapshot_type: m.snapshot_type,
            restored: self.restored,
            restored_vm_id: self.restored_vm_id.clone(),
            created_at: m.created_at.clone(),
            artifacts: Artifacts {
                state_path: m.state_file.as_ref().map(|f| self.dir.join(f)),
                memory_path: m.memory_file.as_ref().map(|f| self.dir.join(f)),
                disk_path: top,
            },
            size_bytes: m.size_bytes,
            parent: m.parent.clone(),
            pause_ms: m.pause_ms,
        }
    }
}

/// Takes the per-snapshot lock.
pub(crate) fn lock(engine: &Engine, id: &str) -> Result<LockGuard, SnapshotError> {
    // The id becomes part of a path: never lock an unvalidated one.
    names::validate("snapshot_id", id)?;
    let path = engine.data().locks().join(format!("snapshot-{id}.lock"));
    Ok(lock_exclusive(&path, &format!("Snapshot '{id}'"), LOCK_WAIT)?)
}

/// The snapshot's directory, refusing one that is a symlink (a planted
/// link must never lead a delete or restore outside the data dir).
pub(crate) fn snapshot_dir(engine: &Engine, id: &str) -> Result<Option<PathBuf>, SnapshotError> {
    names::validate("snapshot_id", id)?;
    let dir = engine.data().snapshot(id);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_dir() => Ok(Some(dir)),
        Ok(_) => Err(SnapshotError::Unreadable { id: id.into(), reason: "its directory is not a plain directory".into() }),
        Err(_) => Ok(None),
    }
}

/// Loads a snapshot: the row if present, else the manifest (which is then
/// indexed again, so a lost row heals itself).
pub(crate) fn load(engine: &Engine, id: &str) -> Result<Loaded, SnapshotError> {
    let dir = snapshot_dir(engine, id)?.ok_or_else(|| SnapshotError::NotFound { id: id.into() })?;
    let manifest = manifest::read(&dir, id)?;
    let row = engine.store().get_snapshot(id)?;
    let (restored, restored_vm_id) = match row {
        Some(r) => (r.restored, r.restored_vm_id),
        None => {
            let mark = read_restored_mark(&dir);
            index(engine, &manifest, mark.clone())?;
            (mark.is_some(), mark)
        }
    };
    Ok(Loaded { manifest, restored, restored_vm_id, dir })
}

/// After a crash: indexes snapshot `id` if it was published (renamed into
/// place) but its row was never written.
pub(crate) fn index_if_published(engine: &Engine, id: &str) {
    if let Ok(Some(dir)) = snapshot_dir(engine, id) {
        if let Ok(m) = manifest::read(&dir, id) {
            let _ = index(engine, &m, read_restored_mark(&dir));
        }
    }
}

/// Inserts the row for a manifest.
fn index(engine: &Engine, m: &Manifest, restored_vm_id: Option<String>) -> Result<(), SnapshotError> {
    let row = SnapshotRow {
        snapshot_id: m.snapshot_id.clone(),
        vm_id: m.vm_id.clone(),
        manifest: serde_json::to_string(m).unwrap_or_default(),
        restored: restored_vm_id.is_some(),
        restored_vm_id,
    };
    match engine.store().insert_snapshot(&row, m.backend.as_str(), m.snapshot_type.as_str(), m.parent.as_deref(), &m.created_at) {
        Ok(()) | Err(crate::store::StoreError::Exists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The restore mark is also kept as a file, so it survives a lost row.
pub(crate) const RESTORED_MARK: &str = "restored";

fn read_restored_mark(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(RESTORED_MARK)).ok()?;
    let name = text.trim().to_string();
    names::validate("vm_id", &name).ok().map(|_| name)
}

/// Lists snapshots (optionally of one sandbox), oldest first: indexed rows
/// plus manifests on disk whose row was lost.
pub fn list(engine: &Engine, vm_id: Option<&str>) -> Result<Vec<SnapshotView>, SnapshotError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for row in engine.store().list_snapshots()? {
        seen.insert(row.snapshot_id.clone());
        if vm_id.is_some_and(|v| v != row.vm_id) {
            continue;
        }
        let Ok(manifest) = serde_json::from_str::<Manifest>(&row.manifest) else { continue };
        let dir = engine.data().snapshot(&row.snapshot_id);
        out.push(Loaded { manifest, restored: row.restored, restored_vm_id: row.restored_vm_id, dir }.view(engine));
    }
    if let Ok(entries) = std::fs::read_dir(engine.data().snapshots()) {
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if seen.contains(&id) || names::validate("snapshot_id", &id).is_err() {
                continue;
            }
            if let Ok(loaded) = load(engine, &id) {
                if vm_id.is_none_or(|v| v == loaded.manifest.vm_id) {
                    out.push(loaded.view(engine));
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.created_at, &a.snapshot_id).cmp(&(&b.created_at, &b.snapshot_id)));
    Ok(out)
}

/// Checks every artifact of a snapshot against its manifest's digests.
pub fn verify(engine: &Engine, id: &str) -> Result<(SnapshotView, Vec<ArtifactCheck>), SnapshotError> {
    let loaded = load(engine, id)?;
    let checks = integrity::verify(&loaded.manifest, &loaded.dir, &engine.layers());
    Ok((loaded.view(engine), checks))
}

/// Digests recorded by any snapshot for the layers it names (sealed
/// layers never change, so one record serves every later snapshot).
pub(crate) fn known_layer_digests(engine: &Engine) -> Result<std::collections::BTreeMap<String, Digest>, SnapshotError> {
    let mut known = std::collections::BTreeMap::new();
    for row in engine.store().list_snapshots()? {
        if let Ok(m) = serde_json::from_str::<Manifest>(&row.manifest) {
            known.extend(m.layer_digests);
        }
    }
    Ok(known)
}

/// Shows one snapshot.
pub fn get(engine: &Engine, id: &str) -> Result<SnapshotView, SnapshotError> {
    Ok(load(engine, id)?.view(engine))
}

/// Deletes a snapshot's files and row. Diff children are folded onto this
/// snapshot's parent; disk layers still used elsewhere are kept.
pub fn delete(engine: &Engine, id: &str) -> Result<SnapshotView, SnapshotError> {
    names::validate("snapshot_id", id)?;
    let _lock = lock(engine, id)?;
    let dir = snapshot_dir(engine, id)?;
    let loaded = match load(engine, id) {
        Ok(l) => Some(l),
        Err(SnapshotError::NotFound { .. }) => {
            engine.store().delete_snapshot(id)?;
            return Err(SnapshotError::NotFound { id: id.into() });
        }
        // A damaged snapshot can still be deleted.
        Err(_) => None,
    };
    let view = loaded.as_ref().map(|l| l.view(engine));
    if let Some(l) = &loaded {
        fold_children(engine, l)?;
    }
    if let Some(dir) = dir {
        // Rename first: the snapshot disappears atomically, then is removed.
        let trash = engine.data().snapshots().join(format!(".trash-{id}-{}", crate::layers::Layers::new_id()));
        std::fs::rename(&dir, &trash).map_err(|source| SnapshotError::Io { path: dir.clone(), source })?;
        let _ = manifest::fsync_dir(&engine.data().snapshots());
        engine.store().delete_snapshot(id)?;
        std::fs::remove_dir_all(&trash).map_err(|source| SnapshotError::Io { path: trash, source })?;
    } else {
        engine.store().delete_snapshot(id)?;
    }
    engine.collect_layer_garbage()?;
    view.ok_or_else(|| SnapshotError::Unreadable { id: id.into(), reason: "it was damaged; its files were removed".into() })
}

/// Re-points the diff children of `gone` at its own parent. A child whose
/// memory is a delta over `gone`'s gets `gone`'s memory merged into it, so
/// it becomes a delta over `gone`'s own base (or self-contained).
fn fold_children(engine: &Engine, gone: &Loaded) -> Result<(), SnapshotError> {
    let id = gone.manifest.snapshot_id.as_str();
    for child in engine.store().snapshot_children(id)? {
        let Some(dir) = snapshot_dir(engine, &child)? else { continue };
        let Ok(mut m) = manifest::read(&dir, &child) else { continue };
        m.parent = gone.manifest.parent.clone();
        if m.memory_base.as_deref() == Some(id) {
            fold_memory(gone, &dir, &mut m)?;
        }
        manifest::write(&dir, &m)?;
        let restored = engine.store().get_snapshot(&child)?.and_then(|r| r.restored_vm_id);
        engine.store().delete_snapshot(&child)?;
        index(engine, &m, restored)?;
    }
    Ok(())
}

/// Writes `gone`'s memory with `child`'s changes over it as the child's
/// new memory file (merged and verified by the backend).
fn fold_memory(gone: &Loaded, dir: &Path, child: &mut Manifest) -> Result<(), SnapshotError> {
    let (Some(base_file), Some(own_file)) = (&gone.manifest.memory_file, &child.memory_file) else {
        return Err(SnapshotError::Refused(format!(
            "Snapshot '{}' holds memory that diff snapshot '{}' builds on, and it cannot be merged; delete '{}' first",
            gone.manifest.snapshot_id, child.snapshot_id, child.snapshot_id
        )));
    };
    let own = dir.join(own_file);
    let merged = dir.join(format!(".{own_file}.merge"));
    let _ = std::fs::remove_file(&merged);
    let backend = crate::backend::AnyBackend::new(child.backend);
    use crate::backend::Backend;
    backend.merge_memory(&[&gone.dir.join(base_file), &own], &merged)?;
    let io = |source| SnapshotError::Io { path: merged.clone(), source };
    let digest = integrity::digest_file(&merged).map_err(io)?;
    let added = allocated_bytes(&merged).saturating_sub(allocated_bytes(&own));
    std::fs::rename(&merged, &own).map_err(io)?;
    manifest::fsync_dir(dir).map_err(io)?;
    child.memory_digest = Some(digest);
    child.memory_base = gone.manifest.memory_base.clone();
    child.size_bytes += added;
    Ok(())
}

/// Every layer id some snapshot's chain names (rows and manifests on
/// disk, including snapshots still being published).
pub fn referenced_layers(engine: &Engine) -> Result<HashSet<String>, crate::sandbox::SandboxError> {
    let mut ids = HashSet::new();
    for row in engine.store().list_snapshots()? {
        if let Ok(m) = serde_json::from_str::<Manifest>(&row.manifest) {
            ids.extend(m.disk_chain);
        }
    }
    if let Ok(entries) = std::fs::read_dir(engine.data().snapshots()) {
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path().join(manifest::MANIFEST)).unwrap_or_default();
            if let Ok(m) = serde_json::from_str::<Manifest>(&text) {
                ids.extend(m.disk_chain.into_iter().filter(|id| crate::layers::Layers::is_valid_id(id)));
            }
        }
    }
    Ok(ids)
}

/// Bytes a file really occupies (sparse files count their data only).
pub(crate) fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}
