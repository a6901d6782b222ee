//! `smolvm-bench`: smolvm's snapshots measured against the method of
//! smolvm 0.0.36 (the reference) and against the machine's limit, on real
//! guests. Writes `bench.json` and `bench.md` into `--out`.
//!
//! Run it after `bash scripts/build.sh`:
//! `cargo run --release -p smolvm-bench -- --out target/bench`.

mod firecracker;
mod harness;
mod limit;
mod ours;
mod reference;
mod report;
mod scale;
mod stats;
mod sys;
mod targets;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

use harness::Bench;
use ours::CreateSample;
use reference::RefSandbox;
use report::{
    Boot, CreateCase, CreateFigures, CreateRatios, Extras, Meta, Phase, Report, RestoreCase,
};
use stats::Summary;

/// Benchmarks smolvm snapshots against the 0.0.36 reference method and the machine's limit.
#[derive(Parser, Debug)]
#[command(name = "smolvm-bench", version)]
struct Args {
    /// Fewer runs and cases: a CI smoke run (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// Where bench.json and bench.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Runs per figure (default 5, 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// Sandboxes in the concurrency test (default 20, 3 with --quick; 0 skips it).
    #[arg(long)]
    scale: Option<usize>,
    /// Snapshots in the `snapshot list` test (default 1000, 200 with --quick).
    #[arg(long)]
    list: Option<usize>,
    /// The smolvm binary (default: `smolvm` next to this program).
    #[arg(long)]
    smolvm: Option<PathBuf>,
    /// The static guest agent for the image (default: found next to smolvm).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Acceleration for every sandbox.
    #[arg(long, env = "SMOLVM_ACCEL", default_value = "auto")]
    accel: String,
    /// Working directory (default: a new /tmp/smolvm-bench-<pid>).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the working directory (sandboxes are stopped anyway).
    #[arg(long)]
    keep: bool,
    /// Skip parts: any of creates, restores, limits, extras, scale, list, large, disk8, firecracker.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Time budget in seconds (default 570, 110 with --quick): cases that
    /// would not fit are skipped and the concurrency test shrinks, both
    /// noted in the report.
    #[arg(long)]
    budget: Option<f64>,
}

/// A sandbox shape of the cases.
#[derive(Debug, Clone, Copy)]
struct Shape {
    key: &'static str,
    memory_mib: u32,
    disk_mib: u64,
}

const SMALL: Shape = Shape {
    key: "s",
    memory_mib: 256,
    disk_mib: 2048,
};
const DISK8: Shape = Shape {
    key: "d",
    memory_mib: 256,
    disk_mib: 8192,
};
const LARGE: Shape = Shape {
    key: "l",
    memory_mib: 1024,
    disk_mib: 8192,
};

/// What to measure for one change size on one shape.
#[derive(Debug, Clone)]
struct CasePlan {
    shape: Shape,
    /// MiB written to the disk before each snapshot.
    change: u32,
    /// Snapshot types measured, in order.
    types: Vec<&'static str>,
    /// Measure smolvm (false: only the reference, for `reference` types).
    ours: bool,
    /// Of `types`, those also measured with the reference method.
    reference: Vec<&'static str>,
    /// Types whose smolvm snapshot is restored right after it is taken
    /// (snapshot, then roll back).
    restore: Vec<&'static str>,
    /// The same for the reference's snapshots.
    ref_restore: Vec<&'static str>,
    /// Rough cost at this machine's normal speed with 5 runs (s), for the
    /// time budget.
    cost_s: f64,
}

/// One step of the run, in priority order.
#[derive(Debug, Clone)]
enum Item {
    Case(CasePlan),
    /// N sandboxes at once.
    Scale,
}

