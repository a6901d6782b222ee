//! Scale: many sandboxes at once, a long snapshot list, host memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use smolvm_core::store::SnapshotRow;

use crate::harness::Bench;
use crate::stats::Summary;
use crate::sys;

/// N sandboxes created, snapshotted and restored concurrently.
#[derive(Debug, Clone, Serialize)]
pub struct Concurrent {
    /// How many.
    pub sandboxes: usize,
    /// Guest memory of each (MiB).
    pub memory_mib: u32,
    /// Wall time of each phase, all N at once (ms): create to first exec,
    /// full snapshot create (`--resume-source`), restore `--resume` to first exec.
    pub create_ms: f64,
    /// See `create_ms`.
    pub snapshot_ms: f64,
    /// See `create_ms`.
    pub restore_ms: f64,
    /// The three phases together (ms).
    pub total_ms: f64,
    /// Per-sandbox times of each phase.
    pub create_each_ms: Option<Summary>,
    /// See `create_each_ms`.
    pub snapshot_each_ms: Option<Summary>,
    /// See `create_each_ms`.
    pub restore_each_ms: Option<Summary>,
    /// Failed operations (none allowed).
    pub failures: Vec<String>,
    /// QEMU RSS / PSS per idle sandbox with all N running (bytes).
    pub rss_each: Option<Summary>,
    /// See `rss_each`.
    pub pss_each: Option<Summary>,
}

/// Runs `n` sandboxes through create, snapshot and restore, each phase for
/// all of them at once (through the CLI, one thread per sandbox).
pub fn concurrent(b: &Bench, n: usize, memory_mib: u32) -> Result<Concurrent> {
    let names: Vec<String> = (0..n).map(|i| format!("scale-{i:02}")).collect();
    let failures = Mutex::new(Vec::new());
    let phase = |what: &str, f: &(dyn Fn(&str) -> Result<()> + Sync)| -> (f64, Vec<f64>) {
        let t = Instant::now();
        let each = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for name in &names {
                let (each, failures) = (&each, &failures);
                s.spawn(move || {
                    let t = Instant::now();
                    match f(name) {
                        Ok(()) => each
                            .lock()
                            .unwrap()
                            .push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("{what} {name}: {e:#}")),
                    }
                });
            }
        });
        (
            t.elapsed().as_secs_f64() * 1000.0,
            each.into_inner().unwrap(),
        )
    };
    let mem = memory_mib.to_string();
    let cli = &b.cli;
    let (create_ms, create_each) = phase("create", &|name| {
        cli.cli_json(&[
            "sandbox",
            "create",
            "--name",
            name,
            "--image",
            &cli.image,
            "--memory",
            &mem,
            "--boot-timeout",
            "900",
        ])?;
        cli.exec_true_cli(name, Duration::from_secs(120))
    });
    b.say(&format!("  {n} sandboxes up in {:.1}s", create_ms / 1000.0));
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for name in &names {
        if let Some(m) = b.vmm_pid(name).ok().and_then(sys::mem_use) {
            rss.push(m.rss as f64);
            pss.push(m.pss as f64);
        }
    }
    let (snapshot_ms, snapshot_each) = phase("snapshot", &|name| {
        cli.cli_json(&[
            "sandbox",
            "snapshot",
            "create",
            name,
            "--snapshot-id",
            &format!("{name}-snap"),
            "--resume-source",
        ])
        .map(drop)
    });
    b.say(&format!("  {n} snapshots in {:.1}s", snapshot_ms / 1000.0));
    let (restore_ms, restore_each) = phase("restore", &|name| {
        cli.cli_json(&[
            "sandbox",
            "snapshot",
            "restore",
            &format!("{name}-snap"),
            "--resume",
        ])?;
        cli.exec_true_cli(name, Duration::from_secs(120))
    });
    b.say(&format!("  {n} restores in {:.1}s", restore_ms / 1000.0));
    for name in &names {
        let _ = b.engine.delete(name);
    }
    Ok(Concurrent {
        sandboxes: n,
        memory_mib,
        create_ms,
        snapshot_ms,
        restore_ms,
        total_ms: create_ms + snapshot_ms + restore_ms,
        create_each_ms: Summary::of(&create_each),
        snapshot_each_ms: Summary::of(&snapshot_each),
        restore_each_ms: Summary::of(&restore_each),
        failures: failures.into_inner().unwrap(),
        rss_each: Summary::of(&rss),
        pss_each: Summary::of(&pss),
    })
}

/// `snapshot list` with many snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct ListFigures {
    /// Snapshots listed.
    pub snapshots: usize,
    /// How many of them were cloned from a real one (see `list`).
    pub synthesized: usize,
    /// `smolvm sandbox snapshot list --json`, whole process (ms).
    pub cli_ms: Option<Summary>,
    /// `smolvm_core::snapshot::list` in-process (ms).
    pub library_ms: Option<Summary>,
}

/// Brings the data dir to `total` snapshots by cloning the manifest of the
/// real snapshot `source` under new ids (manifest file + index row, the
/// same two things a real create publishes; they share its artifacts),
/// then times `snapshot list`.
pub fn list(b: &Bench, source: &str, total: usize, runs: usize) -> Result<ListFigures> {
    let store = b.engine.store();
    let row = store
        .get_snapshot(source)
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("no snapshot {source}"))?;
    let manifest: serde_json::Value = serde_json::from_str(&row.manifest)?;
    let existing = store.list_snapshots().map_err(|e| anyhow!("{e}"))?.len();
    let want = total.saturating_sub(existing);
    let created_at = manifest["created_at"]
        .as_str()
        .unwrap_or("2026-01-01T00:00:00.000000+00:00")
        .to_string();
    for i in 0..want {
        let id = format!("list-{i:05}");
        let mut m = manifest.clone();
        m["snapshot_id"] = id.clone().into();
        m["parent"] = serde_json::Value::Null;
        let dir = b.engine.data().snapshot(&id);
        smolvm_core::paths::create_private_dir(&dir)?;
        let text = serde_json::to_string_pretty(&m)?;
        std::fs::write(dir.join("manifest.json"), &text)?;
        let new_row = SnapshotRow {
            snapshot_id: id.clone(),
            vm_id: row.vm_id.clone(),
            manifest: serde_json::to_string(&m)?,
            restored: false,
            restored_vm_id: None,
        };
        let ty = m["snapshot_type"].as_str().unwrap_or("full");
        store
            .insert_snapshot(&new_row, "qemu", ty, None, &created_at)
            .map_err(|e| anyhow!("{e}"))?;
    }
    let mut cli = Vec::new();
    let mut lib = Vec::new();
    let mut count = 0;
    for _ in 0..runs {
        let (data, took) = b.cli_json(&["sandbox", "snapshot", "list"])?;
        count = data["snapshots"].as_array().map(Vec::len).unwrap_or(0);
        cli.push(took.as_secs_f64() * 1000.0);
        let t = Instant::now();
        let rows = smolvm_core::snapshot::list(&b.engine, None).map_err(|e| anyhow!("{e}"))?;
        lib.push(t.elapsed().as_secs_f64() * 1000.0);
        if rows.len() != count {
            bail!(
                "the CLI listed {count} snapshots, the library {}",
                rows.len()
            );
        }
    }
    if count < total {
        bail!("listed {count} snapshots, expected at least {total}");
    }
    Ok(ListFigures {
        snapshots: count,
        synthesized: want,
        cli_ms: Summary::of(&cli),
        library_ms: Summary::of(&lib),
    })
}
