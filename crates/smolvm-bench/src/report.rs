//! The results: one serialisable report, written as JSON and rendered as
//! markdown tables (medians with [min-max], and ratios).

use serde::Serialize;

use crate::scale::{Concurrent, ListFigures};
use crate::stats::{ratio, Summary};
use crate::sys::Machine;

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How and where it ran.
    pub meta: Meta,
    /// `sandbox create` to first `exec true` answered, 256 MiB / 2 GiB (ms).
    pub cold_create_ms: Option<Summary>,
    /// The same for the other sandbox shapes booted for the cases (ms).
    pub other_boots: Vec<Boot>,
    /// Snapshot create figures.
    pub creates: Vec<CreateCase>,
    /// Restore figures.
    pub restores: Vec<RestoreCase>,
    /// Agent round trips and idle memory.
    pub extras: Extras,
    /// N sandboxes at once.
    pub concurrent: Option<Concurrent>,
    /// `snapshot list` with many snapshots.
    pub list: Option<ListFigures>,
    /// The targets, evaluated.
    pub targets: Vec<Target>,
    /// Phases with their duration and the machine's load.
    pub phases: Vec<Phase>,
    /// What was skipped or shrunk, and why.
    pub notes: Vec<String>,
}

/// Run metadata.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// The command line.
    pub command: String,
    /// `--quick`.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// UTC start.
    pub started_at: String,
    /// Whole run (s).
    pub duration_s: f64,
    /// Acceleration the sandboxes ran with.
    pub accel: String,
    /// The machine.
    pub machine: Machine,
    /// Load averages at the start and end.
    pub load_start: [f64; 3],
    /// See `load_start`.
    pub load_end: [f64; 3],
    /// Short git revision of the tree the binaries were built from, if known.
    pub git_revision: String,
}

/// One boot of a sandbox shape.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    /// Sandbox name.
    pub name: String,
    /// Memory (MiB).
    pub memory_mib: u32,
    /// Disk (MiB).
    pub disk_mib: u64,
    /// Create to first exec (ms).
    pub ms: f64,
    /// How many were booted at once with it.
    pub concurrent: usize,
}

/// The four figures of a snapshot create.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateFigures {
    /// Wall time (ms).
    pub wall_ms: Option<Summary>,
    /// Wall time plus a `sync` right after: the time until what it wrote
    /// is on storage (smolvm fsyncs its files; the reference does not).
    pub durable_ms: Option<Summary>,
    /// Guest pause window (ms).
    pub pause_ms: Option<Summary>,
    /// Bytes written to storage.
    pub bytes_written: Option<Summary>,
    /// Allocated size of what the snapshot keeps.
    pub size_on_disk: Option<Summary>,
}

/// Snapshot create for one sandbox shape, change size and type.
#[derive(Debug, Clone, Serialize)]
pub struct CreateCase {
    /// Guest memory (MiB).
    pub memory_mib: u32,
    /// Disk size (MiB).
    pub disk_mib: u64,
    /// MiB written to the disk before each snapshot.
    pub change_mib: u32,
    /// MiB of guest memory (tmpfs) rewritten before each snapshot.
    pub memory_change_mib: u32,
    /// full, diff or disk.
    pub snapshot_type: String,
    /// smolvm.
    pub ours: CreateFigures,
    /// The 0.0.36 method.
    pub reference: Option<CreateFigures>,
    /// Writing ours' median bytes_written sequentially + fdatasync (ms).
    pub limit_write_ms: Option<Summary>,
    /// Ratios of medians.
    pub ratios: CreateRatios,
}

/// Ratios of medians (ours / other; below 1 means ours is smaller/faster).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateRatios {
    /// Wall time, ours / reference.
    pub wall_vs_reference: Option<f64>,
    /// Wall time until on storage, ours / reference.
    pub durable_vs_reference: Option<f64>,
    /// Pause window, ours / reference.
    pub pause_vs_reference: Option<f64>,
    /// Bytes written, ours / reference.
    pub bytes_vs_reference: Option<f64>,
    /// Size on disk, ours / reference.
    pub size_vs_reference: Option<f64>,
    /// Wall time, ours / machine limit for ours' bytes.
    pub wall_vs_limit: Option<f64>,
}

