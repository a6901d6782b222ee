//! The reference method: what smolvm 0.0.36 does on QEMU
//! (/work/shared/reference/smolvm-0.0.36-behaviour.md §2.3 and §4.3),
//! implemented here as a baseline on the very same guest, QEMU command
//! line and disk layout (a qcow2 overlay on the image's raw base).
//!
//! Create (guest stopped throughout, resumed at the end as with
//! `--resume-source`):
//! - `full`: `stop`; job `snapshot-save` (RAM + device state into the live
//!   qcow2 as internal snapshot `<id>`); standalone copy of the disk
//!   (`qemu-img info -U`, plain copy of the overlay and of every backing
//!   file as `<copy>.backing-<n><suffix>`, `qemu-img rebase -u`); job
//!   `snapshot-delete` on the live disk; manifest; `cont`.
//! - `diff`: the same, but the overlay is copied alone and rebased onto
//!   the original base.
//! - `disk`: agent `sync` first; `stop`; `blockdev-snapshot-internal-sync`;
//!   standalone copy; `blockdev-snapshot-delete-internal-sync`; `cont`.
//!
//! Jobs are polled with `query-jobs` every 0.1 s, as the reference does.
//! Copies are plain byte copies without fsync, as the reference's are.
//!
//! Restore (`--resume`): SIGTERM the running QEMU; move the managed disk
//! aside; copy the artifact again into a staging file (standalone for
//! full/disk, plain for diff); start a new QEMU with `-S` on it; job
//! `snapshot-load` + job `snapshot-delete` (full/diff); `cont`; rename the
//! staging file over the managed disk; drop the old disk and its sidecars.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use smolvm_core::backend::{AnyBackend, Backend, LaunchSpec};
use smolvm_core::process::ProcessId;
use smolvm_core::sandbox::SandboxStatus;
use smolvm_qmp::Qmp;

use crate::harness::Bench;
use crate::ours::CreateSample;
use crate::sys;

/// The reference's job poll interval.
const JOB_POLL: Duration = Duration::from_millis(100);
/// The reference's job wait.
const JOB_WAIT: Duration = Duration::from_secs(60);

/// A sandbox driven the reference's way.
pub struct RefSandbox {
    /// Name.
    pub name: String,
    /// Its block node (the reference's `rootdisk0`).
    node: String,
    /// The managed disk (the reference's `disks/<vm>.qcow2`).
    disk: PathBuf,
    /// Sandbox directory (QMP and agent sockets).
    dir: PathBuf,
    /// Where its snapshots go.
    snapshots: PathBuf,
}

impl RefSandbox {
    /// Adopts a sandbox created by `smolvm sandbox create` (one overlay on
    /// the image's base, never snapshotted by smolvm).
    pub fn adopt(b: &Bench, name: &str) -> Result<RefSandbox> {
        let row = b.engine.get(name).map_err(|e| anyhow!("{e}"))?;
        if row.disk_chain.len() != 1 {
            bail!(
                "reference sandbox {name} must have a single overlay, has {:?}",
                row.disk_chain
            );
        }
        let node = row.disk_chain[0].clone();
        let snapshots = b.root.join("ref-snapshots");
        std::fs::create_dir_all(&snapshots)?;
        Ok(RefSandbox {
            name: name.to_string(),
            disk: b.engine.layers().path(&node),
            node,
            dir: b.engine.dir(name),
            snapshots,
        })
    }

    fn qmp(&self) -> Result<Qmp<std::os::unix::net::UnixStream>> {
        Qmp::connect(
            &self.dir.join("qmp.sock"),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .context("QMP connect")
    }

    /// The snapshot directory of `id`.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.snapshots.join(id)
    }

