//! smolvm's host library: the sandbox and snapshot engine, the backends
//! behind one trait, the SQLite state store, guest images and the agent
//! client. The `smolvm` binary is a thin CLI over this crate.

pub mod agent;
pub mod backend;
pub mod doctor;
pub mod error;
pub mod image;
pub mod layers;
pub mod lock;
pub mod names;
pub mod paths;
pub mod process;
pub mod sandbox;
pub mod snapshot;
pub mod store;

/// The current time as RFC 3339 UTC with microseconds, e.g.
/// `2026-07-01T10:00:00.123456+00:00` (the reference tool's format).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
    );
    now.format(&fmt).unwrap_or_else(|_| now.unix_timestamp().to_string())
}
