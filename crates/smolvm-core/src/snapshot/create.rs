//! `snapshot create`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::manifest::{self, Manifest, SnapshotType, FORMAT, FORMAT_VERSION, MEMORY, STATE};
use super::{allocated_bytes, index, integrity, lock, snapshot_dir, SnapshotError, SnapshotView};
use crate::agent;
use crate::backend::{AnyBackend, Backend, MemoryFiles, SavedMemory};
use crate::layers::Layers;
use crate::names;
use crate::paths::create_private_dir;
use crate::sandbox::{crash_point, Engine, Journal, MemoryBase, Progress, SandboxStatus};
use crate::store::SandboxRow;

/// What to do when flushing the guest before a `disk` snapshot fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Abort the snapshot.
    Required,
    /// Warn and take a crash-consistent disk.
    BestEffort,
    /// Do not flush.
    Skip,
}

/// A `snapshot create` request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Source sandbox.
    pub sandbox: String,
    /// Id (generated when None).
    pub snapshot_id: Option<String>,
    /// Type.
    pub snapshot_type: SnapshotType,
    /// Resume a running source as soon as the state is captured.
    pub resume_source: bool,
    /// Guest flush policy for `disk`.
    pub flush_policy: FlushPolicy,
}

/// Bound on writing guest memory: generous, scaled by memory size.
fn save_timeout(memory_mib: u32) -> Duration {
    Duration::from_secs(30 + u64::from(memory_mib) / 16)
}

/// Takes a snapshot; see the module docs of `snapshot` for the steps.
pub fn create(engine: &Engine, req: &CreateRequest, progress: &dyn Progress) -> Result<SnapshotView, SnapshotError> {
    names::validate("sandbox name", &req.sandbox).map_err(crate::sandbox::SandboxError::from)?;
    let id = match &req.snapshot_id {
        Some(id) => id.clone(),
        None => default_id(&req.sandbox),
    };
    names::validate("snapshot_id", &id)?;
    let _vm_lock = engine.lock(&req.sandbox)?;
    let _snap_lock = lock(engine, &id)?;
    let row = engine.get(&req.sandbox)?;
    if !row.status.has_vmm() {
        return Err(SnapshotError::WrongState { vm: row.name.clone(), state: row.status.as_str() });
    }
    check_id_free(engine, &id)?;
    let needs = if req.snapshot_type.has_memory() { u64::from(row.config.memory_mib) << 20 } else { 0 } + (64 << 20);
    check_free_space(&engine.data().snapshots(), needs)?;

    let backend = AnyBackend::new(row.config.backend);
    let tmp = engine.data().snapshots().join(format!(".tmp-{id}-{}", Layers::new_id()));
    create_private_dir(&tmp).map_err(|source| SnapshotError::Io { path: tmp.clone(), source })?;
    let was_running = row.status == SandboxStatus::Running;
    let journal = Journal {
        op: "snapshot".into(),
        snapshot_id: id.clone(),
        tmp_dir: tmp.file_name().map(|n| n.to_string_lossy().into_owned()),
        was_running,
        chain_before: row.disk_chain.clone(),
        created_row: false,
    };
    if let Err(e) = engine.begin(&row.name, &journal) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    crash_point("snapshot.journaled");
    let result = capture(engine, &backend, &row, req, &tmp, progress).and_then(|cap| publish(engine, &row, req, &id, &tmp, cap));
    let outcome = match result {
        Ok(view) => Ok(view),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // A failed snapshot never leaves a running sandbox paused.
            if was_running {
                let dir = engine.dir(&row.name);
                if backend.resume(&dir).is_ok() {
                    let _ = engine.store().set_status(&row.name, SandboxStatus::Running, row.process);
                }
            }
            Err(e)
        }
    };
    engine.finish(&row.name);
    outcome
}

/// What capture produced.
struct Captured {
    sealed_chain: Vec<String>,
    pause_ms: u64,
    /// What the backend wrote, for memory snapshots.
    saved: Option<SavedMemory>,
    /// The snapshot a delta memory file applies to.
    memory_base: Option<String>,
}

