//! The benchmark's environment: a private data directory, its own copy of
//! the `smolvm` binary (a rebuild by someone else mid-run cannot change
//! what is measured), the library engine on the same data directory, and
//! helpers to drive guests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use smolvm_core::agent::AgentSession;
use smolvm_core::paths::DataDir;
use smolvm_core::sandbox::{Engine, Progress};

/// Progress sink for library calls: silent.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _message: &str) {}
    fn notice(&self, _message: &str) {}
}

/// Prints a progress line to stderr with the time since the start.
pub fn say(started: Instant, msg: &str) {
    eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
}

/// The result of one `smolvm` invocation.
pub struct CliRun {
    /// Exit status code (-1 when killed by a signal).
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Wall time of the process.
    pub elapsed: Duration,
}

/// Runs the `smolvm` binary on the benchmark's data directory (shareable
/// between threads, unlike the engine).
pub struct Cli {
    /// Private root (holds `data/` and `bin/`).
    pub root: PathBuf,
    /// The data directory every sandbox lives in.
    pub data: PathBuf,
    /// The copied `smolvm` binary.
    pub smolvm: PathBuf,
    /// `--accel` passed to every sandbox.
    pub accel: String,
    /// Image name.
    pub image: String,
    /// When the run started (for progress lines).
    pub started: Instant,
}

/// The benchmark's world: the CLI plus the library engine on `data`.
pub struct Bench {
    /// The CLI side.
    pub cli: Cli,
    /// The library engine.
    pub engine: Engine,
}

impl std::ops::Deref for Bench {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

impl Bench {
    /// Prepares `root`: copies the binaries in, opens the engine.
    pub fn prepare(
        root: PathBuf,
        smolvm: &Path,
        agent: Option<&Path>,
        accel: String,
        started: Instant,
    ) -> Result<Bench> {
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        let data = root.join("data");
        let own = bin.join("smolvm");
        std::fs::copy(smolvm, &own).with_context(|| format!("copying {}", smolvm.display()))?;
        if let Some(agent) = agent {
            std::fs::copy(agent, bin.join("smolvm-agent"))
                .with_context(|| format!("copying {}", agent.display()))?;
        }
        let dir = DataDir::open(data.clone())
            .with_context(|| format!("opening data dir {}", data.display()))?;
        let engine = Engine::open(dir).map_err(|e| anyhow!("opening the engine: {e}"))?;
        Ok(Bench {
            cli: Cli {
                root,
                data,
                smolvm: own,
                accel,
                image: "tiny".into(),
                started,
            },
            engine,
        })
    }

    /// The VMM pid of a sandbox.
    pub fn vmm_pid(&self, name: &str) -> Result<i32> {
        let row = self.engine.get(name).map_err(|e| anyhow!("{e}"))?;
        row.process
            .map(|p| p.pid)
            .ok_or_else(|| anyhow!("sandbox {name} has no VMM process"))
    }

    /// An agent session with a running sandbox (library).
    pub fn session(&self, name: &str) -> Result<AgentSession> {
        self.engine
            .session(name, false, Duration::from_secs(60), &Quiet)
            .map_err(|e| anyhow!("agent session with {name}: {e}"))
    }

    /// Runs a shell script in the guest through the library; fails on a
    /// non-zero exit. Returns stdout.
    pub fn sh(&self, name: &str, script: &str) -> Result<String> {
        let mut s = self.session(name)?;
        sh_in(&mut s, script).with_context(|| format!("in sandbox {name}"))
    }

    /// Stops every sandbox and removes the private root.
    pub fn cleanup(&self, keep: bool) {
        let t = Instant::now();
        if let Ok(rows) = self.engine.store().list_sandboxes() {
            for row in rows {
                let _ = self.engine.delete(&row.name);
            }
        }
        let stopped = t.elapsed();
        if !keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
        self.say(&format!(
            "cleanup: sandboxes stopped in {:.1}s, files removed in {:.1}s",
            stopped.as_secs_f64(),
            (t.elapsed() - stopped).as_secs_f64()
        ));
    }
}

impl Cli {
    /// Progress line.
    pub fn say(&self, msg: &str) {
        say(self.started, msg);
    }

