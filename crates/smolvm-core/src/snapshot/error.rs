//! Errors of snapshot operations. The texts keep the reference tool's
//! wording where users may match on it, and always name the next step.

use std::path::PathBuf;

use crate::agent::AgentError;
use crate::backend::BackendError;
use crate::error::{Coded, ErrorCode};
use crate::lock::LockError;
use crate::names::NameError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Bad snapshot id.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Unknown id.
    #[error("Snapshot '{id}' not found; see existing ones with 'smolvm sandbox snapshot list'")]
    NotFound {
        /// The id.
        id: String,
    },
    /// Id taken.
    #[error("Snapshot '{id}' already exists; pick another --snapshot-id or delete it with 'smolvm sandbox snapshot delete {id}'")]
    Exists {
        /// The id.
        id: String,
    },
    /// The sandbox cannot be snapshotted in this state.
    #[error("Cannot snapshot VM in state '{state}'; start it with 'smolvm sandbox start {vm}' first")]
    WrongState {
        /// Sandbox.
        vm: String,
        /// Its state.
        state: &'static str,
    },
    /// A guard refused the operation.
    #[error("{0}")]
    Refused(String),
    /// Manifest missing, unreadable or hostile.
    #[error("Snapshot '{id}' metadata is unreadable ({reason}); delete it with 'smolvm sandbox snapshot delete {id}' and take a new one")]
    Unreadable {
        /// The id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// An artifact is missing or damaged.
    #[error("Snapshot '{id}' is damaged: {reason}; nothing was changed. Delete it with 'smolvm sandbox snapshot delete {id}'")]
    Damaged {
        /// The id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// Guest flush failed under the `required` policy.
    #[error("Cannot create disk snapshot for sandbox '{vm}' because syncing files inside it failed; retry with 'smolvm sandbox snapshot create {vm} --snapshot-type disk', or pass '--flush-policy best-effort' to accept a crash-consistent disk")]
    Flush {
        /// Sandbox.
        vm: String,
        /// Cause.
        #[source]
        source: AgentError,
    },
    /// Not enough free space.
    #[error("Not enough free space in {path}: {needed} bytes needed, {free} free; free some space or delete old snapshots")]
    NoSpace {
        /// Where.
        path: PathBuf,
        /// Needed bytes.
        needed: u64,
        /// Free bytes.
        free: u64,
    },
    /// Sandbox-level failure.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// VMM failure.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Agent failure.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Lock failure.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// File failure.
    #[error("Cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Coded for SnapshotError {
    fn code(&self) -> ErrorCode {
        match self {
            SnapshotError::Name(_) => ErrorCode::InvalidInput,
            SnapshotError::NotFound { .. } => ErrorCode::NotFound,
            SnapshotError::Sandbox(e) => e.code(),
            SnapshotError::Backend(e) => e.code(),
            SnapshotError::Lock(LockError::Busy { .. }) => ErrorCode::Busy,
            SnapshotError::Refused(_) => ErrorCode::Refused,
            _ => ErrorCode::RuntimeError,
        }
    }
}