fn capture(
    engine: &Engine,
    backend: &AnyBackend,
    row: &SandboxRow,
    req: &CreateRequest,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<Captured, SnapshotError> {
    let dir = engine.dir(&row.name);
    let was_running = row.status == SandboxStatus::Running;
    let mut frozen = None;
    if req.snapshot_type == SnapshotType::Disk && was_running && req.flush_policy != FlushPolicy::Skip {
        progress.step("Flushing and freezing the guest's filesystems");
        let flushed = agent::connect(&backend.agent_endpoint(&dir), Duration::from_secs(10))
            .and_then(|mut s| s.sync(true, Duration::from_secs(10)).map(|_| s));
        match flushed {
            Ok(session) => frozen = Some(session),
            Err(source) if req.flush_policy == FlushPolicy::Required => {
                return Err(SnapshotError::Flush { vm: row.name.clone(), source })
            }
            Err(e) => progress.notice(&format!("guest flush failed ({e}); taking a crash-consistent disk snapshot")),
        }
    }
    // A frozen guest writes nothing, so a disk snapshot needs no pause.
    let pause_needed = was_running && frozen.is_none();
    let paused_at = Instant::now();
    if pause_needed {
        backend.pause(&dir)?;
    }
    crash_point("snapshot.paused");
    let sealed = seal(engine, backend, row);
    crash_point("snapshot.sealed");
    if let Some(mut session) = frozen {
        let _ = session.thaw();
    }
    let sealed_chain = sealed?;
    let mut saved = None;
    let mut memory_base = None;
    if req.snapshot_type.has_memory() {
        progress.step("Saving memory");
        // A diff may hold only what changed since the VMM's memory last
        // matched a snapshot, when the backend can tell (Firecracker).
        let base = if req.snapshot_type == SnapshotType::Diff { usable_memory_base(engine, row) } else { None };
        // Saving consumes the backend's change tracking: until this
        // snapshot is published, no base is known.
        MemoryBase::clear(&dir);
        let files = MemoryFiles { memory: &tmp.join(MEMORY), state: &tmp.join(STATE) };
        let wrote = backend.save_memory(&dir, &files, base.is_some(), save_timeout(row.config.memory_mib))?;
        memory_base = base.filter(|_| wrote.delta);
        saved = Some(wrote);
        crash_point("snapshot.memory_saved");
    }
    let mut pause_ms = if pause_needed { paused_at.elapsed().as_millis() as u64 } else { 0 };
    let final_status = if was_running && req.resume_source {
        if pause_needed {
            backend.resume(&dir)?;
            pause_ms = paused_at.elapsed().as_millis() as u64;
        }
        SandboxStatus::Running
    } else if was_running {
        if !pause_needed {
            backend.pause(&dir)?;
        }
        SandboxStatus::Paused
    } else {
        SandboxStatus::Paused
    };
    engine.store().set_status(&row.name, final_status, row.process)?;
    crash_point("snapshot.resumed");
    Ok(Captured { sealed_chain, pause_ms, saved, memory_base })
}

/// The sandbox's memory base (see `sandbox::MemoryBase`), if that
/// snapshot is still there with its memory.
fn usable_memory_base(engine: &Engine, row: &SandboxRow) -> Option<String> {
    let id = MemoryBase::read(&engine.dir(&row.name), row.process)?;
    let loaded = super::load(engine, &id).ok()?;
    (loaded.manifest.memory_file.is_some() && loaded.manifest.backend == row.config.backend).then_some(id)
}

/// Seals the top layer; returns the chain that now holds the snapshot's disk.
fn seal(engine: &Engine, backend: &AnyBackend, row: &SandboxRow) -> Result<Vec<String>, SnapshotError> {
    let top_id = row.disk_chain.last().cloned().unwrap_or_default();
    let new_id = Layers::new_id();
    let mut chain = row.disk_chain.clone();
    chain.push(new_id.clone());
    // Recorded before the file exists, so layer garbage collection never
    // sees the new layer unreferenced.
    engine.store().set_disk_chain(&row.name, &chain)?;
    let new_path = engine.layers_for(row.config.backend).path(&new_id);
    if let Err(e) = backend.seal_disk(&engine.dir(&row.name), &top_id, &new_path, &new_id) {
        engine.store().set_disk_chain(&row.name, &row.disk_chain)?;
        let _ = std::fs::remove_file(&new_path);
        return Err(e.into());
    }
    Ok(row.disk_chain.clone())
}

fn publish(
    engine: &Engine,
    row: &SandboxRow,
    req: &CreateRequest,
    id: &str,
    tmp: &Path,
    cap: Captured,
) -> Result<SnapshotView, SnapshotError> {
    let memory_path = tmp.join(MEMORY);
    let state_path = tmp.join(STATE);
    let has_memory = req.snapshot_type.has_memory();
    let has_state = cap.saved.is_some_and(|s| s.state_file);
    let backend = AnyBackend::new(row.config.backend);
    if has_memory {
        // The guest runs again by now: shrinking the file costs no pause.
        let delta = cap.saved.is_some_and(|s| s.delta);
        if let Err(e) = backend.compact_memory(&memory_path, delta) {
            tracing::debug!(error = %e, "could not compact the memory file");
        }
        for path in [&memory_path, &state_path].into_iter().filter(|p| *p == &memory_path || has_state) {
            let f = std::fs::File::open(path).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
            f.sync_all().map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
        }
    }
    let sealed = cap.sealed_chain.last().map(|l| engine.layers().path(l)).unwrap_or_default();
    let size_bytes = allocated_bytes(&sealed)
        + if has_memory { allocated_bytes(&memory_path) } else { 0 }
        + if has_state { allocated_bytes(&state_path) } else { 0 };
    let parent = match (req.snapshot_type, &cap.memory_base) {
        (SnapshotType::Diff, Some(base)) => Some(base.clone()),
        (SnapshotType::Diff, None) => previous_snapshot(engine, row)?,
        _ => None,
    };
    let vmm_version = backend.check_installed().unwrap_or_default();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { path, source }
    };
    let memory_digest = if has_memory { Some(integrity::digest_file(&memory_path).map_err(io(&memory_path))?) } else { None };
    let state_digest = if has_state { Some(integrity::digest_file(&state_path).map_err(io(&state_path))?) } else { None };
    let known = super::known_layer_digests(engine)?;
    let layer_digests = integrity::layer_digests(&engine.layers(), &cap.sealed_chain, &known).map_err(io(&sealed))?;
    let m = Manifest {
        format: FORMAT.into(),
        // Readers of version 1 understand a manifest without these fields.
        format_version: if has_state || cap.memory_base.is_some() { FORMAT_VERSION } else { 1 },
        snapshot_id: id.into(),
        vm_id: row.name.clone(),
        backend: row.config.backend,
        vmm_version,
        snapshot_type: req.snapshot_type,
        parent,
        created_at: crate::now_rfc3339(),
        vm_config: row.config.clone(),
        disk_chain: cap.sealed_chain,
        memory_file: has_memory.then(|| MEMORY.to_string()),
        memory_digest,
        layer_digests,
        state_file: has_state.then(|| STATE.to_string()),
        state_digest,
        memory_base: cap.memory_base.clone(),
        pause_ms: cap.pause_ms,
        size_bytes,
    };
    manifest::write(tmp, &m)?;
    let final_dir = engine.data().snapshot(id);
    std::fs::rename(tmp, &final_dir).map_err(|source| SnapshotError::Io { path: final_dir.clone(), source })?;
    manifest::fsync_dir(&engine.data().snapshots()).map_err(|source| SnapshotError::Io { path: final_dir.clone(), source })?;
    crash_point("snapshot.published");
    index(engine, &m, None)?;
    if let (true, Some(process)) = (has_memory, row.process) {
        // The VMM's change tracking now starts from this snapshot.
        MemoryBase::write(&engine.dir(&row.name), id, process);
    }
    Ok(super::Loaded { manifest: m, restored: false, restored_vm_id: None, dir: final_dir }.view(engine))
}

