//! The QEMU backend: `qemu-system-x86_64 -M microvm` (or q35) with direct
//! kernel boot, a qcow2 overlay as root disk, virtio-serial agent ports,
//! the serial console in `console.log` and QMP on `qmp.sock`.
//!
//! QEMU runs with the sandbox directory as its working directory and every
//! path relative to it, so socket paths stay short whatever the data
//! directory is.

mod cmdline;
mod disk;
mod snapshot;

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smolvm_qmp::Qmp;

pub use cmdline::GUEST_IP;
pub use disk::QemuImg;

use super::{find_program, log_tail, Backend, BackendError, BackendKind, LaunchSpec, MemoryFiles, SavedMemory};
use crate::agent::{connect_unix, AgentEndpoint};
use crate::image::Image;
use crate::process::ProcessId;

/// QMP socket name inside the sandbox directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Serial console log inside the sandbox directory.
pub const CONSOLE_LOG: &str = "console.log";
/// QEMU's own stdout/stderr.
pub const VMM_LOG: &str = "vmm.log";

/// Where a QMP answer may take this long before we give up on QEMU.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The QEMU backend.
pub struct QemuBackend {
    program: String,
    qemu_img: QemuImg,
}

impl QemuBackend {
    /// Uses `SMOLVM_QEMU_BIN` or `qemu-system-x86_64` from PATH.
    pub fn from_env() -> Self {
        let program = std::env::var("SMOLVM_QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".into());
        QemuBackend { program, qemu_img: QemuImg::from_env() }
    }

    /// The qemu-img wrapper this backend uses.
    pub fn qemu_img(&self) -> &QemuImg {
        &self.qemu_img
    }

    fn binary(&self) -> Result<PathBuf, BackendError> {
        find_program(&self.program).ok_or_else(|| BackendError::NotInstalled {
            program: self.program.clone(),
            install_hint: "install QEMU 9 or newer: on Debian 12 run 'scripts/setup-host.sh' (QEMU 10 from bookworm-backports), elsewhere 'sudo apt-get install qemu-system-x86'".into(),
        })
    }

    /// Opens a QMP session with the sandbox's QEMU.
    pub fn qmp(&self, dir: &Path) -> Result<Qmp<std::os::unix::net::UnixStream>, BackendError> {
        let path = dir.join(QMP_SOCKET);
        let stream = connect_unix(&path).map_err(|source| BackendError::Io { path, source })?;
        Ok(Qmp::handshake(stream, QMP_TIMEOUT, |s, t| s.set_read_timeout(t))?)
    }

