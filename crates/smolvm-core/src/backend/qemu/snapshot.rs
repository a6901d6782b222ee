//! QEMU's side of snapshots: sealing the disk layer with
//! `blockdev-snapshot-sync`, and saving/loading memory with a migration to
//! a file in `mapped-ram` format (QEMU >= 9.0: pages at fixed offsets of a
//! sparse file, only touched pages written, and loading is one pass).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::QemuBackend;
use crate::backend::BackendError;

impl QemuBackend {
    pub(super) fn seal_disk_impl(&self, dir: &Path, top_id: &str, new_top: &Path, new_top_id: &str) -> Result<(), BackendError> {
        let mut qmp = self.qmp(dir)?;
        qmp.execute(
            "blockdev-snapshot-sync",
            Some(json!({
                "node-name": top_id,
                "snapshot-file": new_top.display().to_string(),
                "snapshot-node-name": new_top_id,
                "format": "qcow2",
                "mode": "absolute-paths",
            })),
        )?;
        Ok(())
    }

    pub(super) fn save_memory_impl(&self, dir: &Path, dest: &Path, timeout: Duration) -> Result<(), BackendError> {
        // Created here so the guest's memory is never readable by others.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)
            .map_err(|source| BackendError::Io { path: dest.into(), source })?;
        let mut qmp = self.qmp(dir)?;
        set_mapped_ram(&mut qmp)?;
        qmp.execute("migrate", Some(json!({ "channels": [file_channel(dest)] })))?;
        qmp.wait_migration(timeout)?;
        // A finished outgoing migration leaves the disks inactive; take
        // them back so the paused VM can be resumed or snapshotted again.
        qmp.execute("blockdev-set-active", Some(json!({ "active": true })))?;
        Ok(())
    }

    pub(super) fn load_memory_impl(&self, dir: &Path, src: &Path, timeout: Duration) -> Result<(), BackendError> {
        let mut qmp = self.qmp(dir)?;
        set_mapped_ram(&mut qmp)?;
        qmp.execute("migrate-incoming", Some(json!({ "channels": [file_channel(src)] })))?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = qmp.execute("query-status", None)?;
            match status["status"].as_str().unwrap_or("") {
                "inmigrate" => {}
                "paused" | "running" | "prelaunch" => {
                    let mig = qmp.execute("query-migrate", None)?;
                    if mig["status"] == "failed" {
                        let reason = mig["error-desc"].as_str().unwrap_or("unknown error").to_string();
                        return Err(smolvm_qmp::QmpError::JobFailed { job: "migrate-incoming".into(), reason }.into());
                    }
                    if mig["status"] == "completed" || mig.get("status").is_none() {
                        return Ok(());
                    }
                }
                other => {
                    return Err(smolvm_qmp::QmpError::JobFailed {
                        job: "migrate-incoming".into(),
                        reason: format!("QEMU is in state '{other}'"),
                    }
                    .into())
                }
            }
            if Instant::now() >= deadline {
                return Err(smolvm_qmp::QmpError::Timeout { what: "the memory state to load".into() }.into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl QemuBackend {
    pub(super) fn settle_impl(&self, dir: &Path, resume: bool) -> Result<Option<String>, BackendError> {
        let mut qmp = self.qmp(dir)?;
        let mig = qmp.execute("query-migrate", None)?;
        if matches!(mig["status"].as_str(), Some("active" | "setup" | "device" | "pre-switchover")) {
            qmp.execute("migrate_cancel", None)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let s = qmp.execute("query-migrate", None)?;
                if !matches!(s["status"].as_str(), Some("active" | "setup" | "device" | "pre-switchover" | "cancelling")) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Harmless when the disks are already active.
        let _ = qmp.execute("blockdev-set-active", Some(json!({ "active": true })));
        let status = qmp.execute("query-status", None)?;
        if resume && status["running"] != true {
            qmp.execute("cont", None)?;
        }
        let blocks = qmp.execute("query-block", None)?;
        let top = blocks
            .as_array()
            .and_then(|b| b.iter().find_map(|d| d["inserted"]["node-name"].as_str()))
            .map(str::to_string);
        Ok(top)
    }
}

fn set_mapped_ram(qmp: &mut smolvm_qmp::Qmp<std::os::unix::net::UnixStream>) -> Result<(), BackendError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "mapped-ram", "state": true }] })),
    )?;
    Ok(())
}

/// A structured migration channel: unlike a `file:` URI, a path with
/// commas cannot be misread as options.
fn file_channel(path: &Path) -> serde_json::Value {
    json!({
        "channel-type": "main",
        "addr": { "transport": "file", "filename": path.display().to_string(), "offset": 0 },
    })
}