/// The newest snapshot of this sandbox whose disk chain is a prefix of the
/// sandbox's: the state this one is a step after.
fn previous_snapshot(engine: &Engine, row: &SandboxRow) -> Result<Option<String>, SnapshotError> {
    let mut best: Option<(String, String)> = None;
    for snap in engine.store().list_snapshots()? {
        let Ok(m) = serde_json::from_str::<Manifest>(&snap.manifest) else { continue };
        if m.vm_id == row.name && row.disk_chain.starts_with(&m.disk_chain) && best.as_ref().is_none_or(|(t, _)| m.created_at >= *t) {
            best = Some((m.created_at.clone(), m.snapshot_id.clone()));
        }
    }
    Ok(best.map(|(_, id)| id))
}

fn check_id_free(engine: &Engine, id: &str) -> Result<(), SnapshotError> {
    if engine.store().get_snapshot(id)?.is_some() {
        return Err(SnapshotError::Exists { id: id.into() });
    }
    if let Some(dir) = snapshot_dir(engine, id)? {
        // A manifest without a row is a snapshot whose row was lost: keep it.
        if manifest::read(&dir, id).is_ok() {
            return Err(SnapshotError::Exists { id: id.into() });
        }
        return Err(SnapshotError::Refused(format!(
            "A damaged snapshot directory '{id}' is in the way; remove it with 'smolvm sandbox snapshot delete {id}'"
        )));
    }
    Ok(())
}

fn check_free_space(path: &Path, needed: u64) -> Result<(), SnapshotError> {
    if let Ok(st) = rustix::fs::statvfs(path) {
        let free = st.f_bavail * st.f_frsize;
        if free < needed {
            return Err(SnapshotError::NoSpace { path: PathBuf::from(path), needed, free });
        }
    }
    Ok(())
}

/// `snap-<sandbox>-<UTC time to the ms>-<random>`: unique even for two
/// snapshots in the same second, and never longer than 64 characters.
fn default_id(sandbox: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}t{:02}{:02}{:02}{:03}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    let mut r = [0u8; 2];
    let _ = getrandom::fill(&mut r);
    let suffix = format!("{stamp}-{:02x}{:02x}", r[0], r[1]);
    let room = 64 - "snap-".len() - 1 - suffix.len();
    let name: String = sandbox.chars().take(room).collect();
    let name = name.trim_end_matches(['-', '_']);
    format!("snap-{name}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::default_id;

    #[test]
    fn default_ids_are_valid_unique_and_short() {
        let long = "a".repeat(64);
        for name in ["demo", long.as_str(), "x-"] {
            let a = default_id(name);
            let b = default_id(name);
            assert!(crate::names::validate("snapshot_id", &a).is_ok(), "{a}");
            assert!(a.len() <= 64);
            assert_ne!(a, b);
        }
    }
}
