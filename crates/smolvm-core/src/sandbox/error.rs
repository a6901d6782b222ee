//! Errors of sandbox lifecycle operations.

use std::path::PathBuf;

use crate::agent::AgentError;
use crate::backend::BackendError;
use crate::error::{Coded, ErrorCode};
use crate::image::ImageError;
use crate::lock::LockError;
use crate::names::NameError;
use crate::store::StoreError;

/// Why a sandbox operation failed. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A value out of range or malformed.
    #[error("{0}")]
    InvalidInput(String),
    /// No such sandbox.
    #[error("Sandbox '{name}' not found; see existing ones with 'smolvm sandbox list --all'")]
    NotFound {
        /// The name.
        name: String,
    },
    /// Name taken.
    #[error("Sandbox '{name}' already exists; pick another --name or delete it with 'smolvm sandbox delete {name}'")]
    Exists {
        /// The name.
        name: String,
    },
    /// Wrong state for the operation.
    #[error("Cannot {op} sandbox '{name}' in state '{state}'; {hint}")]
    InvalidState {
        /// The name.
        name: String,
        /// What was attempted.
        op: &'static str,
        /// Current state.
        state: &'static str,
        /// What to do instead.
        hint: String,
    },
    /// The guest did not become ready.
    #[error("Sandbox '{name}' did not become ready: {reason}; see its console with 'smolvm sandbox logs {name}'")]
    Boot {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Image problem.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// VMM problem.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Agent problem.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// State store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Lock problem.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// File system problem.
    #[error("Cannot use {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl Coded for SandboxError {
    fn code(&self) -> ErrorCode {
        match self {
            SandboxError::Name(_) | SandboxError::InvalidInput(_) | SandboxError::Exists { .. } => ErrorCode::InvalidInput,
            SandboxError::NotFound { .. } => ErrorCode::NotFound,
            SandboxError::InvalidState { .. } => ErrorCode::NotRunning,
            SandboxError::Boot { .. } => ErrorCode::RuntimeError,
            SandboxError::Image(e) => e.code(),
            SandboxError::Backend(e) => e.code(),
            SandboxError::Agent(e) => e.code(),
            SandboxError::Store(e) => e.code(),
            SandboxError::Lock(LockError::Busy { .. }) => ErrorCode::Busy,
            SandboxError::Lock(_) | SandboxError::Io { .. } => ErrorCode::RuntimeError,
        }
    }
}
