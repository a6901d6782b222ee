//! Firecracker snapshots with the tiny counter guest (the e2e tests'
//! hand-assembled ELF that counts in memory): Full and Diff snapshot
//! create time, pause and size, and load time, at 128 and 512 MiB.
//! Skipped, with a note, when no `firecracker` binary is found
//! (SMOLVM_FIRECRACKER_BIN or PATH) or /dev/kvm is not usable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::Value;

use crate::harness::Bench;
use crate::stats::Summary;

#[allow(dead_code)]
#[path = "../../smolvm-cli/tests/e2e/counter_guest.rs"]
mod counter_guest;

/// Guest memory sizes measured (MiB).
const SIZES: [u32; 2] = [128, 512];

/// Figures for one memory size.
#[derive(Debug, Clone, Serialize)]
pub struct FcSize {
    /// Guest memory (MiB).
    pub memory_mib: u32,
    /// `snapshot create` (full, running guest, --resume-source): wall ms.
    pub full_create_ms: Option<Summary>,
    /// Guest pause of a full snapshot (ms).
    pub full_pause_ms: Option<Summary>,
    /// Bytes a full snapshot keeps on disk (memory after zero pages are
    /// punched out, state file, sealed disk layer).
    pub full_size_bytes: Option<Summary>,
    /// Bytes of the memory file Firecracker writes for a full snapshot.
    pub full_memory_written_bytes: u64,
    /// `snapshot create --snapshot-type diff`: wall ms.
    pub diff_create_ms: Option<Summary>,
    /// Guest pause of a diff snapshot (ms).
    pub diff_pause_ms: Option<Summary>,
    /// Bytes a diff snapshot keeps on disk.
    pub diff_size_bytes: Option<Summary>,
    /// Of a diff, the memory file's bytes (the dirtied pages).
    pub diff_memory_bytes: Option<Summary>,
    /// Firecracker's `/snapshot/load` of a full snapshot (ms).
    pub full_load_ms: Option<Summary>,
    /// Whole restore of a full snapshot, guest running (ms).
    pub full_restore_ms: Option<Summary>,
    /// Load of a diff: merge onto its full base, verify, `/snapshot/load` (ms).
    pub diff_load_ms: Option<Summary>,
    /// Whole restore of a diff (ms).
    pub diff_restore_ms: Option<Summary>,
}

/// The Firecracker part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct FcReport {
    /// `firecracker --version` as recorded.
    pub firecracker: String,
    /// Runs per figure.
    pub runs: usize,
    /// One entry per memory size.
    pub sizes: Vec<FcSize>,
}

fn firecracker_bin() -> Option<PathBuf> {
    match std::env::var_os("SMOLVM_FIRECRACKER_BIN").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("firecracker"))
            .find(|p| p.is_file()),
    }
}

