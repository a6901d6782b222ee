//! The targets, evaluated against a report. They are figures in
//! the benchmark, not pass/fail tests: a missed one is explained in
//! BENCHMARKS.md.

use crate::report::{bytes, x, CreateCase, Report, RestoreCase, Target};
use crate::stats::spread;

const MIB: f64 = 1024.0 * 1024.0;

fn creates<'a>(
    r: &'a Report,
    mem: u32,
    disk: u64,
    ty: &'a str,
) -> impl Iterator<Item = &'a CreateCase> + 'a {
    r.creates
        .iter()
        .filter(move |c| c.memory_mib == mem && c.disk_mib == disk && c.snapshot_type == ty)
}

fn restore<'a>(r: &'a Report, mem: u32, disk: u64, ty: &str) -> Option<&'a RestoreCase> {
    r.restores
        .iter()
        .find(|c| c.memory_mib == mem && c.disk_mib == disk && c.snapshot_type == ty)
}

/// `all` over evaluated parts; None when nothing was measured.
fn all(parts: &[Option<bool>]) -> Option<bool> {
    if parts.is_empty() || parts.iter().any(Option::is_none) {
        return None;
    }
    Some(parts.iter().all(|p| *p == Some(true)))
}

fn target(name: &str, goal: &str, measured: Vec<String>, parts: Vec<Option<bool>>) -> Target {
    Target {
        name: name.into(),
        goal: goal.into(),
        measured: if measured.is_empty() {
            "not measured".into()
        } else {
            measured.join("; ")
        },
        met: all(&parts),
    }
}

