//! The Firecracker backend (issue #4). Until it lands, choosing it gives a
//! clear error; `auto` never picks it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Backend, BackendError, BackendKind, LaunchSpec};
use crate::agent::AgentEndpoint;
use crate::image::Image;
use crate::process::ProcessId;

/// The Firecracker backend.
pub struct FirecrackerBackend;

impl FirecrackerBackend {
    /// Reads `SMOLVM_FIRECRACKER_BIN` (unused until the backend lands).
    pub fn from_env() -> Self {
        FirecrackerBackend
    }

    fn unsupported<T>() -> Result<T, BackendError> {
        Err(BackendError::Unsupported(
            "The Firecracker backend is not available in this smolvm yet; use '--backend qemu' (or 'auto')".into(),
        ))
    }
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }
    fn check_installed(&self) -> Result<String, BackendError> {
        Self::unsupported()
    }
    fn create_disk(&self, _: &Image, _: &Path, _: u64) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn launch(&self, _: &LaunchSpec<'_>) -> Result<ProcessId, BackendError> {
        Self::unsupported()
    }
    fn pause(&self, _: &Path) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn resume(&self, _: &Path) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn kill(&self, _: &Path, process: &ProcessId, grace: Duration) -> Result<(), BackendError> {
        process.terminate(grace);
        Ok(())
    }
    fn seal_disk(&self, _: &Path, _: &str, _: &Path, _: &str) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn save_memory(&self, _: &Path, _: &Path, _: Duration) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn load_memory(&self, _: &Path, _: &Path, _: Duration) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn branch_disk(&self, _: &Path, _: &Path) -> Result<(), BackendError> {
        Self::unsupported()
    }
    fn agent_endpoint(&self, dir: &Path) -> AgentEndpoint {
        AgentEndpoint::VsockUds { path: dir.join("vsock.sock"), port: smolvm_proto::AGENT_VSOCK_PORT }
    }
    fn runtime_files(&self, dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("api.sock"), dir.join("vsock.sock")]
    }
}
