//! Recovery from a `smolvm` process that died mid-operation (kill -9,
//! power loss). Every multi-step operation on a sandbox writes a journal
//! in the sandbox directory before its first change and removes it after
//! its last; whoever takes the sandbox lock next finds the journal (its
//! writer is dead: the lock was free) and finishes or undoes the work:
//!
//! - a VMM that no row records (launched by a crashed create or restore)
//!   is killed;
//! - a VMM left paused, mid-migration or with inactive disks by a crashed
//!   snapshot is settled and resumed if it was running;
//! - the recorded disk chain is corrected to the layer the VMM really runs on;
//! - unpublished snapshot directories are removed, published ones indexed;
//! - a row still in `created` (a create or restore that never finished) is
//!   removed with its directory.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Engine, SandboxError, SandboxStatus};
use crate::backend::{AnyBackend, Backend};
use crate::process::ProcessId;

/// Journal file name inside the sandbox directory.
pub(crate) const JOURNAL: &str = "operation.json";
/// The VMM's pid file inside the sandbox directory.
pub const PIDFILE: &str = "vmm.pid";

/// An operation in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Journal {
    /// "snapshot" or "restore".
    pub op: String,
    /// The snapshot involved.
    pub snapshot_id: String,
    /// Temporary snapshot directory name (in `snapshots/`), if any.
    pub tmp_dir: Option<String>,
    /// Whether the sandbox was running when the operation began.
    pub was_running: bool,
    /// The disk chain before the operation.
    pub chain_before: Vec<String>,
    /// Whether the operation created the sandbox row (restore of a deleted sandbox).
    pub created_row: bool,
}

/// Aborts the process at a named step when `SMOLVM_CRASH_AT` names it:
/// the crash-injection tests use it to prove every step is recoverable.
pub fn crash_point(step: &str) {
    if std::env::var("SMOLVM_CRASH_AT").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

impl Engine {
    /// Records an operation before its first change.
    pub(crate) fn begin(&self, name: &str, journal: &Journal) -> Result<(), SandboxError> {
        let dir = self.data().sandbox(name);
        crate::paths::create_private_dir(&dir).map_err(|source| SandboxError::Io { path: dir.clone(), source })?;
        let path = dir.join(JOURNAL);
        let tmp = dir.join(".operation.json.tmp");
        let text = serde_json::to_vec(journal).map_err(|e| SandboxError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|source| SandboxError::Io { path, source })
    }

    /// Marks the operation finished.
    pub(crate) fn finish(&self, name: &str) {
        let _ = std::fs::remove_file(self.data().sandbox(name).join(JOURNAL));
    }

    /// Repairs what a crashed command left for sandbox `name`. The caller
    /// holds the sandbox lock.
    pub(crate) fn recover(&self, name: &str) -> Result<(), SandboxError> {
        let dir = self.data().sandbox(name);
        let journal = read_journal(&dir);
        let row = self.store().get_sandbox(name)?;
        let backend = row.as_ref().map(|r| AnyBackend::new(r.config.backend));
        // A VMM the row does not record belongs to a crashed launch.
        if let Some(stray) = stray_vmm(&dir, row.as_ref().and_then(|r| r.process)) {
            tracing::warn!(sandbox = name, pid = stray.pid, "killing a VMM left by a crashed command");
            stray.terminate(Duration::from_secs(2));
        }
        if let Some(j) = &journal {
            tracing::warn!(sandbox = name, op = %j.op, "finishing an operation a crashed command left");
            if let Some(tmp) = j.tmp_dir.as_deref().filter(|t| t.starts_with(".tmp-") && !t.contains('/')) {
                let _ = std::fs::remove_dir_all(self.data().snapshots().join(tmp));
            }
            crate::snapshot::index_if_published(self, &j.snapshot_id);
        }
        let Some(row) = row else {
            // No row: whatever the directory holds belongs to nothing.
            if journal.is_some() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Ok(());
        };
        let backend = backend.unwrap_or_else(|| AnyBackend::new(row.config.backend));
        let alive = row.process.is_some_and(|p| p.is_alive());
        match (&journal, alive) {
            (Some(j), _) if j.op == "restore" && j.created_row && !alive => {
                self.remove_half_created(name)?;
                return Ok(());
            }
            (Some(j), false) if j.op == "restore" => {
                self.store().set_disk_chain(name, &j.chain_before)?;
                self.store().set_status(name, SandboxStatus::Stopped, None)?;
            }
            (Some(j), true) if j.op == "snapshot" => {
                let top = backend.settle(&dir, j.was_running)?;
                if let Some(top) = top {
                    if let Some(pos) = row.disk_chain.iter().position(|l| *l == top) {
                        self.store().set_disk_chain(name, &row.disk_chain[..=pos])?;
                    }
                }
                let status = if j.was_running { SandboxStatus::Running } else { SandboxStatus::Paused };
                self.store().set_status(name, status, row.process)?;
            }
            _ => {}
        }
        if journal.is_none() && row.status == SandboxStatus::Created && !alive {
            // A create that never finished.
            self.remove_half_created(name)?;
            return Ok(());
        }
        self.finish(name);
        Ok(())
    }

    fn remove_half_created(&self, name: &str) -> Result<(), SandboxError> {
        let dir = self.data().sandbox(name);
        let _ = std::fs::remove_dir_all(&dir);
        self.store().delete_sandbox(name)?;
        self.collect_layer_garbage()?;
        Ok(())
    }
}

fn read_journal(dir: &Path) -> Option<Journal> {
    let text = std::fs::read(dir.join(JOURNAL)).ok()?;
    if text.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice(&text).ok()
}

/// The VMM named by the sandbox's pid file, when it is alive, works in
/// this sandbox directory, and is not the one the row records.
fn stray_vmm(dir: &Path, recorded: Option<ProcessId>) -> Option<ProcessId> {
    let text = std::fs::read_to_string(dir.join(PIDFILE)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    let process = ProcessId::of(pid)?;
    if recorded.is_some_and(|r| r == process) || !process.is_alive() {
        return None;
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    (cwd == dir.canonicalize().ok()?).then_some(process)
}