/// Evaluates every target the issue names.
pub fn evaluate(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();

    // Full snapshot create >= 5x faster than the reference, 2 GiB disk.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for c in creates(r, 256, 2048, "full") {
        let speedup = c.ratios.wall_vs_reference.map(|v| 1.0 / v);
        m.push(format!(
            "{} MiB changed: {} faster",
            c.change_mib,
            x(speedup)
        ));
        p.push(speedup.map(|s| s >= 5.0));
    }
    out.push(target(
        "full create vs reference (256 MiB / 2 GiB)",
        ">= 5× faster",
        m,
        p,
    ));

    // Restore >= 3x faster than the reference.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for ty in ["full", "diff", "disk"] {
        if let Some(c) = restore(r, 256, 2048, ty) {
            let speedup = c.vs_reference.map(|v| 1.0 / v);
            m.push(format!("{ty}: {} faster", x(speedup)));
            if ty != "disk" {
                p.push(speedup.map(|s| s >= 3.0));
            }
        }
    }
    out.push(target(
        "restore to first exec vs reference (256 MiB / 2 GiB)",
        ">= 3× faster (full, diff; disk shown)",
        m,
        p,
    ));

    // disk and diff create time independent of disk size.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for ty in ["disk", "diff"] {
        for small in creates(r, 256, 2048, ty) {
            if let Some(big) = creates(r, 256, 8192, ty).find(|c| c.change_mib == small.change_mib)
            {
                let d = spread(small.ours.wall_ms.as_ref(), big.ours.wall_ms.as_ref());
                m.push(format!(
                    "{ty}, {} MiB changed: {:.0} vs {:.0} ms ({})",
                    small.change_mib,
                    small
                        .ours
                        .wall_ms
                        .as_ref()
                        .map(|s| s.median)
                        .unwrap_or(f64::NAN),
                    big.ours
                        .wall_ms
                        .as_ref()
                        .map(|s| s.median)
                        .unwrap_or(f64::NAN),
                    d.map(|d| format!("{:.0}% apart", d * 100.0))
                        .unwrap_or_else(|| "–".into())
                ));
                p.push(d.map(|d| d <= 0.2));
            }
        }
    }
    out.push(target(
        "disk and diff create, 2 GiB vs 8 GiB disk",
        "within 20%",
        m,
        p,
    ));

    // Create <= 1.5x the machine limit for the bytes it writes.
    for ty in ["full", "diff", "disk"] {
        let (mut m, mut p) = (Vec::new(), Vec::new());
        for c in r.creates.iter().filter(|c| c.snapshot_type == ty) {
            m.push(format!(
                "{}/{}/{}: {}",
                c.memory_mib,
                c.disk_mib,
                c.change_mib,
                x(c.ratios.wall_vs_limit)
            ));
            p.push(c.ratios.wall_vs_limit.map(|v| v <= 1.5));
        }
        out.push(target(
            &format!("{ty} create vs machine limit (memory/disk/change)"),
            "<= 1.5× the limit",
            m,
            p,
        ));
    }

    // Restore to first exec <= 25% of cold create to first exec.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for c in &r.restores {
        m.push(format!(
            "{} {}/{}: {:.0}%",
            c.snapshot_type,
            c.memory_mib,
            c.disk_mib,
            c.vs_cold_create.unwrap_or(f64::NAN) * 100.0
        ));
        if c.snapshot_type != "disk" {
            p.push(c.vs_cold_create.map(|v| v <= 0.25));
        }
    }
    out.push(target(
        "restore to first exec vs cold create",
        "<= 25% (full, diff; disk boots, shown)",
        m,
        p,
    ));

    // Disk snapshot of a 256 MiB / 2 GiB sandbox: time and extra bytes.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for c in creates(r, 256, 2048, "disk") {
        let wall = c.ours.wall_ms.as_ref().map(|s| s.median);
        m.push(format!(
            "{} MiB changed: {:.0} ms",
            c.change_mib,
            wall.unwrap_or(f64::NAN)
        ));
        p.push(wall.map(|w| w <= 100.0));
    }
    out.push(target(
        "disk snapshot time (256 MiB / 2 GiB)",
        "<= 100 ms",
        m,
        p,
    ));
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for c in creates(r, 256, 2048, "disk") {
        let written = c.ours.bytes_written.as_ref().map(|s| s.median);
        let beyond = c
            .ours
            .size_on_disk
            .as_ref()
            .map(|s| s.median - f64::from(c.change_mib) * MIB);
        m.push(format!(
            "{} MiB changed: snapshot wrote {}, kept {} beyond the changed data",
            c.change_mib,
            written.map(bytes).unwrap_or_else(|| "–".into()),
            beyond.map(bytes).unwrap_or_else(|| "–".into())
        ));
        p.push(written.zip(beyond).map(|(w, b)| w.max(b) <= MIB));
    }
    out.push(target(
        "disk snapshot bytes beyond the changed data (256 MiB / 2 GiB)",
        "<= 1 MiB",
        m,
        p,
    ));

    // Full snapshot pause window.
    let (mut m, mut p) = (Vec::new(), Vec::new());
    for c in creates(r, 256, 2048, "full") {
        let pause = c.ours.pause_ms.as_ref().map(|s| s.median);
        m.push(format!(
            "{} MiB changed: {:.0} ms",
            c.change_mib,
            pause.unwrap_or(f64::NAN)
        ));
        p.push(pause.map(|v| v <= 1000.0));
    }
    out.push(target(
        "full snapshot pause window (256 MiB / 2 GiB)",
        "<= 1 s",
        m,
        p,
    ));

    // Concurrency.
    if let Some(c) = &r.concurrent {
        out.push(target(
            &format!(
                "{} sandboxes created, snapshotted, restored at once",
                c.sandboxes
            ),
            "20 sandboxes, no failures",
            vec![format!(
                "{:.0} s in total, {} failures",
                c.total_ms / 1000.0,
                c.failures.len()
            )],
            vec![Some(c.failures.is_empty() && c.sandboxes >= 20)],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_needs_every_part() {
        assert_eq!(super::all(&[]), None);
        assert_eq!(super::all(&[Some(true), Some(true)]), Some(true));
        assert_eq!(super::all(&[Some(true), Some(false)]), Some(false));
        assert_eq!(super::all(&[Some(true), None]), None);
    }
}