    /// `snapshot create --snapshot-type TY --resume-source`, the reference's way.
    pub fn create(&self, b: &Bench, id: &str, ty: &str) -> Result<CreateSample> {
        let vmm = b.vmm_pid(&self.name)?.to_string();
        let (vmm0, own0) = (sys::write_bytes(&vmm), sys::write_bytes("self"));
        let t = Instant::now();
        if ty == "disk" {
            // §2.4: wait for the control channel, then its `sync`.
            let mut s = b.session(&self.name)?;
            s.health().map_err(|e| anyhow!("health: {e}"))?;
            s.sync(false, Duration::from_secs(10))
                .map_err(|e| anyhow!("guest sync: {e}"))?;
        }
        let dir = self.snapshot_dir(id);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut q = self.qmp()?;
        let paused = Instant::now();
        q.execute("stop", None)?;
        let artifact = dir.join("disk.qcow2");
        let captured = (|| -> Result<()> {
            match ty {
                "disk" => {
                    q.execute(
                        "blockdev-snapshot-internal-sync",
                        Some(json!({ "device": self.node, "name": id })),
                    )?;
                    standalone_copy(&self.disk, &artifact, 0)?;
                    q.execute(
                        "blockdev-snapshot-delete-internal-sync",
                        Some(json!({ "device": self.node, "name": id })),
                    )?;
                }
                _ => {
                    run_job(
                        &mut q,
                        "snapshot-save",
                        json!({ "job-id": format!("snapshot-save-{id}"), "tag": id, "vmstate": self.node, "devices": [self.node] }),
                    )?;
                    if ty == "diff" {
                        overlay_copy(&self.disk, &artifact)?;
                    } else {
                        standalone_copy(&self.disk, &artifact, 0)?;
                    }
                    run_job(
                        &mut q,
                        "snapshot-delete",
                        json!({ "job-id": format!("snapshot-delete-{id}"), "tag": id, "devices": [self.node] }),
                    )?;
                }
            }
            // §2.1 steps 13-15: the record is written before the resume.
            let manifest = json!({
                "snapshot_id": id, "vm_id": self.name, "backend": "qemu", "snapshot_type": ty,
                "artifacts": { "state_path": null, "memory_path": null, "disk_path": artifact },
            });
            let tmp = dir.join(".manifest.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
            std::fs::rename(&tmp, dir.join("manifest.json"))?;
            Ok(())
        })();
        q.execute("cont", None)?;
        let pause = paused.elapsed();
        let wall = t.elapsed();
        captured?;
        let vmm_bytes = sys::write_bytes(&vmm).saturating_sub(vmm0);
        let own_bytes = sys::write_bytes("self").saturating_sub(own0);
        let size = sys::allocated_tree(&dir);
        Ok(CreateSample {
            wall_ms: wall.as_secs_f64() * 1000.0,
            pause_ms: pause.as_secs_f64() * 1000.0,
            bytes_written: (vmm_bytes + own_bytes) as f64,
            vmm_bytes: vmm_bytes as f64,
            size_on_disk: size as f64,
            restore_bytes: size as f64,
            sync_after_ms: 0.0,
        })
    }

    /// `snapshot restore ID --resume` the reference's way, then the first
    /// `smolvm sandbox exec -- true` answered; returns milliseconds.
    pub fn restore(&self, b: &Bench, id: &str, ty: &str) -> Result<f64> {
        let t = Instant::now();
        let artifact = self.snapshot_dir(id).join("disk.qcow2");
        if !artifact.is_file() {
            bail!("reference snapshot {id} has no disk.qcow2");
        }
        let row = b.engine.get(&self.name).map_err(|e| anyhow!("{e}"))?;
        let image = b
            .engine
            .images()
            .get(&row.config.image)
            .map_err(|e| anyhow!("{e}"))?;
        // 1. Stop the sandbox: SIGTERM, wait, SIGKILL.
        if let Some(p) = row.process {
            p.terminate(Duration::from_secs(10));
        }
        b.engine
            .store()
            .set_status(&self.name, SandboxStatus::Stopped, None)
            .map_err(|e| anyhow!("{e}"))?;
        // 3-4. Staging path; the current disk moves aside (its sidecars are
        // listed first), a placeholder takes its place.
        let hex = random_hex();
        let staging = PathBuf::from(format!("{}.restore-{hex}", self.disk.display()));
        let backup = PathBuf::from(format!("{}.backup-{hex}", self.disk.display()));
        let old_sidecars = sidecars(&self.disk);
        std::fs::rename(&self.disk, &backup)?;
        std::fs::File::create(&self.disk)?;
        let result = (|| -> Result<ProcessId> {
            // 8. Copy the artifact into the staging file.
            if ty == "diff" {
                plain_copy(&artifact, &staging)?;
                if let Some((base, _)) = backing_of(&staging)? {
                    if !Path::new(&base).exists() {
                        bail!("the diff snapshot's base image {base} is missing");
                    }
                }
            } else {
                standalone_copy(&artifact, &staging, 0)?;
            }
            let _ = std::fs::remove_file(self.dir.join("qmp.sock"));
            let backend = AnyBackend::new(row.config.backend);
            let spec = LaunchSpec {
                name: &self.name,
                dir: &self.dir,
                config: &row.config,
                image: &image,
                disk: &staging,
                disk_id: &self.node,
                paused: true,
                incoming: None,
            };
            let process = backend
                .launch(&spec)
                .map_err(|e| anyhow!("starting QEMU: {e}"))?;
            let mut q = self.qmp()?;
            if ty != "disk" {
                run_job(
                    &mut q,
                    "snapshot-load",
                    json!({ "job-id": format!("snapshot-load-{id}"), "tag": id, "vmstate": self.node, "devices": [self.node] }),
                )?;
                run_job(
                    &mut q,
                    "snapshot-delete",
                    json!({ "job-id": format!("snapshot-delete-{id}"), "tag": id, "devices": [self.node] }),
                )?;
            }
            q.execute("cont", None)?;
            Ok(process)
        })();
        let process = match result {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&self.disk);
                let _ = std::fs::rename(&backup, &self.disk);
                let _ = std::fs::remove_file(&staging);
                return Err(e);
            }
        };
        // 9-10. The staging file becomes the managed disk; the old disk and
        // its sidecars go; the row records the new process.
        std::fs::rename(&staging, &self.disk)?;
        b.engine
            .store()
            .set_status(&self.name, SandboxStatus::Running, Some(process))
            .map_err(|e| anyhow!("{e}"))?;
        let _ = std::fs::remove_file(&backup);
        // The reference deletes every sidecar of the old disk. A diff
        // snapshot taken after a full restore is rebased onto such a
        // sidecar, so restoring it would delete the new disk's own base;
        // the benchmark keeps sidecars the new chain still uses.
        let keep = sidecars(&self.disk);
        for s in old_sidecars.into_iter().filter(|s| !keep.contains(s)) {
            let _ = std::fs::remove_file(s);
        }
        b.exec_true_cli(&self.name, Duration::from_secs(90))?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }
}

