//! `smolvm sandbox snapshot create|restore|list|delete`.

use serde_json::json;
use smolvm_core::snapshot::{self, CreateRequest, FlushPolicy, RestoreRequest, SnapshotType, SnapshotView};

use super::engine;
use crate::cli::{FlushPolicyArg, SnapshotCmd, SnapshotTypeArg};
use crate::output::{CliError, Done};
use crate::progress::Spinner;

impl From<snapshot::SnapshotError> for CliError {
    fn from(e: snapshot::SnapshotError) -> Self {
        CliError::from_lib(e)
    }
}

pub(crate) fn run(cmd: SnapshotCmd) -> Result<Done, CliError> {
    let engine = engine()?;
    match cmd {
        SnapshotCmd::Create { sandbox, snapshot_id, snapshot_type, resume_source, flush_policy, out } => {
            let req = CreateRequest {
                sandbox: sandbox.clone(),
                snapshot_id,
                snapshot_type: match snapshot_type {
                    SnapshotTypeArg::Full => SnapshotType::Full,
                    SnapshotTypeArg::Diff => SnapshotType::Diff,
                    SnapshotTypeArg::Disk => SnapshotType::Disk,
                },
                resume_source,
                flush_policy: match flush_policy {
                    FlushPolicyArg::Required => FlushPolicy::Required,
                    FlushPolicyArg::BestEffort => FlushPolicy::BestEffort,
                    FlushPolicyArg::Skip => FlushPolicy::Skip,
                },
            };
            let spinner = Spinner::new(out.json);
            let view = snapshot::create(&engine, &req, &spinner)?;
            let took = spinner.elapsed();
            drop(spinner);
            let human = format!(
                "Created snapshot '{}' from VM '{}' ({}, {}, guest paused {} ms, {:.2}s).",
                view.snapshot_id,
                sandbox,
                view.snapshot_type.as_str(),
                human_bytes(view.size_bytes),
                view.pause_ms,
                took.as_secs_f64()
            );
            Ok(Done::new(json!({ "snapshot": view }), human))
        }
        SnapshotCmd::Restore { snapshot, resume, force, as_name, ports, out } => {
            let spinner = Spinner::new(out.json);
            let ports = ports.iter().map(|p| super::sandbox::parse_port(p)).collect::<Result<Vec<_>, _>>()?;
            let req = RestoreRequest { snapshot_id: snapshot, resume, force, as_name, ports };
            let outcome = snapshot::restore(&engine, &req, &spinner)?;
            drop(spinner);
            let info = engine.info(&outcome.vm)?;
            let human = format!(
                "Restored snapshot '{}' into VM '{}' ({}, {} ms).",
                outcome.snapshot.snapshot_id,
                outcome.vm,
                outcome.status.as_str(),
                outcome.restore_ms
            );
            Ok(Done::new(
                json!({
                    "snapshot": outcome.snapshot,
                    "vm": { "name": outcome.vm, "status": outcome.status, "ip_address": info.ip_address, "ssh_port": null },
                    "restore_ms": outcome.restore_ms,
                    "load_ms": outcome.load_ms,
                }),
                human,
            ))
        }
        SnapshotCmd::List { vm_id, .. } => {
            let rows = snapshot::list(&engine, vm_id.as_deref())?;
            let human = render_list(&rows, vm_id.as_deref());
            Ok(Done::new(json!({ "filters": { "vm_id": vm_id }, "snapshots": rows }), human))
        }
        SnapshotCmd::Verify { snapshot, .. } => {
            let (view, checks) = snapshot::verify(&engine, &snapshot)?;
            let bad: Vec<_> = checks.iter().filter(|c| c.status != "ok").collect();
            let data = json!({ "snapshot": view, "checks": checks, "intact": bad.is_empty() });
            if bad.is_empty() {
                return Ok(Done::new(data, format!("Snapshot '{snapshot}' is intact ({} files checked).", checks.len())));
            }
            let detail: Vec<String> = bad.iter().map(|c| format!("{}: {} ({})", c.path, c.status, c.detail)).collect();
            Err(CliError {
                data: Some(data),
                ..CliError::new(
                    "corrupted",
                    format!(
                        "Snapshot '{snapshot}' is damaged: {}; it cannot be restored. Delete it with 'smolvm sandbox snapshot delete {snapshot}'",
                        detail.join("; ")
                    ),
                )
            })
        }
        SnapshotCmd::Delete { snapshot, .. } => {
            let view = snapshot::delete(&engine, &snapshot)?;
            Ok(Done::new(json!({ "snapshot": view }), format!("Deleted snapshot '{snapshot}'.")))
        }
    }
}

fn render_list(rows: &[SnapshotView], vm: Option<&str>) -> String {
    if rows.is_empty() {
        return match vm {
            Some(vm) => format!("No snapshots found for VM '{vm}'."),
            None => "No snapshots found.".into(),
        };
    }
    let mut s = format!("{:<40} {:<16} {:<5} {:>9} {:<8} {:<32} {}\n", "SNAPSHOT", "VM", "TYPE", "SIZE", "RESTORED", "CREATED", "PARENT");
    for r in rows {
        s.push_str(&format!(
            "{:<40} {:<16} {:<5} {:>9} {:<8} {:<32} {}\n",
            r.snapshot_id,
            r.vm_id,
            r.snapshot_type.as_str(),
            human_bytes(r.size_bytes),
            if r.restored { "yes" } else { "no" },
            r.created_at,
            r.parent.as_deref().unwrap_or("-")
        ));
    }
    s.push_str(&format!("Total: {} snapshot(s).", rows.len()));
    s
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

pub(crate) fn fork(source: &str, name: &str, count: u32, json_mode: bool) -> Result<Done, CliError> {
    let engine = engine()?;
    let names: Vec<String> = if count == 1 { vec![name.to_string()] } else { (1..=count).map(|i| format!("{name}-{i}")).collect() };
    let spinner = Spinner::new(json_mode);
    let outcome = snapshot::fork(&engine, source, &names, &spinner)?;
    drop(spinner);
    let human = format!(
        "Forked '{}' into {} ({} ms; source paused {} ms).",
        source,
        names.join(", "),
        outcome.total_ms,
        outcome.pause_ms
    );
    let children: Vec<_> = outcome.children.iter().map(|c| json!({ "name": c.name, "status": c.status })).collect();
    Ok(Done::new(
        json!({ "source": source, "children": children, "pause_ms": outcome.pause_ms, "total_ms": outcome.total_ms }),
        human,
    ))
}
