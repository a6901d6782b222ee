//! One backend trait, with QEMU and Firecracker side by side behind it.
//!
//! The engine (`sandbox`, `snapshot`) never knows which VMM runs a
//! sandbox: it calls [`Backend`] methods on an [`AnyBackend`], a closed
//! enum that dispatches by `match` (the set of backends is ours, so no
//! `dyn` is needed).

pub mod accel;
pub mod firecracker;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent::AgentEndpoint;
use crate::error::{Coded, ErrorCode};
use crate::image::Image;
use crate::process::ProcessId;
use crate::sandbox::SandboxConfig;
use accel::Accel;

/// Which VMM runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// QEMU (`qemu-system-x86_64`).
    Qemu,
    /// Firecracker.
    Firecracker,
}

impl BackendKind {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        }
    }

    /// File name extension of this backend's disk layers in
    /// `<data>/layers/`: qcow2 overlays for QEMU, raw ext4 files for
    /// Firecracker (which has no image formats).
    pub fn layer_extension(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qcow2",
            BackendKind::Firecracker => "raw",
        }
    }
}

/// Everything a backend needs to start a VM.
pub struct LaunchSpec<'a> {
    /// Sandbox name.
    pub name: &'a str,
    /// The sandbox directory (sockets and logs live here).
    pub dir: &'a Path,
    /// The sandbox's configuration.
    pub config: &'a SandboxConfig,
    /// The guest image.
    pub image: &'a Image,
    /// The writable root disk (the top of the sandbox's layer chain).
    pub disk: &'a Path,
    /// The top layer's id (QEMU names its block node after it).
    pub disk_id: &'a str,
    /// Start with the vCPUs stopped.
    pub paused: bool,
    /// Load this saved machine state instead of booting (restore).
    pub incoming: Option<&'a Path>,
}

/// Failures of a VMM operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The VMM program is not installed.
    #[error("{program} is not installed or not on PATH; {install_hint}")]
    NotInstalled {
        /// The program looked for.
        program: String,
        /// How to install it.
        install_hint: String,
    },
    /// The VMM could not be started.
    #[error("Cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM exited while we waited for it.
    #[error("The VMM exited early; its last output: {log_tail}")]
    ExitedEarly {
        /// Tail of the VMM's log.
        log_tail: String,
    },
    /// The VMM's control channel failed.
    #[error("The VMM's control channel failed")]
    Qmp(#[from] smolvm_qmp::QmpError),
    /// A disk tool failed.
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// Which tool (e.g. "qemu-img create").
        tool: String,
        /// Its stderr.
        stderr: String,
    },
    /// A local file operation failed.
    #[error("Cannot use {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend cannot do this (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The VMM's HTTP control API failed (Firecracker).
    #[error("{vmm} failed while {what}")]
    ControlApi {
        /// The VMM.
        vmm: &'static str,
        /// What we asked it to do.
        what: String,
        /// Cause (carries the VMM's own fault message).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The installed VMM cannot load this snapshot.
    #[error("{0}")]
    Incompatible(String),
}

impl Coded for BackendError {
    fn code(&self) -> ErrorCode {
        match self {
            BackendError::NotInstalled { .. } => ErrorCode::MissingDependency,
            BackendError::Unsupported(_) => ErrorCode::InvalidInput,
            BackendError::Incompatible(_) => ErrorCode::Refused,
            _ => ErrorCode::RuntimeError,
        }
    }
}