/// Starts a QMP job and polls `query-jobs` every 0.1 s until it concludes,
/// then dismisses it; the job's error text becomes the error.
fn run_job(q: &mut Qmp<std::os::unix::net::UnixStream>, command: &str, args: Value) -> Result<()> {
    let id = args["job-id"].as_str().unwrap_or_default().to_string();
    q.execute(command, Some(args))?;
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let jobs = q.execute("query-jobs", None)?;
        let job = jobs
            .as_array()
            .and_then(|a| a.iter().find(|j| j["id"] == id.as_str()))
            .cloned();
        let Some(job) = job else {
            bail!("QMP job {id} vanished")
        };
        if job["status"] == "concluded" {
            q.execute("job-dismiss", Some(json!({ "id": id })))?;
            if let Some(err) = job.get("error").and_then(Value::as_str) {
                bail!("QMP job {id} failed: {err}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for QMP job {id} (status {})",
                job["status"]
            );
        }
        std::thread::sleep(JOB_POLL);
    }
}

fn qemu_img(args: &[&str]) -> Result<String> {
    let bin = std::env::var("SMOLVM_QEMU_IMG_BIN").unwrap_or_else(|_| "qemu-img".into());
    let out = std::process::Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {bin}"))?;
    if !out.status.success() {
        bail!(
            "qemu-img {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The backing file of `path` and its format, from `qemu-img info -U`.
fn backing_of(path: &Path) -> Result<Option<(String, Option<String>)>> {
    let info: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "-U",
        "--output=json",
        &path.display().to_string(),
    ])?)?;
    let file = info["full-backing-filename"]
        .as_str()
        .or_else(|| info["backing-filename"].as_str());
    Ok(file.map(|f| {
        (
            f.to_string(),
            info["backing-filename-format"].as_str().map(str::to_string),
        )
    }))
}

/// A plain byte copy (like Python's `shutil.copyfile`): holes are read as
/// zeros and written out, nothing is fsynced.
fn plain_copy(src: &Path, dst: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let mut input =
        std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut output =
        std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
    }
    Ok(())
}

/// The reference's "standalone copy": the qcow2 as-is plus every backing
/// file as a sidecar next to it, re-pointed with `qemu-img rebase -u`.
fn standalone_copy(src: &Path, dst: &Path, depth: usize) -> Result<()> {
    let backing = backing_of(src)?;
    plain_copy(src, dst)?;
    let Some((base, fmt)) = backing else {
        return Ok(());
    };
    let base = PathBuf::from(base);
    if !base.exists() {
        bail!(
            "Full snapshot needs the disk's base image, but that file is missing: '{}'",
            base.display()
        );
    }
    let suffix = base
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_else(|| ".img".into());
    let sidecar = PathBuf::from(format!("{}.backing-{depth}{suffix}", dst.display()));
    standalone_copy(&base, &sidecar, depth + 1)?;
    let fmt = fmt.unwrap_or_else(|| {
        if suffix == ".qcow2" {
            "qcow2".into()
        } else {
            "raw".into()
        }
    });
    let sidecar = std::path::absolute(&sidecar)?;
    qemu_img(&[
        "rebase",
        "-u",
        "-b",
        &sidecar.display().to_string(),
        "-F",
        &fmt,
        &dst.display().to_string(),
    ])?;
    Ok(())
}

/// The reference's "overlay copy" (diff): the overlay alone, rebased onto
/// the absolute path of its original backing file.
fn overlay_copy(src: &Path, dst: &Path) -> Result<()> {
    let Some((base, fmt)) = backing_of(src)? else {
        return standalone_copy(src, dst, 0);
    };
    plain_copy(src, dst)?;
    let fmt = fmt.unwrap_or_else(|| "raw".into());
    // The reference only logs a failure here.
    let _ = qemu_img(&[
        "rebase",
        "-u",
        "-b",
        &base,
        "-F",
        &fmt,
        &dst.display().to_string(),
    ]);
    Ok(())
}

/// Backing files of `disk` that earlier restores created (never the image).
fn sidecars(disk: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = disk.to_path_buf();
    while let Ok(Some((base, _))) = backing_of(&cur) {
        if !base.contains(".restore-") || !base.contains(".backing-") {
            break;
        }
        cur = PathBuf::from(base);
        out.push(cur.clone());
    }
    out
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
