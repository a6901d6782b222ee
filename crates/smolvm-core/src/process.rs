//! Identifying and stopping VMM processes. A pid alone can be reused by an
//! unrelated process after the VMM dies, so a process is identified by its
//! pid *and* its start time (field 22 of /proc/<pid>/stat).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process we started, identified robustly against pid reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid.
    pub pid: i32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

/// State and start time of a pid, from /proc.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces or ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

impl ProcessId {
    /// Captures the identity of a live pid.
    pub fn of(pid: i32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| ProcessId { pid, start_time })
    }

    /// True while the very process we started is alive (zombies are dead).
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Some((state, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Sends `signal` if the process is still ours and alive.
    pub fn signal(&self, signal: rustix::process::Signal) {
        if self.is_alive() {
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Waits until the process is gone; true if it went within `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            reap(self.pid);
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait `grace`, then SIGKILL and wait for it to go.
    pub fn terminate(&self, grace: Duration) -> bool {
        self.signal(rustix::process::Signal::TERM);
        if self.wait_gone(grace) {
            return true;
        }
        self.signal(rustix::process::Signal::KILL);
        self.wait_gone(Duration::from_secs(5))
    }
}

/// Reaps `pid` if it is our exited child (no-op otherwise), so a VMM
/// launched by this very process does not linger as a zombie.
fn reap(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_tracks_a_real_child_until_it_is_killed() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        assert!(id.is_alive());
        let reused = ProcessId { start_time: id.start_time + 1, ..id };
        assert!(!reused.is_alive(), "a different start time is another process");
        assert!(id.terminate(Duration::from_secs(2)));
        assert!(!id.is_alive());
        let _ = child.wait();
    }
}