/// Measures, or says why not (`Err` carries the note for the report).
pub fn measure(b: &Bench, runs: usize) -> Result<std::result::Result<FcReport, String>> {
    let Some(bin) = firecracker_bin() else {
        return Ok(Err("Firecracker: skipped, no firecracker binary (set SMOLVM_FIRECRACKER_BIN or put it on PATH)".into()));
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Err("Firecracker: skipped, /dev/kvm is not usable".into()));
    }
    let fc = |args: &[&str]| -> Result<(Value, Duration)> {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = b
            .command(&all)
            .env("SMOLVM_FIRECRACKER_BIN", &bin)
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| anyhow!("smolvm {}: {e}", args.join(" ")))?;
        if v["ok"] != true {
            return Err(anyhow!("smolvm {} failed: {}", args.join(" "), v["error"]));
        }
        Ok((v, Duration::ZERO))
    };
    let timed = |args: &[&str]| -> Result<(Value, f64)> {
        let t = std::time::Instant::now();
        let (v, _) = fc(args)?;
        Ok((v, t.elapsed().as_secs_f64() * 1000.0))
    };
    let elf = b.root.join("counter.elf");
    std::fs::write(&elf, counter_guest::elf(10_000))?;
    let elf_s = elf.display().to_string();
    fc(&[
        "image",
        "import",
        "--name",
        "fc-counter",
        "--kernel",
        &elf_s,
        "--ready-console",
        counter_guest::READY_TEXT,
    ])?;
    let mut sizes = Vec::new();
    let mut version = String::new();
    for mem in SIZES {
        let name = format!("fc-{mem}");
        b.say(&format!(
            "Firecracker, {mem} MiB: {runs} full and diff snapshots and restores"
        ));
        let mem_s = mem.to_string();
        fc(&[
            "sandbox",
            "create",
            "--name",
            &name,
            "--image",
            "fc-counter",
            "--backend",
            "firecracker",
            "--accel",
            "auto",
            "--network",
            "none",
            "--memory",
            &mem_s,
        ])?;
        let (info, _) = fc(&["sandbox", "info", &name])?;
        version = info["data"]["vm"]["vmm_version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut f = Figures::default();
        for run in 0..runs {
            std::thread::sleep(Duration::from_millis(300));
            let (full_id, diff_id) = (format!("{name}-f{run}"), format!("{name}-d{run}"));
            let (v, ms) = timed(&[
                "sandbox",
                "snapshot",
                "create",
                &name,
                "--snapshot-id",
                &full_id,
                "--resume-source",
            ])?;
            let s = &v["data"]["snapshot"];
            f.full_create.push(ms);
            f.full_pause.push(s["pause_ms"].as_f64().unwrap_or(0.0));
            f.full_size.push(s["size_bytes"].as_f64().unwrap_or(0.0));
            f.full_written = apparent(s["artifacts"]["memory_path"].as_str());
            // The guest runs on for a moment, dirtying its counter and stack.
            std::thread::sleep(Duration::from_millis(300));
            let (v, ms) = timed(&[
                "sandbox",
                "snapshot",
                "create",
                &name,
                "--snapshot-id",
                &diff_id,
                "--snapshot-type",
                "diff",
                "--resume-source",
            ])?;
            let s = &v["data"]["snapshot"];
            if s["parent"] != full_id.as_str() {
                return Err(anyhow!("the diff {diff_id} is not on {full_id}: {v}"));
            }
            f.diff_create.push(ms);
            f.diff_pause.push(s["pause_ms"].as_f64().unwrap_or(0.0));
            f.diff_size.push(s["size_bytes"].as_f64().unwrap_or(0.0));
            f.diff_memory
                .push(allocated(s["artifacts"]["memory_path"].as_str()) as f64);
            let (v, _) = fc(&["sandbox", "snapshot", "restore", &full_id, "--resume"])?;
            f.full_load
                .push(v["data"]["load_ms"].as_f64().unwrap_or(0.0));
            f.full_restore
                .push(v["data"]["restore_ms"].as_f64().unwrap_or(0.0));
            let (v, _) = fc(&["sandbox", "snapshot", "restore", &diff_id, "--resume"])?;
            f.diff_load
                .push(v["data"]["load_ms"].as_f64().unwrap_or(0.0));
            f.diff_restore
                .push(v["data"]["restore_ms"].as_f64().unwrap_or(0.0));
            // The diff first: deleting its base would merge into it.
            fc(&["sandbox", "snapshot", "delete", &diff_id])?;
            fc(&["sandbox", "snapshot", "delete", &full_id])?;
        }
        fc(&["sandbox", "delete", &name])?;
        sizes.push(FcSize {
            memory_mib: mem,
            full_create_ms: Summary::of(&f.full_create),
            full_pause_ms: Summary::of(&f.full_pause),
            full_size_bytes: Summary::of(&f.full_size),
            full_memory_written_bytes: f.full_written,
            diff_create_ms: Summary::of(&f.diff_create),
            diff_pause_ms: Summary::of(&f.diff_pause),
            diff_size_bytes: Summary::of(&f.diff_size),
            diff_memory_bytes: Summary::of(&f.diff_memory),
            full_load_ms: Summary::of(&f.full_load),
            full_restore_ms: Summary::of(&f.full_restore),
            diff_load_ms: Summary::of(&f.diff_load),
            diff_restore_ms: Summary::of(&f.diff_restore),
        });
    }
    Ok(Ok(FcReport {
        firecracker: version,
        runs,
        sizes,
    }))
}

#[derive(Default)]
struct Figures {
    full_create: Vec<f64>,
    full_pause: Vec<f64>,
    full_size: Vec<f64>,
    full_written: u64,
    diff_create: Vec<f64>,
    diff_pause: Vec<f64>,
    diff_size: Vec<f64>,
    diff_memory: Vec<f64>,
    full_load: Vec<f64>,
    full_restore: Vec<f64>,
    diff_load: Vec<f64>,
    diff_restore: Vec<f64>,
}

fn apparent(path: Option<&str>) -> u64 {
    path.and_then(|p| std::fs::metadata(Path::new(p)).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

fn allocated(path: Option<&str>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    path.and_then(|p| std::fs::metadata(Path::new(p)).ok())
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// `median (min-max)`, or `-`.
fn ms(s: &Option<Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.0} ({:.0}-{:.0}) ms", s.median, s.min, s.max),
        Some(s) => format!("{:.0} ms", s.median),
        None => "-".into(),
    }
}

fn kib(s: &Option<Summary>) -> String {
    s.as_ref()
        .map_or("-".into(), |s| format!("{:.0} KiB", s.median / 1024.0))
}

impl FcReport {
    /// The report section.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "\n## Firecracker (tiny counter guest)\n\n{}; medians of {} runs (min-max). Full: `snapshot create --resume-source` of a running guest; diff: the same 0.3 s later, chained to that full one; load: Firecracker's `/snapshot/load` as the restore measured it (for a diff, merging its memory onto the full base and verifying the merge included); restore: the whole `snapshot restore --resume`.\n\n",
            self.firecracker, self.runs
        );
        s.push_str("| memory | full create | full pause | full size (memory written) | diff create | diff pause | diff size (of it memory) | full load | full restore | diff load | diff restore |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
        for z in &self.sizes {
            s.push_str(&format!(
                "| {} MiB | {} | {} | {} ({} MiB) | {} | {} | {} ({}) | {} | {} | {} | {} |\n",
                z.memory_mib,
                ms(&z.full_create_ms),
                ms(&z.full_pause_ms),
                kib(&z.full_size_bytes),
                z.full_memory_written_bytes >> 20,
                ms(&z.diff_create_ms),
                ms(&z.diff_pause_ms),
                kib(&z.diff_size_bytes),
                kib(&z.diff_memory_bytes),
                ms(&z.full_load_ms),
                ms(&z.full_restore_ms),
                ms(&z.diff_load_ms),
                ms(&z.diff_restore_ms),
            ));
        }
        s
    }
}
