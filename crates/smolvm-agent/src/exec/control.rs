//! State shared between a running command's threads: whether it exited,
//! whether the timeout killed it, and whether Exited was sent.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys;

#[derive(Default)]
struct State {
    /// The command's process has exited (it may not be reaped yet).
    exited: bool,
    timed_out: bool,
    /// The host's stdin is dropped (the command stopped reading it).
    stdin_abandoned: bool,
    /// Exited is being or has been sent; the request is over.
    reported: bool,
}

/// Shared control block of one command.
pub struct ExecControl {
    pgid: libc::pid_t,
    state: Mutex<State>,
    changed: Condvar,
}

impl ExecControl {
    /// A control block for the command leading process group `pgid`.
    pub fn new(pgid: libc::pid_t) -> Arc<Self> {
        Arc::new(ExecControl {
            pgid,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signals the command's process group. The waiter marks the exit
    /// before it reaps the leader, and reaping is what frees the pid, so a
    /// signal sent here can never reach a recycled process group.
    pub fn signal(&self, signal: libc::c_int) {
        let state = self.lock();
        if !state.exited {
            sys::kill_group(self.pgid, signal);
        }
    }

    /// Records that the leader exited (called before reaping it).
    pub fn mark_exited(&self) {
        self.lock().exited = true;
        self.changed.notify_all();
    }

    /// Makes the stdin feeder drop what it holds and close the pipe.
    pub fn abandon_stdin(&self) {
        self.lock().stdin_abandoned = true;
    }

    /// Whether stdin writes should stop: the command exited or its stdin
    /// was abandoned.
    pub fn stdin_over(&self) -> bool {
        let state = self.lock();
        state.exited || state.stdin_abandoned
    }

    /// Whether the timeout killed the command.
    pub fn timed_out(&self) -> bool {
        self.lock().timed_out
    }

    /// Records that the final Response is about to be sent.
    pub fn mark_reported(&self) {
        self.lock().reported = true;
    }

    /// Whether the final Response was sent (or is being sent).
    pub fn reported(&self) -> bool {
        self.lock().reported
    }

    /// Blocks until the command exits or `limit` passes; in the latter case
    /// SIGKILLs its group and records the timeout.
    pub fn enforce_timeout(&self, limit: Duration) {
        let Some(deadline) = Instant::now().checked_add(limit) else {
            return;
        };
        let mut state = self.lock();
        loop {
            if state.exited {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                state.timed_out = true;
                sys::kill_group(self.pgid, libc::SIGKILL);
                return;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
