//! `sandbox fork`: new sandboxes from one running (or paused) source,
//! through an implicit full snapshot. The children share the sealed disk
//! layers copy-on-write; each gets its own name, MAC, hostname,
//! machine-id, clock and fresh entropy. The implicit snapshot is deleted
//! afterwards (the layers stay while a child uses them).

use std::time::Instant;

use serde::Serialize;

use super::{create, delete, restore, CreateRequest, FlushPolicy, RestoreRequest, SnapshotError, SnapshotType};
use crate::sandbox::{Engine, Progress, SandboxError, SandboxInfo};

/// What a fork produced.
#[derive(Debug, Clone, Serialize)]
pub struct ForkOutcome {
    /// The source sandbox.
    pub source: String,
    /// The new sandboxes.
    pub children: Vec<SandboxInfo>,
    /// Source pause window (ms).
    pub pause_ms: u64,
    /// Milliseconds until every child was running with its identity set.
    pub total_ms: u64,
}

/// Forks `source` into sandboxes named `names` (all left running).
pub fn fork(engine: &Engine, source: &str, names: &[String], progress: &dyn Progress) -> Result<ForkOutcome, SnapshotError> {
    let started = Instant::now();
    for n in names {
        crate::names::validate("sandbox name", n).map_err(SandboxError::from)?;
        if engine.store().get_sandbox(n)?.is_some() {
            return Err(SandboxError::Exists { name: n.clone() }.into());
        }
    }
    if names.is_empty() {
        return Err(SandboxError::InvalidInput("give at least one name for the new sandboxes".into()).into());
    }
    let was_running = engine.get(source)?.status == crate::sandbox::SandboxStatus::Running;
    progress.step(&format!("Capturing '{source}'"));
    let snap = create(
        engine,
        &CreateRequest {
            sandbox: source.to_string(),
            snapshot_id: None,
            snapshot_type: SnapshotType::Full,
            resume_source: was_running,
            flush_policy: FlushPolicy::Required,
        },
        progress,
    )?;
    let mut children = Vec::new();
    let mut failure = None;
    for n in names {
        progress.step(&format!("Starting '{n}'"));
        let req = RestoreRequest {
            snapshot_id: snap.snapshot_id.clone(),
            resume: true,
            force: false,
            as_name: Some(n.clone()),
            ports: Vec::new(),
        };
        match restore(engine, &req, progress).and_then(|_| Ok(engine.info(n)?)) {
            Ok(info) => children.push(info),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let _ = delete(engine, &snap.snapshot_id);
    if let Some(e) = failure {
        // All or nothing: children already started are removed again.
        for c in &children {
            let _ = engine.delete(&c.name);
        }
        return Err(e);
    }
    Ok(ForkOutcome { source: source.into(), children, pause_ms: snap.pause_ms, total_ms: started.elapsed().as_millis() as u64 })
}