    /// A `smolvm` command with the benchmark's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.smolvm);
        c.args(args)
            .env("SMOLVM_DATA_DIR", &self.data)
            .env("SMOLVM_ACCEL", &self.accel)
            .env_remove("SMOLVM_IMAGE_DIR")
            .stdin(Stdio::null());
        let agent = self.root.join("bin/smolvm-agent");
        if agent.is_file() {
            c.env("SMOLVM_AGENT_BIN", agent);
        }
        c
    }

    /// Runs `smolvm args...` and captures its output.
    pub fn cli(&self, args: &[&str]) -> Result<CliRun> {
        let t = Instant::now();
        let out = self
            .command(args)
            .output()
            .with_context(|| format!("running smolvm {}", args.join(" ")))?;
        Ok(CliRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: t.elapsed(),
        })
    }

    /// Runs `smolvm args... --json`; fails unless the envelope says ok.
    pub fn cli_json(&self, args: &[&str]) -> Result<(serde_json::Value, Duration)> {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let run = self.cli(&all)?;
        let v: serde_json::Value = serde_json::from_str(&run.stdout).with_context(|| {
            format!(
                "smolvm {}: not JSON: {} {}",
                args.join(" "),
                run.stdout,
                run.stderr
            )
        })?;
        if v["ok"] != true {
            bail!(
                "smolvm {} failed: {}",
                args.join(" "),
                v["error"]["message"].as_str().unwrap_or(&run.stdout)
            );
        }
        Ok((v["data"].clone(), run.elapsed))
    }

    /// `smolvm sandbox exec NAME -- true` until it answers (a guest that
    /// is still booting is retried), within `timeout`.
    pub fn exec_true_cli(&self, name: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.cli(&["sandbox", "exec", name, "--", "true"])?;
            if run.code == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "smolvm sandbox exec {name} -- true failed ({}): {}",
                    run.code,
                    run.stderr.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates a sandbox through the CLI, as a user would, and returns the
    /// time from the start of `sandbox create` to the first `exec true`
    /// answered (milliseconds).
    pub fn create_sandbox(&self, name: &str, memory_mib: u32, disk_mib: u64) -> Result<f64> {
        let t = Instant::now();
        let mem = memory_mib.to_string();
        let disk = disk_mib.to_string();
        self.cli_json(&[
            "sandbox",
            "create",
            "--name",
            name,
            "--image",
            &self.image,
            "--memory",
            &mem,
            "--disk-size",
            &disk,
            "--accel",
            &self.accel,
        ])?;
        self.exec_true_cli(name, Duration::from_secs(60))?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Runs `script` with `/bin/sh -c` over an open session.
pub fn sh_in(session: &mut AgentSession, script: &str) -> Result<String> {
    let req: smolvm_proto::ExecRequest = serde_json::from_value(
        serde_json::json!({ "argv": [script], "shell": true, "timeout_ms": 300_000u64 }),
    )?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let outcome = session
        .exec(req, None, &mut |stream, bytes| {
            match stream {
                smolvm_core::agent::OutputStream::Stdout => out.extend_from_slice(bytes),
                smolvm_core::agent::OutputStream::Stderr => err.extend_from_slice(bytes),
            }
            Ok(())
        })
        .map_err(|e| anyhow!("guest exec: {e}"))?;
    if outcome.exit_code != 0 {
        bail!(
            "guest script exited {}: {}\nscript: {script}",
            outcome.exit_code,
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `true` over an open session (the agent round trip).
pub fn exec_true_in(session: &mut AgentSession) -> Result<()> {
    let req: smolvm_proto::ExecRequest =
        serde_json::from_value(serde_json::json!({ "argv": ["true"] }))?;
    let outcome = session
        .exec(req, None, &mut |_, _| Ok(()))
        .map_err(|e| anyhow!("guest exec: {e}"))?;
    if outcome.exit_code != 0 {
        bail!("true exited {}", outcome.exit_code);
    }
    Ok(())
}
