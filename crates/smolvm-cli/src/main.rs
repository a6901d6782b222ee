//! `smolvm`: disposable Linux microVM sandboxes with snapshots.
//!
//! This binary is a thin layer: it parses the command line, calls one
//! `smolvm_core` operation, and prints the result as text or as the JSON
//! envelope `{ok, command, exit_code, data, error}`.

mod cli;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

use cli::Cli;
use output::{exit, finish, print_json};

fn main() -> ExitCode {
    // Everything smolvm and its VMMs create (disks, memory files, sockets)
    // holds guest data: private to the user.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(usage_error(&args, e)),
    };
    init_tracing(cli.verbose);
    let json_mode = cli.command.json();
    let command_name = cli.command.name();
    let result = commands::run(cli.command);
    ExitCode::from(finish(&command_name, json_mode, result))
}

/// Parse errors: clap's own text, or the JSON envelope when `--json`
/// appears anywhere on the command line.
fn usage_error(args: &[String], e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    let code = if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) { exit::OK } else { exit::USAGE };
    if code == exit::USAGE && args.iter().any(|a| a == "--json") {
        let words: Vec<&str> = args.iter().skip(1).filter(|a| !a.starts_with('-')).map(String::as_str).take(3).collect();
        let name = words.join(".");
        let first_line = e.to_string().lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        print_json(&json!({
            "ok": false,
            "command": name,
            "exit_code": code,
            "data": null,
            "error": {
                "code": "usage_error",
                "message": first_line,
                "recovery": format!("Run 'smolvm {} --help' for usage.", words.join(" ")),
            },
        }));
        return code;
    }
    let _ = e.print();
    code
}

fn init_tracing(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SMOLVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
