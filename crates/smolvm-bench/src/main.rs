//! `smolvm-bench`: smolvm's snapshots measured against the method of
//! smolvm 0.0.36 (the reference) and against the machine's limit, on real
//! guests. Writes `bench.json` and `bench.md` into `--out`.
//!
//! Run it after `bash scripts/build.sh`:
//! `cargo run --release -p smolvm-bench -- --out target/bench`.

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
use report::{Boot, CreateCase, CreateFigures, CreateRatios, Extras, Meta, Phase, Report, RestoreCase};
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
    /// Skip parts: any of cold, creates, restores, limits, extras, scale, list, large, disk8.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// A sandbox shape of the cases.
#[derive(Debug, Clone, Copy)]
struct Shape {
    key: &'static str,
    memory_mib: u32,
    disk_mib: u64,
}

const SMALL: Shape = Shape { key: "s", memory_mib: 256, disk_mib: 2048 };
const DISK8: Shape = Shape { key: "d", memory_mib: 256, disk_mib: 8192 };
const LARGE: Shape = Shape { key: "l", memory_mib: 1024, disk_mib: 8192 };

/// What to measure on one shape.
#[derive(Debug, Clone)]
struct ShapePlan {
    shape: Shape,
    /// (change MiB, types) for snapshot create, in order.
    creates: Vec<(u32, Vec<&'static str>)>,
    /// Types to restore (the snapshots of the first change size).
    restores: Vec<&'static str>,
    /// Measure the reference method too.
    reference: bool,
}

fn plan(quick: bool, skip: &[String]) -> Vec<ShapePlan> {
    let has = |s: &str| !skip.iter().any(|k| k == s);
    let all = vec!["full", "diff", "disk"];
    let mut p = Vec::new();
    if quick {
        p.push(ShapePlan { shape: SMALL, creates: vec![(10, vec!["full", "disk"])], restores: vec!["full"], reference: true });
        return p;
    }
    p.push(ShapePlan { shape: SMALL, creates: vec![(10, all.clone()), (200, all.clone())], restores: all.clone(), reference: true });
    if has("disk8") {
        p.push(ShapePlan { shape: DISK8, creates: vec![(10, all.clone())], restores: vec![], reference: true });
    }
    if has("large") {
        p.push(ShapePlan { shape: LARGE, creates: vec![(10, all.clone()), (200, vec!["full", "diff"])], restores: vec!["full"], reference: true });
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
    let p = exe.parent().ok_or_else(|| anyhow!("no parent dir"))?.join("smolvm");
    if !p.is_file() {
        bail!("{} not found; build it with 'bash scripts/build.sh' or pass --smolvm", p.display());
    }
    Ok(p)
}

fn default_agent(smolvm: &std::path::Path) -> Option<PathBuf> {
    let dir = smolvm.parent()?;
    [dir.join("smolvm-agent"), dir.join("../x86_64-unknown-linux-gnu/release/smolvm-agent")].into_iter().find(|p| p.is_file())
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
        self.current = Some((name.to_string(), Instant::now(), sys::loadavg()[0], sys::CpuTimes::now()));
    }
    fn end(&mut self) {
        if let Some((name, t, load, cpu)) = self.current.take() {
            let (busy, steal) = cpu.usage_since(&sys::CpuTimes::now());
            self.list.push(Phase { name, seconds: t.elapsed().as_secs_f64(), load_start: load, load_end: sys::loadavg()[0], cpu_busy: busy, cpu_steal: steal });
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
    let root = args.work_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/tmp/smolvm-bench-{}", std::process::id())));
    if root.exists() {
        bail!("{} exists; pass another --work-dir or remove it", root.display());
    }
    let b = Bench::prepare(root, &smolvm, agent.as_deref(), args.accel.clone(), started)?;
    let load_start = sys::loadavg();
    b.say(&format!("working in {} (load {:.2} {:.2} {:.2})", b.root.display(), load_start[0], load_start[1], load_start[2]));
    let mut phases = Phases { list: Vec::new(), current: None };
    let result = measure(&b, &args, runs, scale_n, list_n, &mut phases);
    phases.end();
    b.say("cleaning up");
    b.cleanup(args.keep);
    let mut report = result?;
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
        git_revision: git_revision(),
    };
    report.phases = phases.list;
    report.targets = targets::evaluate(&report);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let json = args.out.join("bench.json");
    let md = args.out.join("bench.md");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")?;
    std::fs::write(&md, report.markdown())?;
    eprintln!("\n{}", report.markdown());
    eprintln!("wrote {} and {} in {:.0} s", json.display(), md.display(), started.elapsed().as_secs_f64());
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

/// Snapshots taken in the create phases: (shape, change, type, method) -> ids and samples.
type Taken = BTreeMap<(&'static str, u32, &'static str, &'static str), Vec<(String, CreateSample)>>;

fn measure(b: &Bench, args: &Args, runs: usize, scale_n: usize, list_n: usize, phases: &mut Phases) -> Result<Report> {
    let has = |s: &str| !args.skip.iter().any(|k| k == s);
    let mut report = Report {
        meta: Meta {
            command: String::new(),
            quick: args.quick,
            runs,
            started_at: String::new(),
            duration_s: 0.0,
            accel: String::new(),
            machine: sys::machine(&b.data),
            load_start: [0.0; 3],
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
    };

    phases.start(b, "image build (tiny)");
    let (data, _) = b.cli_json(&["image", "build", "--name", &b.image, "--base", "tiny"])?;
    b.say(&format!("image {}", data["image"]["name"].as_str().unwrap_or(&b.image)));

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
    let mut pairs: BTreeMap<&'static str, (String, Option<RefSandbox>)> = BTreeMap::new();
    for (ours_name, ref_name) in [("o-s", "r-s")] {
        for name in [ours_name, ref_name] {
            let ms = b.create_sandbox(name, SMALL.memory_mib, SMALL.disk_mib)?;
            b.say(&format!("  {name}: {ms:.0} ms"));
            cold.push(ms);
        }
        pairs.insert(SMALL.key, (ours_name.to_string(), Some(RefSandbox::adopt(b, ref_name)?)));
    }
    report.cold_create_ms = Summary::of(&cold);
    report.meta.accel = b.engine.get("o-s").map(|r| r.config.accel.as_str().to_string()).unwrap_or_default();

    let mut taken: Taken = BTreeMap::new();
    let mut list_source = None;
    for sp in plan(args.quick, &args.skip) {
        let shape = sp.shape;
        let label = format!("{} MiB / {} MiB", shape.memory_mib, shape.disk_mib);
        if !pairs.contains_key(shape.key) {
            phases.start(b, &format!("boot {label}"));
            let o = format!("o-{}", shape.key);
            let r = format!("r-{}", shape.key);
            for name in [&o, &r] {
                let ms = b.create_sandbox(name, shape.memory_mib, shape.disk_mib)?;
                b.say(&format!("  {name}: {ms:.0} ms"));
                report.other_boots.push(Boot { name: name.clone(), memory_mib: shape.memory_mib, disk_mib: shape.disk_mib, ms });
            }
            pairs.insert(shape.key, (o, Some(RefSandbox::adopt(b, &r)?)));
        }
        let (o, r) = pairs.remove(shape.key).unwrap_or_default();
        let r = if sp.reference { r } else { None };
        let max_change = sp.creates.iter().map(|(c, _)| *c).max().unwrap_or(0);
        phases.start(b, &format!("workload setup {label}"));
        b.sh(&o, &workload::setup_script(max_change))?;
        if let Some(r) = &r {
            b.sh(&r.name, &workload::setup_script(max_change))?;
        }
        let mut step = 0u64;
        if has("creates") {
            for (ci, (change, types)) in sp.creates.iter().enumerate() {
                phases.start(b, &format!("snapshot create {label}, {change} MiB changed"));
                let mem_change = workload::memory_change_mib(*change, shape.memory_mib);
                let change_script = |step: u64| workload::change_script(step, *change, mem_change);
                for ty in types {
                    let mut ours_s = Vec::new();
                    let mut ref_s = Vec::new();
                    for run in 0..runs {
                        step += 1;
                        b.sh(&o, &change_script(step))?;
                        let id = format!("o{}-{change}-{ty}-{run}", shape.key);
                        let s = ours::create(b, &o, &id, ty)?;
                        settle();
                        b.say(&format!("  ours {id}: {:.0} ms, pause {:.0} ms, {} written", s.wall_ms, s.pause_ms, report::bytes(s.bytes_written)));
                        ours_s.push((id, s));
                        if let Some(r) = &r {
                            b.sh(&r.name, &change_script(step))?;
                            let id = format!("r{}-{change}-{ty}-{run}", shape.key);
                            let s = r.create(b, &id, ty)?;
                            settle();
                            b.say(&format!("  ref  {id}: {:.0} ms, pause {:.0} ms, {} written", s.wall_ms, s.pause_ms, report::bytes(s.bytes_written)));
                            ref_s.push((id, s));
                            // Only the first change size is restored later.
                            if ci > 0 || !sp.restores.contains(ty) {
                                let _ = std::fs::remove_dir_all(r.snapshot_dir(&ref_s.last().unwrap().0));
                            }
                        }
                    }
                    let mut case = CreateCase {
                        memory_mib: shape.memory_mib,
                        disk_mib: shape.disk_mib,
                        change_mib: *change,
                        memory_change_mib: mem_change,
                        snapshot_type: ty.to_string(),
                        ours: figures(&ours_s),
                        reference: r.as_ref().map(|_| figures(&ref_s)),
                        limit_write_ms: None,
                        ratios: CreateRatios::default(),
                    };
                    case.compute_ratios();
                    report.creates.push(case);
                    if list_source.is_none() && *ty == "full" {
                        list_source = ours_s.first().map(|(id, _)| id.clone());
                    }
                    taken.insert((shape.key, *change, ty, "ours"), ours_s);
                    taken.insert((shape.key, *change, ty, "ref"), ref_s);
                }
            }
        }
        if has("restores") && !sp.restores.is_empty() {
            let change = sp.creates.first().map(|(c, _)| *c).unwrap_or(0);
            phases.start(b, &format!("restore {label}"));
            for ty in &sp.restores {
                let ours_snaps = taken.get(&(shape.key, change, ty, "ours")).cloned().unwrap_or_default();
                let ref_snaps = taken.get(&(shape.key, change, ty, "ref")).cloned().unwrap_or_default();
                let mut ours_ms = Vec::new();
                let mut reported = Vec::new();
                let mut ref_ms = Vec::new();
                for run in 0..ours_snaps.len().max(ref_snaps.len()) {
                    if let Some((id, _)) = ours_snaps.get(run) {
                        let s = ours::restore(b, &o, id)?;
                        settle();
                        b.say(&format!("  ours restore {id}: {:.0} ms (restore_ms {:.0})", s.to_first_exec_ms, s.reported_ms));
                        ours_ms.push(s.to_first_exec_ms);
                        reported.push(s.reported_ms);
                    }
                    if let (Some(r), Some((id, _))) = (&r, ref_snaps.get(run)) {
                        let ms = r.restore(b, id, ty)?;
                        settle();
                        b.say(&format!("  ref  restore {id}: {ms:.0} ms"));
                        ref_ms.push(ms);
                        let _ = std::fs::remove_dir_all(r.snapshot_dir(id));
                    }
                }
                let read_bytes = median_of(ours_snaps.iter().map(|(_, s)| s.restore_bytes));
                report.restores.push(RestoreCase {
                    memory_mib: shape.memory_mib,
                    disk_mib: shape.disk_mib,
                    change_mib: change,
                    snapshot_type: ty.to_string(),
                    ours_ms: Summary::of(&ours_ms),
                    ours_reported_ms: Summary::of(&reported),
                    reference_ms: Summary::of(&ref_ms),
                    read_bytes,
                    limit_read_ms: None,
                    vs_reference: None,
                    vs_limit: None,
                    vs_cold_create: None,
                });
            }
        }
        // Done with this shape: free its CPU, memory and disk.
        let _ = b.engine.delete(&o);
        if let Some(r) = &r {
            let _ = b.engine.delete(&r.name);
        }
        for ((key, _, _, method), snaps) in taken.iter() {
            if *key == shape.key && *method == "ref" {
                if let Some(r) = &r {
                    for (id, _) in snaps {
                        let _ = std::fs::remove_dir_all(r.snapshot_dir(id));
                    }
                }
            }
        }
    }

    if has("limits") {
        phases.start(b, "machine limit (write+fdatasync, page-cache read)");
        let dir = b.engine.data().snapshots();
        for c in report.creates.iter_mut() {
            let bytes = c.ours.bytes_written.as_ref().map(|s| s.median).unwrap_or(0.0) as u64;
            c.limit_write_ms = Summary::of(&limit::write_ms(&dir, bytes, runs)?);
            c.compute_ratios();
        }
        for r in report.restores.iter_mut() {
            if r.read_bytes > 0.0 {
                r.limit_read_ms = Summary::of(&limit::read_ms(&dir, r.read_bytes as u64, runs)?);
            }
        }
    }
    for r in report.restores.iter_mut() {
        r.vs_reference = stats::ratio(r.ours_ms.as_ref(), r.reference_ms.as_ref());
        r.vs_limit = stats::ratio(r.ours_ms.as_ref(), r.limit_read_ms.as_ref());
        r.vs_cold_create = stats::ratio(r.ours_ms.as_ref(), report.cold_create_ms.as_ref());
    }

    if has("list") && list_n > 0 {
        if let Some(src) = &list_source {
            phases.start(b, &format!("snapshot list with {list_n} snapshots"));
            report.list = Some(scale::list(b, src, list_n, runs)?);
        }
    }
    if has("scale") && scale_n > 0 {
        phases.start(b, &format!("{scale_n} sandboxes at once"));
        report.concurrent = Some(scale::concurrent(b, scale_n, SMALL.memory_mib)?);
    }
    phases.end();
    Ok(report)
}

/// Lets the page cache write back what the last measurement left dirty
/// (the reference never fsyncs), so the next one starts from a clean state.
fn settle() {
    unsafe { libc::sync() };
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    Summary::of(&v).map(|s| s.median).unwrap_or(0.0)
}

fn figures(samples: &[(String, CreateSample)]) -> CreateFigures {
    let col = |f: fn(&CreateSample) -> f64| Summary::of(&samples.iter().map(|(_, s)| f(s)).collect::<Vec<_>>());
    CreateFigures {
        wall_ms: col(|s| s.wall_ms),
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