impl CreateCase {
    /// Fills `ratios` from the figures.
    pub fn compute_ratios(&mut self) {
        let r = self.reference.as_ref();
        self.ratios = CreateRatios {
            wall_vs_reference: ratio(
                self.ours.wall_ms.as_ref(),
                r.and_then(|r| r.wall_ms.as_ref()),
            ),
            durable_vs_reference: ratio(
                self.ours.durable_ms.as_ref(),
                r.and_then(|r| r.durable_ms.as_ref()),
            ),
            pause_vs_reference: ratio(
                self.ours.pause_ms.as_ref(),
                r.and_then(|r| r.pause_ms.as_ref()),
            ),
            bytes_vs_reference: ratio(
                self.ours.bytes_written.as_ref(),
                r.and_then(|r| r.bytes_written.as_ref()),
            ),
            size_vs_reference: ratio(
                self.ours.size_on_disk.as_ref(),
                r.and_then(|r| r.size_on_disk.as_ref()),
            ),
            wall_vs_limit: ratio(self.ours.wall_ms.as_ref(), self.limit_write_ms.as_ref()),
        };
    }
}

/// Restore to first exec for one sandbox shape and type.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreCase {
    /// Guest memory (MiB).
    pub memory_mib: u32,
    /// Disk size (MiB).
    pub disk_mib: u64,
    /// The change size of the snapshots restored.
    pub change_mib: u32,
    /// full, diff or disk.
    pub snapshot_type: String,
    /// `snapshot restore --resume` + first `exec true` (ms).
    pub ours_ms: Option<Summary>,
    /// The `restore_ms` smolvm reports for its own part (ms).
    pub ours_reported_ms: Option<Summary>,
    /// The reference's restore + first exec (ms).
    pub reference_ms: Option<Summary>,
    /// Bytes ours must read back (the memory file).
    pub read_bytes: f64,
    /// Reading `read_bytes` from the page cache (ms).
    pub limit_read_ms: Option<Summary>,
    /// ours / reference.
    pub vs_reference: Option<f64>,
    /// ours / limit.
    pub vs_limit: Option<f64>,
    /// ours / cold create to first exec.
    pub vs_cold_create: Option<f64>,
}

/// Smaller figures other issues asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extras {
    /// `smolvm sandbox exec NAME -- true`, whole CLI process (ms).
    pub exec_true_cli_ms: Option<Summary>,
    /// `true` over an already-open library session (ms).
    pub exec_true_session_ms: Option<Summary>,
    /// QEMU RSS of an idle 256 MiB sandbox (bytes).
    pub idle_rss_256: Option<Summary>,
    /// QEMU PSS of an idle 256 MiB sandbox (bytes).
    pub idle_pss_256: Option<Summary>,
}

/// A target of the issue, evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What.
    pub name: String,
    /// The target, in words.
    pub goal: String,
    /// The measured value, in words.
    pub measured: String,
    /// Met?
    pub met: Option<bool>,
}

/// A phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Name.
    pub name: String,
    /// Duration (s).
    pub seconds: f64,
    /// 1-minute load average at its start and end.
    pub load_start: f64,
    /// See `load_start`.
    pub load_end: f64,
    /// Share of both cores busy during it (all processes, ours included).
    pub cpu_busy: f64,
    /// Share of CPU time stolen by the hypervisor under this machine.
    pub cpu_steal: f64,
}

/// `12.3` / `1234` style milliseconds.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Human bytes (MiB/GiB/KiB).
pub fn bytes(v: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if v >= 1024.0 * MIB {
        format!("{:.2} GiB", v / 1024.0 / MIB)
    } else if v >= MIB {
        format!("{:.1} MiB", v / MIB)
    } else {
        format!("{:.0} KiB", v / 1024.0)
    }
}

/// `median [min–max]` with `f` formatting each value; `–` when missing.
pub fn cell(s: Option<&Summary>, f: fn(f64) -> String) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} [{}–{}]", f(s.median), f(s.min), f(s.max)),
        Some(s) => f(s.median),
        None => "–".into(),
    }
}

/// `0.12×` style ratio; `–` when missing.
pub fn x(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}×"),
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) => format!("{r:.3}×"),
        None => "–".into(),
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", headers.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        headers.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// `256 MiB` / `8 GiB` for a size in MiB.
fn mib_label(mib: u64) -> String {
    if mib >= 1024 && mib.trailing_zeros() >= 10 {
        format!("{} GiB", mib >> 10)
    } else {
        format!("{mib} MiB")
    }
}

fn shape(mem: u32, disk: u64) -> String {
    format!("{} / {}", mib_label(u64::from(mem)), mib_label(disk))
}

