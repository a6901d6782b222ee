//! One module per command group; each handler parses nothing itself: it
//! turns the clap arguments into one `smolvm_core` call and its output.

mod exec;
mod image;
mod sandbox;
mod snapshot;

use std::time::Duration;

use smolvm_core::paths::DataDir;
use smolvm_core::sandbox::Engine;

use crate::cli::{Command, SandboxCmd};
use crate::output::{CliError, Done};

/// Runs one parsed command.
pub(crate) fn run(command: Command) -> Result<Done, CliError> {
    match command {
        Command::Sandbox(SandboxCmd::Exec(args)) => exec::exec(args),
        Command::Sandbox(SandboxCmd::Shell { sandbox, start, boot_timeout, program }) => {
            exec::shell(&sandbox, start, seconds(boot_timeout, "--boot-timeout")?, &program)
        }
        Command::Sandbox(SandboxCmd::File(cmd)) => exec::file(cmd),
        Command::Sandbox(SandboxCmd::Snapshot(cmd)) => snapshot::run(cmd),
        Command::Sandbox(SandboxCmd::Fork { source, name, count, out }) => snapshot::fork(&source, &name, count, out.json),
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Doctor { fix, .. } => doctor(fix),
    }
}

/// Opens the engine on the resolved data directory.
pub(crate) fn engine() -> Result<Engine, CliError> {
    let data = DataDir::resolve().map_err(|e| {
        CliError::new(
            "runtime_error",
            format!("Cannot open the smolvm data directory: {e}; set SMOLVM_DATA_DIR to a writable directory"),
        )
    })?;
    Ok(Engine::open(data)?)
}

/// A positive number of seconds from a flag.
pub(crate) fn seconds(value: f64, flag: &str) -> Result<Duration, CliError> {
    if value.is_finite() && value > 0.0 && value < 1e7 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(CliError::new("invalid_input", format!("{flag} must be a positive number of seconds, not {value}")))
    }
}

fn doctor(fix: bool) -> Result<Done, CliError> {
    let checks = smolvm_core::doctor::run(&engine()?, fix);
    let mut human = String::new();
    for c in &checks {
        let mark = match (c.status, c.fixed) {
            (_, true) => "fixed",
            ("ok", _) => "ok",
            ("warn", _) => "WARN",
            _ => "FAIL",
        };
        human.push_str(&format!("{mark:>5}  {:<20} {}\n", c.name, c.detail));
    }
    let failed = checks.iter().any(|c| c.status == "fail" || (c.status == "warn" && !c.fixed && c.name != "acceleration" && c.name != "images"));
    let data = serde_json::json!({ "checks": checks, "fix": fix });
    if failed {
        return Err(CliError { data: Some(data), ..CliError::new("doctor_found_problems", human.trim_end().to_string()) });
    }
    Ok(Done::new(data, human))
}