/// What every VMM backend provides.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Checks the VMM is installed; returns its version string.
    fn check_installed(&self) -> Result<String, BackendError>;
    /// Creates the sandbox's root disk at `dest` as a copy-on-write layer
    /// over the image's root filesystem (a qcow2 overlay, or a reflinked
    /// or sparse raw copy), `size_mib` large.
    fn create_disk(&self, image: &Image, dest: &Path, size_mib: u64) -> Result<(), BackendError>;
    /// Starts the VMM; returns once its control channel answers.
    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<ProcessId, BackendError>;
    /// Stops the vCPUs.
    fn pause(&self, dir: &Path) -> Result<(), BackendError>;
    /// Restarts the vCPUs.
    fn resume(&self, dir: &Path) -> Result<(), BackendError>;
    /// Ends the VMM: a clean quit through its control channel, then
    /// SIGTERM/SIGKILL after `grace`. Idempotent.
    fn kill(&self, dir: &Path, process: &ProcessId, grace: Duration) -> Result<(), BackendError>;
    /// Seals the running VM's top disk layer: the VM continues on a new
    /// top layer at `new_top` (id `new_top_id`): an empty overlay backed
    /// by the old top (QEMU), or a copy-on-write clone of it (raw layers);
    /// the old top (`top_id`) never changes again. The VM must be paused
    /// or quiesced.
    fn seal_disk(&self, dir: &Path, top_id: &str, new_top: &Path, new_top_id: &str) -> Result<(), BackendError>;
    /// Writes the paused VM's memory and device state to `dest.memory`
    /// (and `dest.state`, for backends that keep device state in a file of
    /// its own), created 0600; the VM stays paused and usable. With
    /// `want_delta` the backend may write only the memory changed since
    /// the VM's last snapshot or load (see [`SavedMemory::delta`]).
    fn save_memory(&self, dir: &Path, dest: &MemoryFiles<'_>, want_delta: bool, timeout: Duration) -> Result<SavedMemory, BackendError>;
    /// Called once the guest runs again, before the memory file is hashed:
    /// a chance to shrink it (e.g. turn zero pages into holes). Returns the
    /// bytes freed.
    fn compact_memory(&self, memory: &Path, delta: bool) -> Result<u64, BackendError> {
        let _ = (memory, delta);
        Ok(0)
    }
    /// Loads a saved machine into a VM that was launched with
    /// `LaunchSpec::incoming`. `chain` is the memory: a self-contained
    /// file, then the deltas written over it, oldest first. The VM stays
    /// paused unless `resume`.
    fn load_memory(&self, dir: &Path, chain: &[&Path], state: Option<&Path>, resume: bool, timeout: Duration) -> Result<(), BackendError>;
    /// Writes `dest` as one self-contained memory file equal to `chain`
    /// (a self-contained file and its deltas, oldest first), verified.
    fn merge_memory(&self, chain: &[&Path], dest: &Path) -> Result<(), BackendError> {
        let _ = (chain, dest);
        Err(BackendError::Unsupported(format!("The {} backend writes no memory deltas to merge", self.kind().as_str())))
    }
    /// Refuses a restore this VMM cannot load: `recorded_version` is what
    /// `check_installed` said when the snapshot was taken, `state` its
    /// device-state file if it has one.
    fn check_restorable(&self, recorded_version: &str, state: Option<&Path>) -> Result<(), BackendError> {
        let _ = (recorded_version, state);
        Ok(())
    }
    /// Creates `dest` as a new writable layer on the sealed layer `parent`
    /// (an overlay, or a copy-on-write clone).
    fn branch_disk(&self, parent: &Path, dest: &Path) -> Result<(), BackendError>;
    /// Brings a VMM that a crashed command left mid-operation (paused,
    /// migrating, disks inactive) back to a usable state, running again if
    /// `resume`; returns the id of the disk layer it runs on, if known.
    fn settle(&self, dir: &Path, resume: bool) -> Result<Option<String>, BackendError> {
        let _ = (dir, resume);
        Ok(None)
    }
    /// How to reach the guest agent.
    fn agent_endpoint(&self, dir: &Path) -> AgentEndpoint;
    /// Files of a sandbox directory that are runtime state (sockets,
    /// locks) and are removed when the VMM stops.
    fn runtime_files(&self, dir: &Path) -> Vec<PathBuf>;
    /// Whether `--backend auto` may pick this backend on this host.
    fn usable_for_auto(&self) -> bool {
        true
    }
    /// The only acceleration this backend runs guests with, if it has no
    /// choice (else `--accel` decides).
    fn fixed_accel(&self) -> Option<Accel> {
        None
    }
    /// Refuses a configuration this backend cannot run.
    fn validate_config(&self, config: &SandboxConfig) -> Result<(), BackendError> {
        let _ = config;
        Ok(())
    }
    /// The guest's network address, when it has one the host can reach.
    fn guest_ip(&self, dir: &Path, config: &SandboxConfig) -> Option<String>;
}

/// Where `save_memory` writes.
#[derive(Debug, Clone, Copy)]
pub struct MemoryFiles<'a> {
    /// Guest memory (for QEMU: memory and device state).
    pub memory: &'a Path,
    /// Device state, for backends that keep it apart from memory.
    pub state: &'a Path,
}

/// What `save_memory` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMemory {
    /// The memory file holds only what changed since the VM's previous
    /// snapshot or load, to be applied over that one's memory.
    pub delta: bool,
    /// `MemoryFiles::state` was written.
    pub state_file: bool,
}