impl Report {
    /// The markdown rendering.
    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut s = String::new();
        s.push_str("# smolvm snapshot benchmark\n\n");
        s.push_str(&format!(
            "`{}` — {} runs per figure, started {} UTC at revision {}, took {:.0} s, accel {}.\n\n",
            m.command,
            m.runs,
            m.started_at,
            if m.git_revision.is_empty() { "?" } else { &m.git_revision },
            m.duration_s,
            m.accel
        ));
        let mc = &m.machine;
        s.push_str(&format!(
            "Machine: {} ({} cores{}), {} GiB RAM, {}, {}, {}, data dir on {}. Load average at start {:.2}/{:.2}/{:.2}, at end {:.2}/{:.2}/{:.2}.\n\n",
            mc.cpu_model,
            mc.cores,
            if mc.hypervisor.is_empty() { String::new() } else { format!(", itself a {} guest", mc.hypervisor) },
            mc.ram_gib,
            mc.os,
            mc.kernel,
            mc.qemu,
            mc.data_fs,
            m.load_start[0],
            m.load_start[1],
            m.load_start[2],
            m.load_end[0],
            m.load_end[1],
            m.load_end[2]
        ));
        s.push_str("Cells are `median [min–max]`. Ratios are of medians, ours / other: below 1× ours is faster or smaller.\n\n");
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }

        s.push_str("## Targets\n\n");
        let rows: Vec<Vec<String>> = self
            .targets
            .iter()
            .map(|t| {
                let met = match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "n/a",
                };
                vec![
                    t.name.clone(),
                    t.goal.clone(),
                    t.measured.clone(),
                    met.into(),
                ]
            })
            .collect();
        s.push_str(&table(&["target", "goal", "measured", ""], &rows));

        s.push_str("\n## Cold create\n\n");
        let mut rows = vec![vec![
            shape(256, 2048),
            cell(self.cold_create_ms.as_ref(), ms),
        ]];
        for b in &self.other_boots {
            rows.push(vec![
                format!(
                    "{} ({}, {} booting at once)",
                    shape(b.memory_mib, b.disk_mib),
                    b.name,
                    b.concurrent
                ),
                ms(b.ms),
            ]);
        }
        s.push_str(&table(
            &[
                "sandbox (memory / disk)",
                "`sandbox create` → first `exec true` answered (ms)",
            ],
            &rows,
        ));

        s.push_str("\n## Snapshot create\n\n");
        s.push_str("Wall time and pause window in ms. `change` = MiB written to the disk before each snapshot (MiB of guest memory rewritten in parentheses).\n\n");
        let rows: Vec<Vec<String>> = self
            .creates
            .iter()
            .map(|c| {
                let r = c.reference.clone().unwrap_or_default();
                vec![
                    shape(c.memory_mib, c.disk_mib),
                    format!("{} ({})", c.change_mib, c.memory_change_mib),
                    c.snapshot_type.clone(),
                    cell(c.ours.wall_ms.as_ref(), ms),
                    cell(r.wall_ms.as_ref(), ms),
                    x(c.ratios.wall_vs_reference),
                    cell(c.limit_write_ms.as_ref(), ms),
                    x(c.ratios.wall_vs_limit),
                    cell(c.ours.pause_ms.as_ref(), ms),
                    cell(r.pause_ms.as_ref(), ms),
                    x(c.ratios.pause_vs_reference),
                ]
            })
            .collect();
        s.push_str(&table(
            &[
                "memory / disk",
                "change",
                "type",
                "wall ours",
                "wall ref",
                "ours/ref",
                "limit",
                "ours/limit",
                "pause ours",
                "pause ref",
                "ours/ref",
            ],
            &rows,
        ));
        s.push('\n');
        let rows: Vec<Vec<String>> = self
            .creates
            .iter()
            .map(|c| {
                let r = c.reference.clone().unwrap_or_default();
                vec![
                    shape(c.memory_mib, c.disk_mib),
                    c.change_mib.to_string(),
                    c.snapshot_type.clone(),
                    cell(c.ours.bytes_written.as_ref(), bytes),
                    cell(r.bytes_written.as_ref(), bytes),
                    x(c.ratios.bytes_vs_reference),
                    cell(c.ours.size_on_disk.as_ref(), bytes),
                    cell(r.size_on_disk.as_ref(), bytes),
                    x(c.ratios.size_vs_reference),
                ]
            })
            .collect();
        s.push_str(&table(
            &[
                "memory / disk",
                "change",
                "type",
                "written ours",
                "written ref",
                "ours/ref",
                "size ours",
                "size ref",
                "ours/ref",
            ],
            &rows,
        ));
        s.push_str("\nUntil on storage: wall time plus a `sync` right after (smolvm fsyncs what it writes; the reference leaves it in the page cache).\n\n");
        let rows: Vec<Vec<String>> = self
            .creates
            .iter()
            .filter(|c| c.reference.is_some())
            .map(|c| {
                let r = c.reference.clone().unwrap_or_default();
                vec![
                    shape(c.memory_mib, c.disk_mib),
                    c.change_mib.to_string(),
                    c.snapshot_type.clone(),
                    cell(c.ours.durable_ms.as_ref(), ms),
                    cell(r.durable_ms.as_ref(), ms),
                    x(c.ratios.durable_vs_reference),
                ]
            })
            .collect();
        s.push_str(&table(
            &[
                "memory / disk",
                "change",
                "type",
                "ours (ms)",
                "ref (ms)",
                "ours/ref",
            ],
            &rows,
        ));

        s.push_str("\n## Restore `--resume` to first exec\n\n");
        let rows: Vec<Vec<String>> = self
            .restores
            .iter()
            .map(|r| {
                vec![
                    shape(r.memory_mib, r.disk_mib),
                    r.change_mib.to_string(),
                    r.snapshot_type.clone(),
                    cell(r.ours_ms.as_ref(), ms),
                    cell(r.ours_reported_ms.as_ref(), ms),
                    cell(r.reference_ms.as_ref(), ms),
                    x(r.vs_reference),
                    format!(
                        "{} ({})",
                        cell(r.limit_read_ms.as_ref(), ms),
                        bytes(r.read_bytes)
                    ),
                    x(r.vs_limit),
                    x(r.vs_cold_create),
                ]
            })
            .collect();
        s.push_str(&table(
            &[
                "memory / disk",
                "change",
                "type",
                "ours (ms)",
                "of which restore_ms",
                "ref (ms)",
                "ours/ref",
                "limit: page-cache read (bytes)",
                "ours/limit",
                "ours/cold create",
            ],
            &rows,
        ));

        s.push_str("\n## Scale and other figures\n\n");
        let e = &self.extras;
        let mut rows = vec![
            vec![
                "`smolvm sandbox exec NAME -- true` (CLI process)".into(),
                cell(e.exec_true_cli_ms.as_ref(), ms) + " ms",
            ],
            vec![
                "`true` over an open library session".into(),
                cell(e.exec_true_session_ms.as_ref(), ms) + " ms",
            ],
            vec![
                "QEMU RSS, idle 256 MiB sandbox".into(),
                cell(e.idle_rss_256.as_ref(), bytes),
            ],
            vec![
                "QEMU PSS, idle 256 MiB sandbox".into(),
                cell(e.idle_pss_256.as_ref(), bytes),
            ],
        ];
        if let Some(l) = &self.list {
            rows.push(vec![
                format!("`smolvm sandbox snapshot list --json`, {} snapshots ({} cloned from a real one)", l.snapshots, l.synthesized),
                cell(l.cli_ms.as_ref(), ms) + " ms",
            ]);
            rows.push(vec![
                format!("`snapshot::list` in-process, {} snapshots", l.snapshots),
                cell(l.library_ms.as_ref(), ms) + " ms",
            ]);
        }
        if let Some(c) = &self.concurrent {
            let n = c.sandboxes;
            rows.push(vec![
                format!(
                    "{n} × {} MiB sandboxes: create → first exec, all at once",
                    c.memory_mib
                ),
                format!(
                    "{:.1} s (each {} ms)",
                    c.create_ms / 1000.0,
                    cell(c.create_each_ms.as_ref(), ms)
                ),
            ]);
            rows.push(vec![
                format!("{n} full snapshots at once"),
                format!(
                    "{:.1} s (each {} ms)",
                    c.snapshot_ms / 1000.0,
                    cell(c.snapshot_each_ms.as_ref(), ms)
                ),
            ]);
            rows.push(vec![
                format!("{n} restores → first exec at once"),
                format!(
                    "{:.1} s (each {} ms)",
                    c.restore_ms / 1000.0,
                    cell(c.restore_each_ms.as_ref(), ms)
                ),
            ]);
            rows.push(vec![
                format!("{n} sandboxes: total"),
                format!(
                    "{:.1} s, {} failures",
                    c.total_ms / 1000.0,
                    c.failures.len()
                ),
            ]);
            rows.push(vec![
                format!("QEMU RSS / PSS per sandbox with {n} idle"),
                format!(
                    "{} / {}",
                    cell(c.rss_each.as_ref(), bytes),
                    cell(c.pss_each.as_ref(), bytes)
                ),
            ]);
        }
        s.push_str(&table(&["figure", "value"], &rows));

        s.push_str("\n## Phases and load\n\n");
        let rows: Vec<Vec<String>> = self
            .phases
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    format!("{:.1}", p.seconds),
                    format!("{:.2} → {:.2}", p.load_start, p.load_end),
                    format!("{:.0}%", p.cpu_busy * 100.0),
                    format!("{:.1}%", p.cpu_steal * 100.0),
                ]
            })
            .collect();
        s.push_str(&table(
            &["phase", "s", "load (1 min)", "CPU busy (all)", "steal"],
            &rows,
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_ratios_and_tables() {
        let s = Summary::of(&[10.0, 30.0, 20.0]).unwrap();
        assert_eq!(cell(Some(&s), ms), "20.0 [10.0–30.0]");
        assert_eq!(cell(Some(&Summary::of(&[1500.0]).unwrap()), ms), "1500");
        assert_eq!(cell(None, ms), "–");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(bytes(2048.0), "2 KiB");
        assert_eq!(x(Some(0.2)), "0.20×");
        assert_eq!(x(Some(12.4)), "12×");
        assert_eq!(x(Some(0.01234)), "0.012×");
        assert_eq!(x(None), "–");
        let t = table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n");
        assert_eq!(shape(1024, 8192), "1 GiB / 8 GiB");
    }

    #[test]
    fn create_ratios_come_from_medians() {
        let sum = |v: &[f64]| Summary::of(v);
        let mut c = CreateCase {
            memory_mib: 256,
            disk_mib: 2048,
            change_mib: 10,
            memory_change_mib: 10,
            snapshot_type: "full".into(),
            ours: CreateFigures {
                wall_ms: sum(&[100.0, 200.0, 300.0]),
                durable_ms: sum(&[300.0]),
                pause_ms: sum(&[50.0]),
                bytes_written: None,
                size_on_disk: sum(&[10.0]),
            },
            reference: Some(CreateFigures {
                wall_ms: sum(&[1000.0]),
                durable_ms: sum(&[3000.0]),
                pause_ms: sum(&[500.0]),
                bytes_written: sum(&[7.0]),
                size_on_disk: sum(&[40.0]),
            }),
            limit_write_ms: sum(&[100.0]),
            ratios: CreateRatios::default(),
        };
        c.compute_ratios();
        assert_eq!(c.ratios.wall_vs_reference, Some(0.2));
        assert_eq!(c.ratios.durable_vs_reference, Some(0.1));
        assert_eq!(c.ratios.pause_vs_reference, Some(0.1));
        assert_eq!(c.ratios.bytes_vs_reference, None);
        assert_eq!(c.ratios.size_vs_reference, Some(0.25));
        assert_eq!(c.ratios.wall_vs_limit, Some(2.0));
        let md = Report {
            meta: Meta {
                command: "smolvm-bench".into(),
                quick: true,
                runs: 3,
                started_at: "t".into(),
                duration_s: 1.0,
                accel: "tcg".into(),
                machine: crate::sys::Machine {
                    cpu_model: "cpu".into(),
                    cores: 2,
                    hypervisor: String::new(),
                    ram_gib: 1.0,
                    kernel: "k".into(),
                    qemu: "q".into(),
                    qemu_img: "qi".into(),
                    data_fs: "ext4".into(),
                    os: "os".into(),
                },
                load_start: [0.0; 3],
                load_end: [0.0; 3],
                git_revision: String::new(),
            },
            cold_create_ms: None,
            other_boots: vec![],
            creates: vec![c],
            restores: vec![],
            extras: Extras::default(),
            concurrent: None,
            list: None,
            targets: vec![],
            phases: vec![],
            notes: vec![],
        }
        .markdown();
        assert!(md.contains("| 256 MiB / 2 GiB | 10 (10) | full | 200 [100–300] | 1000 | 0.20× | 100 | 2.00× | 50.0 | 500 | 0.10× |"), "{md}");
    }
}
