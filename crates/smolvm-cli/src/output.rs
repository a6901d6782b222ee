//! What the CLI prints: the JSON envelope shared by every command, human
//! text otherwise, and the mapping of library errors to codes and exit
//! statuses.

use serde::Serialize;
use serde_json::{json, Value};
use smolvm_core::error::{Coded, ErrorCode};

/// Process exit statuses.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// A runtime failure.
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// Interrupted by the user.
    pub const INTERRUPTED: u8 = 130;
}

/// A failed command: a code for JSON, a message, and the exit status.
#[derive(Debug)]
pub struct CliError {
    /// JSON `error.code`.
    pub code: String,
    /// Message (with the next step to take).
    pub message: String,
    /// Exit status.
    pub exit_code: u8,
    /// Command-specific data to still report (e.g. exec output).
    pub data: Option<Value>,
}

impl CliError {
    /// A failure with a given code and exit status 1.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into(), exit_code: exit::FAILURE, data: None }
    }

    /// From any library error: its code, and its message with the causes.
    pub fn from_lib<E: Coded + std::error::Error>(e: E) -> Self {
        let code = e.code();
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        CliError::new(code.as_str(), message)
    }
}

macro_rules! from_lib {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self { CliError::from_lib(e) }
        }
    )*};
}
from_lib!(
    smolvm_core::sandbox::SandboxError,
    smolvm_core::image::ImageError,
    smolvm_core::agent::AgentError,
    smolvm_core::store::StoreError,
    smolvm_core::backend::BackendError
);

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(ErrorCode::RuntimeError.as_str(), e.to_string())
    }
}

/// The result of a command: JSON data plus the human rendering.
pub struct Done {
    /// JSON `data`.
    pub data: Value,
    /// Human text for stdout (may be empty).
    pub human: String,
    /// Exit status (0 unless the command says otherwise, e.g. exec).
    pub exit_code: u8,
}

impl Done {
    /// A success with data and human text.
    pub fn new(data: impl Serialize, human: impl Into<String>) -> Self {
        Done { data: serde_json::to_value(data).unwrap_or(Value::Null), human: human.into(), exit_code: exit::OK }
    }
}

/// Prints the outcome and returns the exit status.
pub fn finish(command: &str, json_mode: bool, result: Result<Done, CliError>) -> u8 {
    match result {
        Ok(done) => {
            if json_mode {
                print_json(&json!({
                    "ok": done.exit_code == 0,
                    "command": command,
                    "exit_code": done.exit_code,
                    "data": done.data,
                    "error": null,
                }));
            } else if !done.human.is_empty() {
                println!("{}", done.human.trim_end());
            }
            done.exit_code
        }
        Err(e) => {
            if json_mode {
                print_json(&json!({
                    "ok": false,
                    "command": command,
                    "exit_code": e.exit_code,
                    "data": e.data,
                    "error": { "code": e.code, "message": e.message },
                }));
            } else if !e.message.is_empty() {
                eprintln!("Error: {}", e.message);
            }
            e.exit_code
        }
    }
}

/// Pretty JSON with a trailing newline; a closed stdout is not an error.
pub fn print_json(v: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}
