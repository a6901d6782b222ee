//! smolvm-agent: init and guest agent of a smolvm microVM.
//!
//! One static binary, installed as /usr/local/bin/smolvm-agent with
//! /sbin/init pointing at it. Modes:
//! - init (PID 1, or `smolvm-agent init`): mounts, network and identity
//!   from the kernel command line, then supervises the server and reaps
//!   zombies; SIGTERM/SIGINT/SIGUSR2 power the VM off (see [`init`]).
//! - serve (`smolvm-agent serve`): only the agent server, which speaks the
//!   `smolvm-proto` protocol on virtio-serial ports and AF_VSOCK.
//!
//! Module map: `transport` (ports, vsock, stream types) → `session`
//! (handshake and request loop) → `exec`, `files`, `system` (the requests);
//! `procs` kills what a session started; `sink` serializes outgoing frames;
//! `sys` wraps libc.

#![deny(clippy::undocumented_unsafe_blocks)]

mod exec;
mod files;
mod init;
mod procs;
mod server;
mod session;
mod sink;
mod sys;
mod system;
mod transport;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Write;

/// Writes one `smolvm-agent: ...` diagnostic line to stderr (the console
/// under init). Write errors are ignored: diagnostics must never panic.
pub fn diag_line(args: fmt::Arguments<'_>) {
    if cfg!(test) {
        // Goes through the test harness's output capture.
        eprintln!("smolvm-agent: {args}");
    } else {
        let _ = writeln!(std::io::stderr().lock(), "smolvm-agent: {args}");
    }
}

/// `format!`-style wrapper around [`diag_line`].
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => { $crate::diag_line(format_args!($($arg)*)) };
}

fn main() {
    let mode = std::env::args().nth(1);
    if std::process::id() == 1 {
        // The kernel may pass leftover command-line words as arguments;
        // PID 1 is always init.
        init::run();
    }
    match mode.as_deref() {
        Some("init") => init::run(),
        Some("serve") => server::serve(server::AgentConfig::default()),
        Some("version" | "--version") => println!("smolvm-agent {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: smolvm-agent init|serve|version");
            std::process::exit(2);
        }
    }
}
