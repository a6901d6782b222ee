//! The agent server: opens the transports and runs sessions on them. Under
//! our init it is a forked child of PID 1, which restarts it if it dies.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::transport::{virtio, vsock};

/// Facts about how this server process runs, shared by all sessions.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// Pid of our own init when it forked this server: it performs the
    /// power-off when sent SIGUSR2. `None`: the server powers off itself.
    pub init_pid: Option<libc::pid_t>,
}

/// Prints the one `smolvm-agent: ready` console line the host and image
/// tests wait for, the first time any transport is up.
#[derive(Default)]
pub struct Ready(AtomicBool);

impl Ready {
    /// Records that `transport` is serving; prints the ready line once
    /// (exactly `smolvm-agent: ready`, so hosts can match the whole line).
    pub fn mark(&self, transport: &str) {
        if !self.0.swap(true, Ordering::AcqRel) {
            crate::diag!("serving on {transport}");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "smolvm-agent: ready");
            let _ = out.flush();
        }
    }

    /// Whether some transport is already serving.
    pub fn is_marked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Runs the server forever.
pub fn serve(config: AgentConfig) -> ! {
    let config = Arc::new(config);
    let ready = Arc::new(Ready::default());
    vsock::start(config.clone(), ready.clone());
    virtio::run(config, ready)
}
