//! smolvm's host library: the sandbox and snapshot engine, the backends
//! behind one trait, the SQLite state store, guest images and the agent
//! client. The `smolvm` binary is a thin CLI over this crate.

pub mod image;
