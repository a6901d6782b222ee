//! `qemu-img`, run as a subprocess with an argv: overlays, checks, info.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::{find_program, BackendError};

/// The qemu-img program.
pub struct QemuImg {
    program: String,
}

impl QemuImg {
    /// Uses `SMOLVM_QEMU_IMG_BIN` or `qemu-img` from PATH.
    pub fn from_env() -> Self {
        QemuImg { program: std::env::var("SMOLVM_QEMU_IMG_BIN").unwrap_or_else(|_| "qemu-img".into()) }
    }

    fn run(&self, what: &str, args: &[&std::ffi::OsStr]) -> Result<String, BackendError> {
        let bin: PathBuf = find_program(&self.program).ok_or_else(|| BackendError::NotInstalled {
            program: "qemu-img".into(),
            install_hint: "install it with 'sudo apt-get install qemu-utils'".into(),
        })?;
        let out = Command::new(&bin)
            .args(args)
            .output()
            .map_err(|source| BackendError::Spawn { program: bin.display().to_string(), source })?;
        if !out.status.success() {
            return Err(BackendError::Tool {
                tool: format!("qemu-img {what}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates `dest` as a qcow2 overlay over `backing` (format given
    /// explicitly, never probed), optionally `size_mib` large.
    pub fn create_overlay(&self, backing: &Path, backing_fmt: &str, dest: &Path, size_mib: Option<u64>) -> Result<(), BackendError> {
        let size = size_mib.map(|s| format!("{s}M"));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            backing_fmt.as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            dest.as_os_str(),
        ];
        if let Some(s) = &size {
            args.push(s.as_ref());
        }
        self.run("create", &args).map(drop)
    }

    /// `qemu-img info --output=json` (with -U: the image may be in use).
    pub fn info(&self, path: &Path) -> Result<serde_json::Value, BackendError> {
        let out = self.run("info", &["info".as_ref(), "-U".as_ref(), "--output=json".as_ref(), path.as_os_str()])?;
        serde_json::from_str(&out).map_err(|e| BackendError::Tool { tool: "qemu-img info".into(), stderr: e.to_string() })
    }

    /// `qemu-img check`: Ok when the image is consistent.
    pub fn check(&self, path: &Path) -> Result<(), BackendError> {
        self.run("check", &["check".as_ref(), "-q".as_ref(), "-f".as_ref(), "qcow2".as_ref(), path.as_os_str()]).map(drop)
    }

    /// Re-points `image` at `backing` without touching data (`rebase -u`).
    pub fn rebase_unsafe(&self, image: &Path, backing: &Path, backing_fmt: &str) -> Result<(), BackendError> {
        self.run(
            "rebase",
            &[
                "rebase".as_ref(),
                "-u".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                backing_fmt.as_ref(),
                "-b".as_ref(),
                backing.as_os_str(),
                image.as_os_str(),
            ],
        )
        .map(drop)
    }
}
