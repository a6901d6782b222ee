//! `snapshot restore`: back into the snapshot's own sandbox identity.
//! Everything is validated before the sandbox is touched; a failure after
//! that leaves the sandbox on its previous, untouched disk chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::manifest::SnapshotType;
use super::{load, lock, Loaded, SnapshotError, SnapshotView, RESTORED_MARK};
use crate::agent;
use crate::backend::{AnyBackend, Backend, LaunchSpec};
use crate::layers::Layers;
use crate::paths::create_private_dir;
use crate::process::ProcessId;
use crate::sandbox::{crash_point, Engine, Journal, MemoryBase, Progress, SandboxStatus};
use crate::store::SandboxRow;

/// A `snapshot restore` request.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Leave the sandbox running (else paused).
    pub resume: bool,
    /// Restore a snapshot already marked restored.
    pub force: bool,
    /// Restore into a new sandbox of this name (its own identity) instead
    /// of the snapshot's own sandbox.
    pub as_name: Option<String>,
    /// Port forwards of the new sandbox (`as_name` only; the source's host
    /// ports stay with the source).
    pub ports: Vec<crate::sandbox::PortForward>,
}

/// What a restore produced.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreOutcome {
    /// The snapshot, re-read (now marked restored).
    pub snapshot: SnapshotView,
    /// The sandbox's name.
    pub vm: String,
    /// Its status.
    pub status: SandboxStatus,
    /// Milliseconds from the start of the restore to the guest running
    /// with its clock set (or paused and ready).
    pub restore_ms: u64,
    /// Of those, milliseconds the VMM took to load the saved machine
    /// (merging memory deltas included); 0 for `disk` snapshots.
    pub load_ms: u64,
}

