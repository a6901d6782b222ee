//! The test harness: a private data directory per test, the `smolvm`
//! binary, the shared tiny image, and checks that nothing is left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the smolvm binary under test.
pub fn smolvm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smolvm"))
}

/// Directory holding the shared test image (built once per machine).
fn shared_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = smolvm_bin().parent().unwrap().parent().unwrap().to_path_buf();
        let dir = target.join("smolvm-test-images");
        std::fs::create_dir_all(&dir).unwrap();
        // Serialise image builds across test processes with a lock file.
        let lock = std::fs::File::create(dir.join("build.lock")).unwrap();
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        if !dir.join("images/tiny/image.json").exists() {
            let mut cmd = Command::new(smolvm_bin());
            cmd.args(["image", "build", "--name", "tiny", "--base", "tiny"]).env("SMOLVM_DATA_DIR", &dir).env_remove("SMOLVM_IMAGE_DIR");
            if let Ok(agent) = std::env::var("SMOLVM_TEST_AGENT_BIN") {
                cmd.env("SMOLVM_AGENT_BIN", agent);
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "building the test image failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        dir.join("images")
    })
}

/// One test's private smolvm world.
pub struct Env {
    pub data: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        shared_images();
        let data = tempfile::Builder::new().prefix("smolvm-t").tempdir_in("/tmp").unwrap();
        Env { data }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(smolvm_bin());
        cmd.args(args)
            .env("SMOLVM_DATA_DIR", self.data.path())
            .env("SMOLVM_IMAGE_DIR", shared_images())
            .env("SMOLVM_ACCEL", "tcg")
            .env("SMOLVM_IMAGE", "tiny")
            .env("SMOLVM_BACKEND", "qemu")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "smolvm {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with --json appended; returns (envelope, exit code).
    pub fn json(&self, args: &[&str]) -> (Value, i32) {
        // --json goes before a `--` that starts a guest command.
        let mut all: Vec<&str> = args.to_vec();
        let at = all.iter().position(|a| *a == "--").unwrap_or(all.len());
        all.insert(at, "--json");
        let out = self.run(&all);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("smolvm {all:?}: stdout is not JSON ({e}): {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        });
        (v, out.status.code().unwrap_or(-1))
    }

    /// Creates a running sandbox from the tiny image.
    pub fn create(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["sandbox", "create", "--name", name, "--memory", "256"];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Runs a shell command in the guest; returns stdout (asserts exit 0).
    pub fn sh(&self, name: &str, script: &str) -> String {
        self.ok(&["sandbox", "exec", name, "--", "sh", "-c", script])
    }

    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.data.path().join("sandboxes").join(name)
    }

    /// Pids of QEMU processes working in this environment's data dir.
    pub fn vmm_pids(&self) -> Vec<i32> {
        let root = self.data.path().canonicalize().unwrap();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'));
            if cwd.starts_with(&root) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["sandbox", "delete", "--all", "--force"]);
        let leftover = self.vmm_pids();
        for pid in &leftover {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if !std::thread::panicking() {
            assert!(leftover.is_empty(), "VMM processes left behind: {leftover:?}");
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}
