//! smolvm's own snapshots, measured: `create` through the library (the
//! reference is driven in-process too, so neither pays a CLI start), and
//! restore-to-first-exec through the `smolvm` binary, as a user runs it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use smolvm_core::snapshot::{self, CreateRequest, FlushPolicy, SnapshotType};

use crate::harness::{Bench, Quiet};
use crate::sys;

/// One snapshot create, measured.
#[derive(Debug, Clone)]
pub struct CreateSample {
    /// Wall time of the create call (ms).
    pub wall_ms: f64,
    /// Guest pause window (ms).
    pub pause_ms: f64,
    /// Bytes written to storage while it ran (VMM + this process and its children).
    pub bytes_written: f64,
    /// The VMM's part of `bytes_written`.
    pub vmm_bytes: f64,
    /// Allocated bytes the snapshot holds.
    pub size_on_disk: f64,
    /// Bytes a restore must read back (memory file, allocated).
    pub restore_bytes: f64,
    /// A `sync` right after it returned: writing back what it left dirty
    /// in the page cache (ms; set by the caller).
    pub sync_after_ms: f64,
}

/// Parses a type name.
pub fn snapshot_type(name: &str) -> SnapshotType {
    match name {
        "diff" => SnapshotType::Diff,
        "disk" => SnapshotType::Disk,
        _ => SnapshotType::Full,
    }
}

/// `snapshot create NAME --snapshot-id ID --snapshot-type TY --resume-source`.
pub fn create(b: &Bench, name: &str, id: &str, ty: &str) -> Result<CreateSample> {
    let vmm = b.vmm_pid(name)?.to_string();
    let (vmm0, own0) = (sys::write_bytes(&vmm), sys::write_bytes("self"));
    let req = CreateRequest {
        sandbox: name.to_string(),
        snapshot_id: Some(id.to_string()),
        snapshot_type: snapshot_type(ty),
        resume_source: true,
        flush_policy: FlushPolicy::Required,
    };
    let t = Instant::now();
    let view = snapshot::create(&b.engine, &req, &Quiet)
        .map_err(|e| anyhow!("snapshot create {id}: {e}"))?;
    let wall = t.elapsed();
    let vmm_bytes = sys::write_bytes(&vmm).saturating_sub(vmm0);
    let own_bytes = sys::write_bytes("self").saturating_sub(own0);
    let dir = b.engine.data().snapshot(id);
    let memory = view
        .artifacts
        .memory_path
        .as_deref()
        .map(sys::allocated)
        .unwrap_or(0);
    let size = sys::allocated_tree(&dir) + sys::allocated(&view.artifacts.disk_path);
    Ok(CreateSample {
        wall_ms: wall.as_secs_f64() * 1000.0,
        pause_ms: view.pause_ms as f64,
        bytes_written: (vmm_bytes + own_bytes) as f64,
        vmm_bytes: vmm_bytes as f64,
        size_on_disk: size as f64,
        restore_bytes: memory as f64,
        sync_after_ms: 0.0,
    })
}

/// One restore, measured.
#[derive(Debug, Clone)]
pub struct RestoreSample {
    /// From the start of `snapshot restore --resume` to the first
    /// `exec -- true` answered (ms).
    pub to_first_exec_ms: f64,
    /// What the product itself reports (`restore_ms`).
    pub reported_ms: f64,
}

/// `smolvm sandbox snapshot restore ID --resume` then `smolvm sandbox exec NAME -- true`.
pub fn restore(b: &Bench, name: &str, id: &str) -> Result<RestoreSample> {
    let t = Instant::now();
    let (data, _) = b.cli_json(&["sandbox", "snapshot", "restore", id, "--resume"])?;
    b.exec_true_cli(name, Duration::from_secs(90))?;
    Ok(RestoreSample {
        to_first_exec_ms: t.elapsed().as_secs_f64() * 1000.0,
        reported_ms: data["restore_ms"].as_f64().unwrap_or(f64::NAN),
    })
}
