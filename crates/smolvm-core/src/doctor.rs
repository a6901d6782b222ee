//! `smolvm doctor`: host prerequisites and state consistency, with safe
//! repairs under `--fix`. Every check says what it found and, when it is
//! not fine, what to do (or what `--fix` did).

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::{accel, find_program, AnyBackend, Backend, BackendKind};
use crate::layers::Layers;
use crate::names;
use crate::sandbox::Engine;
use crate::snapshot;

/// Outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// "ok", "warn" or "fail".
    pub status: &'static str,
    /// What was found, and what to do.
    pub detail: String,
    /// Whether `--fix` repaired it.
    pub fixed: bool,
}

fn check(name: &str, status: &'static str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), status, detail: detail.into(), fixed: false }
}

/// Runs every check; with `fix`, repairs what is safe to repair.
pub fn run(engine: &Engine, fix: bool) -> Vec<Check> {
    let mut out = host_checks(engine);
    out.extend(state_checks(engine, fix));
    out
}

fn host_checks(engine: &Engine) -> Vec<Check> {
    let mut out = Vec::new();
    match AnyBackend::new(BackendKind::Qemu).check_installed() {
        Ok(version) => {
            let major = version.split("version ").nth(1).and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok());
            match major {
                Some(m) if m >= 10 => out.push(check("qemu", "ok", version)),
                _ => out.push(check(
                    "qemu",
                    "fail",
                    format!("{version}: snapshots need QEMU 10 or newer (mapped-ram, blockdev-set-active); run scripts/setup-host.sh"),
                )),
            }
        }
        Err(e) => out.push(check("qemu", "fail", e.to_string())),
    }
    out.push(match find_program("qemu-img") {
        Some(p) => check("qemu-img", "ok", p.display().to_string()),
        None => check("qemu-img", "fail", "qemu-img not found; install it with 'sudo apt-get install qemu-utils'"),
    });
    out.push(if accel::kvm_usable() {
        check("acceleration", "ok", "KVM is usable")
    } else {
        check("acceleration", "warn", "KVM is not usable here (no vmx/svm flags or no read-write /dev/kvm): sandboxes run under TCG, slower")
    });
    match engine.images().list() {
        Ok(images) if images.is_empty() => {
            out.push(check("images", "warn", "no image built; run 'smolvm image build --name default'"))
        }
        Ok(images) => {
            let names: Vec<String> = images.iter().map(|i| i.name.clone()).collect();
            out.push(check("images", "ok", names.join(", ")))
        }
        Err(e) => out.push(check("images", "fail", e.to_string())),
    }
    if let Ok(st) = rustix::fs::statvfs(engine.data().root()) {
        let free = st.f_bavail * st.f_frsize;
        let status = if free < 2 << 30 { "warn" } else { "ok" };
        out.push(check("free space", status, format!("{} MiB free in {}", free >> 20, engine.data().root().display())));
    }
    out
}

fn state_checks(engine: &Engine, fix: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let rows = engine.store().list_sandboxes().unwrap_or_default();
    let known: HashSet<String> = rows.iter().map(|r| r.name.clone()).collect();

    // Sandboxes: reconcile each (dead VMMs, journals, stray VMMs).
    let mut problems = Vec::new();
    for row in &rows {
        let pending = engine.dir(&row.name).join("operation.json").exists();
        if pending {
            problems.push(format!("sandbox '{}' has an unfinished operation", row.name));
            if fix {
                // Taking the lock runs the recovery.
                let _ = engine.lock(&row.name);
            }
        }
        if let Ok(r) = engine.get(&row.name) {
            if let Some(top) = r.disk_chain.last().filter(|id| Layers::is_valid_id(id)) {
                if !engine.layers().path(top).exists() && r.status != crate::sandbox::SandboxStatus::Created {
                    problems.push(format!(
                        "sandbox '{0}' has lost its disk layer {top}; delete it with 'smolvm sandbox delete {0}'",
                        r.name
                    ));
                }
            }
        }
    }
    out.push(summary("sandboxes", problems, fix, "unfinished operations were completed"));

    // Sandbox directories without a row.
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(engine.data().sandboxes()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            orphans.push(name.clone());
            if fix && names::validate("sandbox name", &name).is_ok() {
                if let Ok(_g) = engine.lock(&name) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let found: Vec<String> = orphans.iter().map(|n| format!("directory sandboxes/{n} has no sandbox")).collect();
    out.push(summary("sandbox directories", found, fix, "removed"));

    // Snapshots: rows without files, files without rows, leftovers.
    let mut problems = Vec::new();
    for row in engine.store().list_snapshots().unwrap_or_default() {
        let dir = engine.data().snapshot(&row.snapshot_id);
        if !dir.join("manifest.json").exists() {
            problems.push(format!("snapshot '{}' is indexed but its files are gone", row.snapshot_id));
            if fix {
                let _ = engine.store().delete_snapshot(&row.snapshot_id);
            }
        }
    }
    for entry in std::fs::read_dir(engine.data().snapshots()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".trash-") {
            problems.push(format!("leftover directory snapshots/{name}"));
            if fix {
                let id = name.trim_start_matches(".tmp-").trim_start_matches(".trash-");
                let id = id.rsplit_once("-l-").map(|(i, _)| i).unwrap_or(id);
                let free = engine.data().locks().join(format!("snapshot-{id}.lock"));
                if let Ok(Some(_g)) = crate::lock::try_lock_exclusive(&free) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        } else if names::validate("snapshot_id", &name).is_ok() && engine.store().get_snapshot(&name).ok().flatten().is_none() {
            problems.push(format!("snapshot '{name}' has files but no index row"));
            if fix {
                let _ = snapshot::get(engine, &name);
            }
        }
    }
    out.push(summary("snapshots", problems, fix, "stale rows dropped, leftovers removed, lost rows re-indexed"));

    // Layers nothing references.
    let mut referenced: HashSet<String> = rows.iter().flat_map(|r| r.disk_chain.clone()).collect();
    referenced.extend(snapshot::referenced_layers(engine).unwrap_or_default());
    let unreferenced: Vec<String> = std::fs::read_dir(engine.data().layers())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Layers::id_of_file(&e.file_name().to_string_lossy()).map(str::to_string))
        .filter(|id| !referenced.contains(id))
        .collect();
    let found: Vec<String> = unreferenced.iter().map(|id| format!("layer {id} is used by nothing")).collect();
    if fix && !found.is_empty() {
        let _ = engine.collect_layer_garbage();
    }
    out.push(summary("disk layers", found, fix, "removed"));
    out
}

fn summary(name: &str, problems: Vec<String>, fix: bool, fixed_what: &str) -> Check {
    if problems.is_empty() {
        return check(name, "ok", "consistent");
    }
    let mut c = check(name, "warn", problems.join("; "));
    if fix {
        c.fixed = true;
        c.detail = format!("{} ({fixed_what})", c.detail);
    } else {
        c.detail = format!("{}; run 'smolvm doctor --fix' to repair", c.detail);
    }
    c
}
