//! `smolvm image build|list|delete`.

use serde_json::json;
use smolvm_core::image::{find_agent_binary, Base, ImportSpec, Readiness};

use super::engine;
use crate::cli::ImageCmd;
use crate::output::{CliError, Done};
use crate::progress::Spinner;

pub(crate) fn run(cmd: ImageCmd) -> Result<Done, CliError> {
    let engine = engine()?;
    match cmd {
        ImageCmd::Build { name, base, out } => {
            let base: Base = base.parse()?;
            let agent = find_agent_binary()?;
            let spinner = Spinner::new(out.json);
            let mut step = |m: &str| smolvm_core::sandbox::Progress::step(&spinner, m);
            let image = engine.images().build(&name, base, &agent, &mut step)?;
            let took = spinner.elapsed();
            drop(spinner);
            Ok(Done::new(
                json!({ "image": image_json(&image), "build_seconds": took.as_secs_f64() }),
                format!("Built image '{}' ({}, kernel {}) in {:.1}s.", image.name, image.base, image.kernel_version, took.as_secs_f64()),
            ))
        }
        ImageCmd::Import { name, kernel, initramfs, rootfs, ready_console, .. } => {
            let spec = ImportSpec { kernel: &kernel, initramfs: initramfs.as_deref(), rootfs: rootfs.as_deref(), ready_console };
            let image = engine.images().import(&name, &spec)?;
            Ok(Done::new(json!({ "image": image_json(&image) }), format!("Imported image '{}'.", image.name)))
        }
        ImageCmd::List { .. } => {
            let images = engine.images().list()?;
            let mut human = String::new();
            if images.is_empty() {
                human.push_str("No images. Build one with 'smolvm image build --name default'.");
            } else {
                human.push_str(&format!("{:<20} {:<8} {:<24} {:>10}  {}\n", "NAME", "BASE", "KERNEL", "SIZE", "CREATED"));
                for i in &images {
                    human.push_str(&format!(
                        "{:<20} {:<8} {:<24} {:>7}MiB  {}\n",
                        i.name,
                        i.base.to_string(),
                        i.kernel_version,
                        i.size_bytes / (1024 * 1024),
                        i.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
                    ));
                }
            }
            Ok(Done::new(json!({ "images": images.iter().map(image_json).collect::<Vec<_>>() }), human))
        }
        ImageCmd::Delete { name, .. } => {
            let image = engine.images().get(&name)?;
            let users: Vec<String> =
                engine.store().list_sandboxes()?.into_iter().filter(|s| s.config.image == image.name).map(|s| s.name).collect();
            if !users.is_empty() {
                return Err(CliError::new(
                    "refused",
                    format!(
                        "Image '{name}' is used by sandbox(es) {}; delete them first with 'smolvm sandbox delete {}'",
                        users.join(", "),
                        users.join(" ")
                    ),
                ));
            }
            let snaps = smolvm_core_snapshot_users(&engine, &image.name)?;
            if !snaps.is_empty() {
                return Err(CliError::new(
                    "refused",
                    format!("Image '{name}' is used by snapshot(s) {}; delete them first with 'smolvm sandbox snapshot delete'", snaps.join(", ")),
                ));
            }
            engine.images().delete(&name)?;
            Ok(Done::new(json!({ "image": { "name": name } }), format!("Deleted image '{name}'.")))
        }
    }
}

/// Snapshots whose sandbox config names `image` (their disks depend on it).
fn smolvm_core_snapshot_users(engine: &smolvm_core::sandbox::Engine, image: &str) -> Result<Vec<String>, CliError> {
    let mut users = Vec::new();
    for row in engine.store().list_snapshots()? {
        let manifest: serde_json::Value = serde_json::from_str(&row.manifest).unwrap_or_default();
        if manifest["vm_config"]["image"] == image {
            users.push(row.snapshot_id);
        }
    }
    Ok(users)
}

fn image_json(i: &smolvm_core::image::Image) -> serde_json::Value {
    json!({
        "name": i.name,
        "base": i.base.to_string(),
        "kernel_version": i.kernel_version,
        "created_at": i.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "size_bytes": i.size_bytes,
        "path": i.dir,
        "ready": match &i.ready {
            Readiness::Agent => json!({ "agent": true }),
            Readiness::Console(text) => json!({ "agent": false, "console": text }),
        },
    })
}