fn case(
    shape: Shape,
    change: u32,
    types: &[&'static str],
    reference: &[&'static str],
    restore: &[&'static str],
    ref_restore: &[&'static str],
    cost_s: f64,
) -> Item {
    Item::Case(CasePlan {
        shape,
        change,
        types: types.to_vec(),
        ours: true,
        reference: reference.to_vec(),
        restore: restore.to_vec(),
        ref_restore: ref_restore.to_vec(),
        cost_s,
    })
}

/// The run, most important first. A full run must finish in 10 minutes on
/// 2 cores under TCG, so the reference (which writes ~1.4 GiB per full or
/// disk snapshot and again per restore) and the boot-bound disk restores
/// are measured where the targets need them, smolvm everywhere;
/// whatever does not fit the time budget is skipped and said so.
fn plan(quick: bool, skip: &[String]) -> Vec<Item> {
    let has = |s: &str| !skip.iter().any(|k| k == s);
    const ALL: &[&str] = &["full", "diff", "disk"];
    if quick {
        return vec![
            case(
                SMALL,
                10,
                &["full", "disk"],
                &["full", "disk"],
                &["full"],
                &["full"],
                40.0,
            ),
            Item::Scale,
        ];
    }
    // 256 MiB / 2 GiB with 10 MiB changed is where every target is
    // measured; 8 GiB isolates the disk size, 200 MiB the change size, and
    // 1 GiB / 8 GiB with 200 MiB changed is the largest case (memory, disk
    // and change at once).
    let mut p = vec![case(SMALL, 10, ALL, ALL, ALL, ALL, 200.0)];
    if has("disk8") {
        p.push(case(DISK8, 10, ALL, &[], &[], &[], 25.0));
    }
    p.push(Item::Scale);
    p.push(case(SMALL, 200, ALL, &["full"], &[], &[], 70.0));
    if has("large") {
        p.push(case(
            LARGE,
            200,
            &["full", "disk"],
            &[],
            &["full"],
            &[],
            70.0,
        ));
        // The reference on the largest case, if the budget allows.
        if let Item::Case(mut c) = case(LARGE, 200, &["full"], &["full"], &[], &[], 45.0) {
            c.ours = false;
            p.push(Item::Case(c));
        }
    }
    p
}

fn main() {
    let args = Args::parse();
    // As the CLI does: snapshots hold guest memory.
    unsafe { libc::umask(0o077) };
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("smolvm-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

fn default_smolvm() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent dir"))?
        .join("smolvm");
    if !p.is_file() {
        bail!(
            "{} not found; build it with 'bash scripts/build.sh' or pass --smolvm",
            p.display()
        );
    }
    Ok(p)
}

/// The static agent scripts/build.sh makes (a plain `cargo build` leaves a
/// dynamic one next to smolvm, which an image cannot use).
fn default_agent(smolvm: &std::path::Path) -> Option<PathBuf> {
    let dir = smolvm.parent()?;
    [
        dir.join("../x86_64-unknown-linux-gnu/release/smolvm-agent"),
        dir.join("smolvm-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file() && smolvm_core::image::check_static_agent(p).is_ok())
}

/// Tracks phases: duration, load and CPU use.
struct Phases {
    list: Vec<Phase>,
    current: Option<(String, Instant, f64, sys::CpuTimes)>,
}

impl Phases {
    fn start(&mut self, b: &Bench, name: &str) {
        self.end();
        b.say(&format!("== {name}"));
        self.current = Some((
            name.to_string(),
            Instant::now(),
            sys::loadavg()[0],
            sys::CpuTimes::now(),
        ));
    }
    fn end(&mut self) {
        if let Some((name, t, load, cpu)) = self.current.take() {
            let (busy, steal) = cpu.usage_since(&sys::CpuTimes::now());
            self.list.push(Phase {
                name,
                seconds: t.elapsed().as_secs_f64(),
                load_start: load,
                load_end: sys::loadavg()[0],
                cpu_busy: busy,
                cpu_steal: steal,
            });
        }
    }
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let started_at = smolvm_core::now_rfc3339();
    let runs = args.runs.unwrap_or(if args.quick { 3 } else { 5 });
    let scale_n = args.scale.unwrap_or(if args.quick { 3 } else { 20 });
    let list_n = args.list.unwrap_or(if args.quick { 200 } else { 1000 });
    let smolvm = match &args.smolvm {
        Some(p) => p.clone(),
        None => default_smolvm()?,
    };
    let agent = args.agent.clone().or_else(|| default_agent(&smolvm));
    let root = args
        .work_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/smolvm-bench-{}", std::process::id())));
    if root.exists() {
        bail!(
            "{} exists; pass another --work-dir or remove it",
            root.display()
        );
    }
    let b = Bench::prepare(root, &smolvm, agent.as_deref(), args.accel.clone(), started)?;
    let load_start = sys::loadavg();
    // Taken now: others may commit while the run goes on.
    let revision = git_revision();
    b.say(&format!(
        "working in {} (load {:.2} {:.2} {:.2})",
        b.root.display(),
        load_start[0],
        load_start[1],
        load_start[2]
    ));
    let mut phases = Phases {
        list: Vec::new(),
        current: None,
    };
    let budget_s = args
        .budget
        .unwrap_or(if args.quick { 110.0 } else { 570.0 });
    let mut report = Report {
        meta: Meta {
            command: String::new(),
            quick: args.quick,
            runs,
            started_at: String::new(),
            duration_s: 0.0,
            accel: String::new(),
            machine: sys::machine(&b.data),
            load_start,
            load_end: [0.0; 3],
            git_revision: String::new(),
        },
        cold_create_ms: None,
        other_boots: Vec::new(),
        creates: Vec::new(),
        restores: Vec::new(),
        extras: Extras::default(),
        concurrent: None,
        list: None,
        targets: Vec::new(),
        phases: Vec::new(),
        notes: Vec::new(),
    };
    let result = measure(
        &b,
        &args,
        runs,
        scale_n,
        list_n,
        budget_s,
        &mut phases,
        &mut report,
    );
    let fc = if result.is_ok() && !args.skip.iter().any(|k| k == "firecracker") {
        phases.start(&b, "firecracker (tiny counter guest)");
        firecracker::measure(&b, runs)
    } else {
        Ok(Err("Firecracker: skipped".to_string()))
    };
    phases.end();
    b.say("cleaning up");
    b.cleanup(args.keep);
    result?;
    report.meta = Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: args.quick,
        runs,
        started_at,
        duration_s: started.elapsed().as_secs_f64(),
        accel: report.meta.accel.clone(),
        machine: report.meta.machine.clone(),
        load_start,
        load_end: sys::loadavg(),
        git_revision: revision,
    };
    report.phases = phases.list;
    report.targets = targets::evaluate(&report);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("bench.json");
    let md = args.out.join("bench.md");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    let fc_md = match &fc {
        Ok(Ok(r)) => {
            std::fs::write(
                args.out.join("firecracker.json"),
                serde_json::to_string_pretty(r)? + "\n",
            )?;
            r.markdown()
        }
        Ok(Err(note)) => format!("\n## Firecracker\n\n{note}\n"),
        Err(e) => format!("\n## Firecracker\n\nFailed: {e:#}\n"),
    };
    std::fs::write(&md, report.markdown() + &fc_md)?;
    eprintln!("\n{}{fc_md}", report.markdown());
    eprintln!(
        "wrote {} and {} in {:.0} s",
        json.display(),
        md.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The sandboxes of one shape: smolvm's and the reference's.
struct Pair {
    ours: String,
    reference: Option<RefSandbox>,
    paused: bool,
}

/// Budget bookkeeping: a case runs only if its estimated cost fits.
struct Budget {
    deadline: Instant,
    /// Measured slowness of this run relative to a quiet machine (>= 1).
    slowness: f64,
}

impl Budget {
    fn left(&self) -> f64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    }
    fn fits(&self, cost_s: f64, runs: usize) -> bool {
        cost_s * self.slowness * runs as f64 / 5.0 <= self.left()
    }
}

/// Seconds reserved at the end for the limits, the list test and cleanup.
fn reserve_s(quick: bool) -> f64 {
    if quick {
        10.0
    } else {
        30.0
    }
}

/// Seconds the concurrency test takes for `n` sandboxes on a quiet 2-core
/// machine under TCG (measured: 20 in ~126 s; it is CPU-bound boots).
fn scale_cost_s(n: usize) -> f64 {
    10.0 + 5.8 * n as f64
}

#[allow(clippy::too_many_arguments)]
fn measure(
    b: &Bench,
    args: &Args,
    runs: usize,
    scale_n: usize,
    list_n: usize,
    budget_s: f64,
    phases: &mut Phases,
    report: &mut Report,
) -> Result<()> {
    let has = |s: &str| !args.skip.iter().any(|k| k == s);
    let run_start = Instant::now();

    phases.start(b, "image build (tiny)");
    let (data, _) = b.cli_json(&["image", "build", "--name", &b.image, "--base", "tiny"])?;
    b.say(&format!(
        "image {}",
        data["image"]["name"].as_str().unwrap_or(&b.image)
    ));

    // Cold create: disposable sandboxes first (the extras are measured on
    // the first one), then the small pair, so at most one other guest idles.
    phases.start(b, "cold create");
    let mut cold = Vec::new();
    let disposable = runs.saturating_sub(2).max(1);
    for i in 0..disposable {
        let name = format!("cold-{i}");
        let ms = b.create_sandbox(&name, SMALL.memory_mib, SMALL.disk_mib)?;
        b.say(&format!("  {name}: {ms:.0} ms"));
        cold.push(ms);
        if i == 0 && has("extras") {
            report.extras = extras(b, &name, runs)?;
        }
        b.engine.delete(&name).map_err(|e| anyhow!("{e}"))?;
    }
    let mut pairs: BTreeMap<&'static str, Pair> = BTreeMap::new();
    for name in ["o-s", "r-s"] {
        let ms = b.create_sandbox(name, SMALL.memory_mib, SMALL.disk_mib)?;
        b.say(&format!("  {name}: {ms:.0} ms"));
        cold.push(ms);
    }
    pairs.insert(
        SMALL.key,
        Pair {
            ours: "o-s".into(),
            reference: Some(RefSandbox::adopt(b, "r-s")?),
            paused: false,
        },
    );
    report.cold_create_ms = Summary::of(&cold);
    report.meta.accel = b
        .engine
        .get("o-s")
        .map(|r| r.config.accel.as_str().to_string())
        .unwrap_or_default();
    let cold_median = report
        .cold_create_ms
        .as_ref()
        .map(|s| s.median)
        .unwrap_or(6000.0);
    // A quiet machine boots the tiny image to first exec in ~5.5 s.
    let budget = Budget {
        deadline: run_start + Duration::from_secs_f64((budget_s - reserve_s(args.quick)).max(0.0)),
        slowness: (cold_median / 5500.0).max(1.0),
    };

    let items = plan(args.quick, &args.skip);
    let max_change = |key: &str| {
        items
            .iter()
            .filter_map(|i| {
                if let Item::Case(c) = i {
                    (c.shape.key == key).then_some(c.change)
                } else {
                    None
                }
            })
            .max()
            .unwrap_or(0)
    };
    let used_later = |from: usize, key: &str| {
        items[from..]
            .iter()
            .any(|i| matches!(i, Item::Case(c) if c.shape.key == key))
    };
    let mut set_up: Vec<&str> = Vec::new();
    let mut skipped: Vec<(&str, u32)> = Vec::new();
    let mut step = 0u64;
    let mut list_source = None;
    for (idx, item) in items.iter().enumerate() {
        let cp = match item {
            Item::Scale => {
                if !(has("scale") && scale_n > 0) {
                    continue;
                }
                let left = budget.left();
                let n = (1..=scale_n)
                    .rev()
                    .find(|&n| scale_cost_s(n) * budget.slowness <= left)
                    .unwrap_or(0);
                if n < scale_n {
                    report.notes.push(format!(
                        "The concurrency test ran with {n} sandboxes instead of {scale_n}: at this run's speed ({:.1}x a quiet machine) {scale_n} would not fit the {budget_s:.0} s budget.",
                        budget.slowness
                    ));
                }
                if n > 0 {
                    for p in pairs.values_mut() {
                        pause_pair(b, p)?;
                    }
                    phases.start(b, &format!("{n} sandboxes at once"));
                    report.concurrent = Some(scale::concurrent(b, n, SMALL.memory_mib)?);
                }
                continue;
            }
            Item::Case(cp) => cp,
        };
        let shape = cp.shape;
        let label = format!("{} MiB / {} MiB", shape.memory_mib, shape.disk_mib);
        // A reference-only item completes the smolvm item before it: not
        // without it.
        let orphan = !cp.ours && skipped.contains(&(shape.key, cp.change));
        if orphan || !budget.fits(cp.cost_s, runs) {
            skipped.push((shape.key, cp.change));
            report.notes.push(format!(
                "Skipped for the time budget: {label} with {} MiB changed ({}{}).",
                cp.change,
                cp.types.join(", "),
                if cp.ours { "" } else { ", reference" }
            ));
            b.say(&format!(
                "skipping {label}, {} MiB changed: over the time budget",
                cp.change
            ));
            continue;
        }
        // Only this shape's guests run while it is measured.
        for (k, p) in pairs.iter_mut() {
            if *k != shape.key {
                pause_pair(b, p)?;
            }
        }
        let needs_ref = !cp.reference.is_empty();
        let have = pairs
            .get(shape.key)
            .map(|p| (true, p.reference.is_some()))
            .unwrap_or((false, false));
        if !have.0 || (needs_ref && !have.1) {
            phases.start(b, &format!("boot {label}"));
            let o = format!("o-{}", shape.key);
            let r = format!("r-{}", shape.key);
            let mut names = Vec::new();
            if !have.0 {
                names.push(o.clone());
            }
            if needs_ref && !have.1 {
                names.push(r.clone());
            }
            for (name, ms) in boot_all(b, &names, shape)? {
                b.say(&format!(
                    "  {name}: {ms:.0} ms (booted {} at once)",
                    names.len()
                ));
                report.other_boots.push(Boot {
                    name,
                    memory_mib: shape.memory_mib,
                    disk_mib: shape.disk_mib,
                    ms,
                    concurrent: names.len(),
                });
            }
            let reference = if needs_ref && !have.1 {
                let adopted = RefSandbox::adopt(b, &r)?;
                if set_up.contains(&shape.key) {
                    b.sh(
                        &adopted.name,
                        &workload::setup_script(max_change(shape.key)),
                    )?;
                }
                Some(adopted)
            } else {
                None
            };
            let entry = pairs.entry(shape.key).or_insert(Pair {
                ours: o,
                reference: None,
                paused: false,
            });
            if reference.is_some() {
                entry.reference = reference;
            }
        }
        let pair = pairs.get_mut(shape.key).ok_or_else(|| anyhow!("no pair"))?;
        resume_pair(b, pair)?;
        if !set_up.contains(&shape.key) {
            phases.start(b, &format!("workload setup {label}"));
            let script = workload::setup_script(max_change(shape.key));
            b.sh(&pair.ours, &script)?;
            if let Some(r) = &pair.reference {
                b.sh(&r.name, &script)?;
            }
            set_up.push(shape.key);
        }
        let o = pair.ours.clone();
        let r = pair.reference.as_ref();
        let change = cp.change;
        phases.start(b, &format!("snapshots {label}, {change} MiB changed"));
        let mem_change = workload::memory_change_mib(change, shape.memory_mib);
        for ty in &cp.types {
            let with_ref = r.filter(|_| cp.reference.contains(ty));
            let restore = cp.restore.contains(ty) && has("restores");
            let ref_restore = cp.ref_restore.contains(ty) && has("restores");
            let (mut ours_s, mut ref_s) = (Vec::new(), Vec::new());
            let (mut ours_r, mut reported, mut ref_r) = (Vec::new(), Vec::new(), Vec::new());
            // A disk snapshot of smolvm takes ~0.2 s, so it gets twice the
            // runs (its median is compared across disk sizes); restores and
            // the reference stay at `runs`.
            let ours_runs = if *ty == "disk" && cp.ours { runs * 2 } else { runs };
            for run in 0..ours_runs {
                step += 1;
                let script = workload::change_script(step, change, mem_change);
                let id = format!("o{}-{change}-{ty}-{run}", shape.key);
                let restore = restore && run < runs;
                let with_ref = with_ref.filter(|_| run < runs);
                if cp.ours {
                    b.sh(&o, &script)?;
                    settle();
                    let mut s = ours::create(b, &o, &id, ty)?;
                    s.sync_after_ms = settle();
                    b.say(&format!(
                        "  ours {id}: {:.0} ms, pause {:.0} ms, wrote {} (VMM {})",
                        s.wall_ms,
                        s.pause_ms,
                        report::bytes(s.bytes_written),
                        report::bytes(s.vmm_bytes)
                    ));
                    if restore {
                        settle();
                        let rs = ours::restore(b, &o, &id)?;
                        b.say(&format!(
                            "  ours restore {id}: {:.0} ms (restore_ms {:.0})",
                            rs.to_first_exec_ms, rs.reported_ms
                        ));
                        ours_r.push(rs.to_first_exec_ms);
                        reported.push(rs.reported_ms);
                    }
                    if list_source.is_none() && *ty == "full" {
                        list_source = Some(id.clone());
                    }
                    ours_s.push((id, s));
                }
                if let Some(r) = with_ref {
                    b.sh(&r.name, &script)?;
                    let id = format!("r{}-{change}-{ty}-{run}", shape.key);
                    settle();
                    let mut s = r.create(b, &id, ty)?;
                    s.sync_after_ms = settle();
                    b.say(&format!(
                        "  ref  {id}: {:.0} ms, pause {:.0} ms, wrote {}, then {:.0} ms to write it back",
                        s.wall_ms,
                        s.pause_ms,
                        report::bytes(s.bytes_written),
                        s.sync_after_ms
                    ));
                    if ref_restore {
                        settle();
                        let ms = r.restore(b, &id, ty)?;
                        b.say(&format!("  ref  restore {id}: {ms:.0} ms"));
                        ref_r.push(ms);
                    }
                    let _ = std::fs::remove_dir_all(r.snapshot_dir(&id));
                    ref_s.push((id, s));
                }
            }
            let mut c = CreateCase {
                memory_mib: shape.memory_mib,
                disk_mib: shape.disk_mib,
                change_mib: change,
                memory_change_mib: mem_change,
                snapshot_type: ty.to_string(),
                ours: figures(&ours_s),
                reference: with_ref.map(|_| figures(&ref_s)),
                limit_write_ms: None,
                ratios: CreateRatios::default(),
            };
            c.compute_ratios();
            // A reference-only item completes the row smolvm's item made.
            let same = report.creates.iter_mut().find(|e| {
                (e.memory_mib, e.disk_mib, e.change_mib, e.snapshot_type.as_str())
                    == (c.memory_mib, c.disk_mib, c.change_mib, c.snapshot_type.as_str())
            });
            match same {
                Some(e) if !cp.ours && e.reference.is_none() => {
                    e.reference = c.reference;
                    e.compute_ratios();
                }
                _ => report.creates.push(c),
            }
            if restore {
                report.restores.push(RestoreCase {
                    memory_mib: shape.memory_mib,
                    disk_mib: shape.disk_mib,
                    change_mib: change,
                    snapshot_type: ty.to_string(),
                    ours_ms: Summary::of(&ours_r),
                    ours_reported_ms: Summary::of(&reported),
                    reference_ms: Summary::of(&ref_r),
                    read_bytes: median_of(ours_s.iter().map(|(_, s)| s.restore_bytes)),
                    limit_read_ms: None,
                    vs_reference: None,
                    vs_limit: None,
                    vs_cold_create: None,
                });
            }
        }
        // Done with this shape? Free its CPU, memory and disk.
        if !used_later(idx + 1, shape.key) {
            if let Some(p) = pairs.remove(shape.key) {
                let _ = b.engine.delete(&p.ours);
                if let Some(r) = &p.reference {
                    let _ = b.engine.delete(&r.name);
                }
            }
        }
    }
    for p in pairs.values() {
        let _ = b.engine.delete(&p.ours);
        if let Some(r) = &p.reference {
            let _ = b.engine.delete(&r.name);
        }
    }

    if has("limits") {
        phases.start(b, "machine limit (write+fdatasync, page-cache read)");
        let dir = b.engine.data().snapshots();
        for c in report.creates.iter_mut() {
            let bytes = c
                .ours
                .bytes_written
                .as_ref()
                .map(|s| s.median)
                .unwrap_or(0.0) as u64;
            c.limit_write_ms = Summary::of(&limit::write_ms(&dir, bytes, runs)?);
            c.compute_ratios();
        }
        for r in report.restores.iter_mut() {
            if r.read_bytes > 0.0 {
                r.limit_read_ms = Summary::of(&limit::read_ms(&dir, r.read_bytes as u64, runs)?);
            }
        }
    }
    let cold = report.cold_create_ms.clone();
    for r in report.restores.iter_mut() {
        r.vs_reference = stats::ratio(r.ours_ms.as_ref(), r.reference_ms.as_ref());
        r.vs_limit = stats::ratio(r.ours_ms.as_ref(), r.limit_read_ms.as_ref());
        r.vs_cold_create = stats::ratio(r.ours_ms.as_ref(), cold.as_ref());
    }

    if has("list") && list_n > 0 {
        if let Some(src) = &list_source {
            phases.start(b, &format!("snapshot list with {list_n} snapshots"));
            report.list = Some(scale::list(b, src, list_n, runs)?);
        }
    }
    phases.end();
    Ok(())
}

fn pause_pair(b: &Bench, p: &mut Pair) -> Result<()> {
    if !p.paused {
        b.engine.pause(&p.ours).map_err(|e| anyhow!("{e}"))?;
        if let Some(r) = &p.reference {
            b.engine.pause(&r.name).map_err(|e| anyhow!("{e}"))?;
        }
        p.paused = true;
    }
    Ok(())
}

fn resume_pair(b: &Bench, p: &mut Pair) -> Result<()> {
    if p.paused {
        b.engine.resume(&p.ours).map_err(|e| anyhow!("{e}"))?;
        if let Some(r) = &p.reference {
            b.engine.resume(&r.name).map_err(|e| anyhow!("{e}"))?;
        }
        p.paused = false;
    }
    Ok(())
}

/// Writes back whatever earlier steps left dirty in the page cache (the
/// reference never fsyncs), so each measurement starts from a clean state.
/// Returns how long that took (ms).
fn settle() -> f64 {
    let t = Instant::now();
    unsafe { libc::sync() };
    t.elapsed().as_secs_f64() * 1000.0
}

/// Boots `names` at once (setup, not a measured figure; the cold create
/// figure is measured one at a time) and returns each one's create time.
fn boot_all(b: &Bench, names: &[String], shape: Shape) -> Result<Vec<(String, f64)>> {
    let cli = &b.cli;
    let results: Vec<(String, Result<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    s.spawn(move || cli.create_sandbox(n, shape.memory_mib, shape.disk_mib)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                (
                    n,
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("boot thread panicked"))),
                )
            })
            .collect()
    });
    results
        .into_iter()
        .map(|(n, r)| r.map(|ms| (n, ms)))
        .collect()
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    Summary::of(&v).map(|s| s.median).unwrap_or(0.0)
}

fn figures(samples: &[(String, CreateSample)]) -> CreateFigures {
    let col = |f: fn(&CreateSample) -> f64| {
        Summary::of(&samples.iter().map(|(_, s)| f(s)).collect::<Vec<_>>())
    };
    CreateFigures {
        wall_ms: col(|s| s.wall_ms),
        durable_ms: col(|s| s.wall_ms + s.sync_after_ms),
        pause_ms: col(|s| s.pause_ms),
        bytes_written: col(|s| s.bytes_written),
        size_on_disk: col(|s| s.size_on_disk),
    }
}

/// Agent round trips and idle memory, on a freshly booted 256 MiB sandbox.
fn extras(b: &Bench, name: &str, runs: usize) -> Result<Extras> {
    let pid = b.vmm_pid(name)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut rss = Vec::new();
    let mut pss = Vec::new();
    for _ in 0..runs {
        if let Some(m) = sys::mem_use(pid) {
            rss.push(m.rss as f64);
            pss.push(m.pss as f64);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut cli = Vec::new();
    for _ in 0..runs.max(10) {
        let run = b.cli(&["sandbox", "exec", name, "--", "true"])?;
        if run.code != 0 {
            bail!("exec true failed: {}", run.stderr);
        }
        cli.push(run.elapsed.as_secs_f64() * 1000.0);
    }
    let mut session = b.session(name)?;
    let mut lib = Vec::new();
    for _ in 0..runs.max(20) {
        let t = Instant::now();
        harness::exec_true_in(&mut session)?;
        lib.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Extras {
        exec_true_cli_ms: Summary::of(&cli),
        exec_true_session_ms: Summary::of(&lib),
        idle_rss_256: Summary::of(&rss),
        idle_pss_256: Summary::of(&pss),
    })
}