/// The preferred backend that can run here: Firecracker when its binary
/// and a usable KVM exist, else QEMU.
pub fn resolve_auto() -> BackendKind {
    for kind in [BackendKind::Firecracker, BackendKind::Qemu] {
        if AnyBackend::new(kind).usable_for_auto() {
            return kind;
        }
    }
    BackendKind::Qemu
}

/// The closed set of backends.
pub enum AnyBackend {
    /// QEMU.
    Qemu(qemu::QemuBackend),
    /// Firecracker.
    Firecracker(firecracker::FirecrackerBackend),
}

impl AnyBackend {
    /// The backend for `kind`.
    pub fn new(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Qemu => AnyBackend::Qemu(qemu::QemuBackend::from_env()),
            BackendKind::Firecracker => AnyBackend::Firecracker(firecracker::FirecrackerBackend::from_env()),
        }
    }

    fn inner(&self) -> &dyn Backend {
        match self {
            AnyBackend::Qemu(b) => b,
            AnyBackend::Firecracker(b) => b,
        }
    }
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendKind {
        self.inner().kind()
    }
    fn check_installed(&self) -> Result<String, BackendError> {
        self.inner().check_installed()
    }
    fn create_disk(&self, image: &Image, dest: &Path, size_mib: u64) -> Result<(), BackendError> {
        self.inner().create_disk(image, dest, size_mib)
    }
    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<ProcessId, BackendError> {
        self.inner().launch(spec)
    }
    fn pause(&self, dir: &Path) -> Result<(), BackendError> {
        self.inner().pause(dir)
    }
    fn resume(&self, dir: &Path) -> Result<(), BackendError> {
        self.inner().resume(dir)
    }
    fn kill(&self, dir: &Path, process: &ProcessId, grace: Duration) -> Result<(), BackendError> {
        self.inner().kill(dir, process, grace)
    }
    fn seal_disk(&self, dir: &Path, top_id: &str, new_top: &Path, new_top_id: &str) -> Result<(), BackendError> {
        self.inner().seal_disk(dir, top_id, new_top, new_top_id)
    }
    fn save_memory(&self, dir: &Path, dest: &MemoryFiles<'_>, want_delta: bool, timeout: Duration) -> Result<SavedMemory, BackendError> {
        self.inner().save_memory(dir, dest, want_delta, timeout)
    }
    fn compact_memory(&self, memory: &Path, delta: bool) -> Result<u64, BackendError> {
        self.inner().compact_memory(memory, delta)
    }
    fn load_memory(&self, dir: &Path, chain: &[&Path], state: Option<&Path>, resume: bool, timeout: Duration) -> Result<(), BackendError> {
        self.inner().load_memory(dir, chain, state, resume, timeout)
    }
    fn merge_memory(&self, chain: &[&Path], dest: &Path) -> Result<(), BackendError> {
        self.inner().merge_memory(chain, dest)
    }
    fn check_restorable(&self, recorded_version: &str, state: Option<&Path>) -> Result<(), BackendError> {
        self.inner().check_restorable(recorded_version, state)
    }
    fn branch_disk(&self, parent: &Path, dest: &Path) -> Result<(), BackendError> {
        self.inner().branch_disk(parent, dest)
    }
    fn settle(&self, dir: &Path, resume: bool) -> Result<Option<String>, BackendError> {
        self.inner().settle(dir, resume)
    }
    fn agent_endpoint(&self, dir: &Path) -> AgentEndpoint {
        self.inner().agent_endpoint(dir)
    }
    fn runtime_files(&self, dir: &Path) -> Vec<PathBuf> {
        self.inner().runtime_files(dir)
    }
    fn usable_for_auto(&self) -> bool {
        self.inner().usable_for_auto()
    }
    fn fixed_accel(&self) -> Option<Accel> {
        self.inner().fixed_accel()
    }
    fn validate_config(&self, config: &SandboxConfig) -> Result<(), BackendError> {
        self.inner().validate_config(config)
    }
    fn guest_ip(&self, dir: &Path, config: &SandboxConfig) -> Option<String> {
        self.inner().guest_ip(dir, config)
    }
}

/// Finds `program` on PATH.
pub(crate) fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// The last `max` bytes of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&data[start..]).trim().to_string();
    if text.is_empty() {
        "(nothing)".into()
    } else {
        text
    }
}