/// Restores a snapshot; see the module docs.
pub fn restore(engine: &Engine, req: &RestoreRequest, progress: &dyn Progress) -> Result<RestoreOutcome, SnapshotError> {
    let started = std::time::Instant::now();
    if let Some(n) = &req.as_name {
        crate::names::validate("sandbox name", n).map_err(crate::sandbox::SandboxError::from)?;
    }
    let _snap_lock = lock(engine, &req.snapshot_id)?;
    let snap = load(engine, &req.snapshot_id)?;
    let new_identity = req.as_name.is_some();
    let name = req.as_name.clone().unwrap_or_else(|| snap.manifest.vm_id.clone());
    let _vm_lock = engine.lock(&name)?;
    let existing = match engine.get(&name) {
        Ok(row) => Some(row),
        Err(crate::sandbox::SandboxError::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if new_identity && existing.is_some() {
        return Err(crate::sandbox::SandboxError::Exists { name }.into());
    }
    if !new_identity {
        check_restore_marks(&snap, req, existing.as_ref())?;
    }
    verify_artifacts(engine, &snap)?;
    let memory = memory_chain(engine, &snap)?;
    let image = engine.images().get(&snap.manifest.vm_config.image).map_err(crate::sandbox::SandboxError::from)?;
    let backend = AnyBackend::new(snap.manifest.backend);
    let vmm_version = backend.check_installed()?;
    let state = snap.manifest.state_file.as_ref().map(|f| snap.dir.join(f));
    backend.check_restorable(&snap.manifest.vmm_version, state.as_deref())?;
    let plan = Plan { memory, vmm_version };

    // Validation is over: from here on the sandbox changes.
    engine.begin(
        &name,
        &Journal {
            op: "restore".into(),
            snapshot_id: req.snapshot_id.clone(),
            tmp_dir: None,
            was_running: existing.as_ref().is_some_and(|r| r.status == SandboxStatus::Running),
            chain_before: existing.as_ref().map(|r| r.disk_chain.clone()).unwrap_or_default(),
            created_row: existing.is_none(),
        },
    )?;
    crash_point("restore.journaled");
    let outcome = restore_journaled(engine, req, &snap, &plan, &name, existing, &image, &backend, progress, started);
    engine.finish(&name);
    outcome
}

#[allow(clippy::too_many_arguments)]
fn restore_journaled(
    engine: &Engine,
    req: &RestoreRequest,
    snap: &Loaded,
    plan: &Plan,
    name: &str,
    existing: Option<SandboxRow>,
    image: &crate::image::Image,
    backend: &AnyBackend,
    progress: &dyn Progress,
    started: std::time::Instant,
) -> Result<RestoreOutcome, SnapshotError> {
    let name = name.to_string();
    let new_identity = req.as_name.is_some();
    if let Some(row) = &existing {
        if let Some(process) = row.process.filter(|_| row.status.has_vmm()) {
            progress.step(&format!("Stopping sandbox '{name}'"));
            backend.kill(&engine.dir(&name), &process, Duration::from_secs(2))?;
        }
        engine.store().set_status(&name, SandboxStatus::Stopped, None)?;
    }
    crash_point("restore.stopped");
    let new_top = Layers::new_id();
    let mut chain = snap.manifest.disk_chain.clone();
    chain.push(new_top.clone());
    let mut config = snap.manifest.vm_config.clone();
    config.vmm_version = Some(plan.vmm_version.clone());
    if new_identity {
        config.mac = crate::sandbox::random_mac();
        config.ports = req.ports.clone();
    }
    let new_row = SandboxRow {
        name: name.clone(),
        status: SandboxStatus::Created,
        config,
        disk_chain: chain.clone(),
        process: None,
        created_at: existing.as_ref().map(|r| r.created_at.clone()).unwrap_or_else(crate::now_rfc3339),
        updated_at: crate::now_rfc3339(),
    };
    // The new chain is recorded before its top layer file exists, so a
    // concurrent layer garbage collection never removes it under the VMM.
    match &existing {
        None => engine.store().insert_sandbox(&new_row)?,
        Some(_) => engine.store().set_disk_chain(&name, &new_row.disk_chain)?,
    }
    let attempt = launch_from(engine, backend, snap, plan, &new_row, image, req.resume, new_identity, progress);
    match attempt {
        Ok((process, status, load_ms)) => {
            crash_point("restore.launched");
            if !plan.memory.is_empty() {
                // Its change tracking starts from this snapshot's memory.
                MemoryBase::write(&engine.dir(&name), &req.snapshot_id, process);
            }
            engine.store().set_config(&name, &new_row.config)?;
            engine.store().set_disk_chain(&name, &chain)?;
            engine.store().set_status(&name, status, Some(process))?;
            if !new_identity {
                engine.store().mark_snapshot_restored(&req.snapshot_id, &name)?;
                let _ = std::fs::write(snap.dir.join(RESTORED_MARK), format!("{name}\n"));
            }
            let _ = engine.collect_layer_garbage();
            let snapshot = load(engine, &req.snapshot_id)?.view(engine);
            Ok(RestoreOutcome { snapshot, vm: name, status, restore_ms: started.elapsed().as_millis() as u64, load_ms })
        }
        Err(e) => {
            let _ = std::fs::remove_file(engine.layers().path(&new_top));
            match existing {
                // The previous disk chain was never touched: the sandbox
                // is simply stopped on it.
                Some(row) => {
                    let _ = engine.store().set_disk_chain(&name, &row.disk_chain);
                    let _ = engine.store().set_status(&name, SandboxStatus::Stopped, None);
                }
                None => {
                    let _ = engine.store().delete_sandbox(&name);
                    let _ = std::fs::remove_dir_all(engine.dir(&name));
                }
            }
            Err(e)
        }
    }
}

/// The one-shot restore mark: a second restore of the same memory into its
/// own identity needs --force, and never while that sandbox runs from it.
fn check_restore_marks(snap: &Loaded, req: &RestoreRequest, existing: Option<&SandboxRow>) -> Result<(), SnapshotError> {
    if snap.restored && !req.force {
        return Err(SnapshotError::Refused(format!(
            "Snapshot already restored; restoring it again resumes the same memory (same random state) twice. Pass --force to do it anyway: 'smolvm sandbox snapshot restore {} --force', or restore it into a new sandbox with '--as NAME'",
            req.snapshot_id
        )));
    }
    if snap.restored {
        if let Some(row) = existing.filter(|r| r.status.has_vmm()) {
            if snap.restored_vm_id.as_deref() == Some(row.name.as_str()) {
                return Err(SnapshotError::Refused(format!(
                    "Snapshot is already backing an active restored VM: sandbox '{0}' runs from it; stop it first with 'smolvm sandbox stop {0}', then restore with --force",
                    row.name
                )));
            }
        }
    }
    Ok(())
}

/// What validation found out, for the launch.
struct Plan {
    /// Memory files, a self-contained one first, then the deltas over it
    /// (empty for `disk` snapshots).
    memory: Vec<PathBuf>,
    /// The VMM that will run the sandbox.
    vmm_version: String,
}

/// The memory a restore loads: the snapshot's memory file and, when it is
/// a delta, its bases' down to a self-contained one, each checked against
/// its manifest.
fn memory_chain(engine: &Engine, snap: &Loaded) -> Result<Vec<PathBuf>, SnapshotError> {
    let Some(file) = &snap.manifest.memory_file else { return Ok(Vec::new()) };
    let mut chain = vec![snap.dir.join(file)];
    let mut seen = vec![snap.manifest.snapshot_id.clone()];
    let mut next = snap.manifest.memory_base.clone();
    while let Some(id) = next {
        let damaged = |reason: String| SnapshotError::Damaged { id: snap.manifest.snapshot_id.clone(), reason };
        if seen.contains(&id) || seen.len() > 4096 {
            return Err(damaged(format!("its memory chain loops at '{id}'")));
        }
        let base = load(engine, &id).map_err(|e| damaged(format!("its memory builds on snapshot '{id}', which cannot be read ({e})")))?;
        let Some(file) = &base.manifest.memory_file else {
            return Err(damaged(format!("its memory builds on snapshot '{id}', which has no memory")));
        };
        let path = base.dir.join(file);
        let check = super::integrity::verify(&base.manifest, &base.dir, &engine.layers())
            .into_iter()
            .find(|c| Path::new(&c.path) == path && c.status != "ok");
        if let Some(c) = check {
            return Err(damaged(format!("the memory of its base snapshot '{id}' is {} ({})", c.status.replace('_', " "), c.detail)));
        }
        chain.push(path);
        seen.push(id);
        next = base.manifest.memory_base.clone();
    }
    chain.reverse();
    Ok(chain)
}

/// Checks every file the restore will need against the manifest's sizes
/// and hashes, before anything changes.
fn verify_artifacts(engine: &Engine, snap: &Loaded) -> Result<(), SnapshotError> {
    let problems: Vec<String> = super::integrity::verify(&snap.manifest, &snap.dir, &engine.layers())
        .into_iter()
        .filter(|c| c.status != "ok")
        .map(|c| format!("{} is {} ({})", c.path, c.status.replace('_', " "), c.detail))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(SnapshotError::Damaged { id: snap.manifest.snapshot_id.clone(), reason: problems.join("; ") })
}

/// Starts the VMM on a fresh layer over the snapshot's disk and loads its
/// memory; for `disk` snapshots, boots from the disk.
#[allow(clippy::too_many_arguments)]
fn launch_from(
    engine: &Engine,
    backend: &AnyBackend,
    snap: &Loaded,
    plan: &Plan,
    row: &SandboxRow,
    image: &crate::image::Image,
    resume: bool,
    new_identity: bool,
    progress: &dyn Progress,
) -> Result<(ProcessId, SandboxStatus, u64), SnapshotError> {
    let dir = engine.dir(&row.name);
    create_private_dir(&dir).map_err(|source| SnapshotError::Io { path: dir.clone(), source })?;
    let top_id = row.disk_chain.last().cloned().unwrap_or_default();
    let sealed = &snap.manifest.disk_chain[snap.manifest.disk_chain.len() - 1];
    let top = engine.layers_for(snap.manifest.backend).path(&top_id);
    backend.branch_disk(&engine.layers().path(sealed), &top)?;
    let memory = snap.manifest.memory_file.as_ref().map(|f| snap.dir.join(f));
    let state = snap.manifest.state_file.as_ref().map(|f| snap.dir.join(f));
    let has_agent = image.ready.has_agent();
    let has_memory = snap.manifest.snapshot_type != SnapshotType::Disk;
    let spec = LaunchSpec {
        name: &row.name,
        dir: &dir,
        config: &row.config,
        image,
        disk: &top,
        disk_id: &top_id,
        paused: true,
        incoming: memory.as_deref(),
    };
    progress.step("Starting the VMM");
    let console_from = crate::sandbox::console_offset(&dir);
    let process = backend.launch(&spec)?;
    let mut load_ms = 0;
    let result = (|| {
        if memory.is_some() {
            progress.step("Loading memory");
            let chain: Vec<&Path> = plan.memory.iter().map(PathBuf::as_path).collect();
            // Resumed at once when nothing needs doing in between.
            let resume_now = resume && !new_identity;
            let timeout = Duration::from_secs(30 + u64::from(row.config.memory_mib) / 16);
            let t = std::time::Instant::now();
            backend.load_memory(&dir, &chain, state.as_deref(), resume_now, timeout)?;
            load_ms = t.elapsed().as_millis() as u64;
        }
        // A new identity is set through the agent, so the guest runs at
        // least briefly even when it is to be left paused.
        if !resume && !new_identity {
            return Ok(SandboxStatus::Paused);
        }
        backend.resume(&dir)?;
        if has_memory {
            if has_agent {
                progress.step("Setting the guest clock");
                engine.refresh_guest(&row.name, backend)?;
            }
        } else {
            crate::sandbox::wait_guest_ready(&row.name, &dir, image, backend, &process, console_from, Duration::from_secs(60), progress)?;
        }
        if new_identity && has_agent {
            // A copy must not look like its source: own hostname and machine-id.
            let mut session = agent::connect(&backend.agent_endpoint(&dir), Duration::from_secs(10))?;
            session.set_identity(&crate::sandbox::hostname_for(&row.name), &crate::sandbox::random_machine_id())?;
        }
        if !resume {
            backend.pause(&dir)?;
            return Ok(SandboxStatus::Paused);
        }
        Ok(SandboxStatus::Running)
    })();
    match result {
        Ok(status) => Ok((process, status, load_ms)),
        Err(e) => {
            let _ = backend.kill(&dir, &process, Duration::from_secs(2));
            Err(e)
        }
    }
}