    fn wait_qmp(&self, dir: &Path, child: &mut std::process::Child, timeout: Duration) -> Result<(), BackendError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(BackendError::ExitedEarly { log_tail: log_tail(&dir.join(VMM_LOG), 2000) });
            }
            match self.qmp(dir) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn check_installed(&self) -> Result<String, BackendError> {
        let bin = self.binary()?;
        let out = Command::new(&bin)
            .arg("--version")
            .output()
            .map_err(|source| BackendError::Spawn { program: bin.display().to_string(), source })?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string())
    }

    fn create_disk(&self, image: &Image, dest: &Path, size_mib: u64) -> Result<(), BackendError> {
        self.qemu_img.create_overlay(&image.rootfs(), "raw", dest, Some(size_mib))
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<ProcessId, BackendError> {
        let bin = self.binary()?;
        for f in self.runtime_files(spec.dir) {
            let _ = std::fs::remove_file(f);
        }
        let open_log = |name: &str, truncate: bool| -> Result<File, BackendError> {
            let path = spec.dir.join(name);
            OpenOptions::new()
                .create(true)
                .append(!truncate)
                .write(true)
                .truncate(truncate)
                .open(&path)
                .map_err(|source| BackendError::Io { path, source })
        };
        let vmm_log = open_log(VMM_LOG, true)?;
        let vmm_log2 = vmm_log.try_clone().map_err(|source| BackendError::Io { path: spec.dir.join(VMM_LOG), source })?;
        let args = cmdline::build(spec);
        tracing::debug!(?args, "starting QEMU");
        let mut child = Command::new(&bin)
            .args(&args)
            .current_dir(spec.dir)
            .stdin(Stdio::null())
            .stdout(vmm_log)
            .stderr(vmm_log2)
            // Own process group: a Ctrl-C at the terminal that ran
            // `smolvm sandbox create` must not kill the sandbox.
            .process_group(0)
            .spawn()
            .map_err(|source| BackendError::Spawn { program: bin.display().to_string(), source })?;
        let process = ProcessId::of(child.id() as i32).ok_or_else(|| BackendError::ExitedEarly {
            log_tail: log_tail(&spec.dir.join(VMM_LOG), 2000),
        })?;
        if let Err(e) = self.wait_qmp(spec.dir, &mut child, Duration::from_secs(30)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(process)
    }

    fn pause(&self, dir: &Path) -> Result<(), BackendError> {
        self.qmp(dir)?.execute("stop", None)?;
        Ok(())
    }

    fn resume(&self, dir: &Path) -> Result<(), BackendError> {
        self.qmp(dir)?.execute("cont", None)?;
        Ok(())
    }

    fn kill(&self, dir: &Path, process: &ProcessId, grace: Duration) -> Result<(), BackendError> {
        if process.is_alive() {
            // `quit` lets QEMU flush its block layer before exiting.
            if let Ok(mut qmp) = self.qmp(dir) {
                let _ = qmp.execute("quit", None);
            }
            if !process.wait_gone(grace) {
                process.terminate(Duration::from_secs(2));
            }
        }
        for f in self.runtime_files(dir) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    fn seal_disk(&self, dir: &Path, top_id: &str, new_top: &Path, new_top_id: &str) -> Result<(), BackendError> {
        self.seal_disk_impl(dir, top_id, new_top, new_top_id)
    }

    fn save_memory(&self, dir: &Path, dest: &MemoryFiles<'_>, _want_delta: bool, timeout: Duration) -> Result<SavedMemory, BackendError> {
        // Device state travels inside the migration stream; a diff is a
        // whole memory image chained to its parent.
        self.save_memory_impl(dir, dest.memory, timeout)?;
        Ok(SavedMemory { delta: false, state_file: false })
    }

    fn load_memory(&self, dir: &Path, chain: &[&Path], _state: Option<&Path>, resume: bool, timeout: Duration) -> Result<(), BackendError> {
        let [src] = chain else {
            return Err(BackendError::Unsupported("QEMU loads one self-contained memory file".into()));
        };
        self.load_memory_impl(dir, src, timeout)?;
        if resume {
            self.resume(dir)?;
        }
        Ok(())
    }

    fn branch_disk(&self, parent: &Path, dest: &Path) -> Result<(), BackendError> {
        self.qemu_img.create_overlay(parent, "qcow2", dest, None)
    }

    fn settle(&self, dir: &Path, resume: bool) -> Result<Option<String>, BackendError> {
        self.settle_impl(dir, resume)
    }

    fn guest_ip(&self, _dir: &Path, config: &crate::sandbox::SandboxConfig) -> Option<String> {
        (config.network == crate::sandbox::NetworkMode::User).then(|| GUEST_IP.to_string())
    }

    fn agent_endpoint(&self, dir: &Path) -> AgentEndpoint {
        AgentEndpoint::SerialPorts { dir: dir.to_path_buf(), count: smolvm_proto::AGENT_PORTS }
    }

    fn runtime_files(&self, dir: &Path) -> Vec<PathBuf> {
        let mut files = vec![dir.join(QMP_SOCKET), dir.join(crate::sandbox::PIDFILE)];
        for n in 0..smolvm_proto::AGENT_PORTS {
            files.push(dir.join(format!("agent-{n}.sock")));
        }
        files
    }
}
