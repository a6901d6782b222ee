//! Tracking and killing what a session started.
//!
//! Every command runs in its own Unix session (setsid), so its session id
//! is the pid of the command itself. Killing by session id also catches
//! processes that moved to another process group inside it (shell job
//! control under a pty), which a plain killpg would miss. Processes that
//! call setsid themselves deliberately escape.

use std::fs;

use crate::sys;

/// The Unix session ids of commands one agent session started.
#[derive(Default)]
pub struct SessionProcesses {
    sids: Vec<libc::pid_t>,
}

impl SessionProcesses {
    /// Remembers a command started by this agent session.
    pub fn add(&mut self, sid: libc::pid_t) {
        self.sids.push(sid);
    }

    /// Forgets sessions with no process left. While any member (even a
    /// zombie) exists the kernel cannot reuse the id, so after pruning the
    /// list never names someone else's processes.
    pub fn prune(&mut self) {
        if self.sids.is_empty() {
            return;
        }
        let procs = scan();
        self.sids.retain(|sid| procs.iter().any(|p| p.sid == *sid));
    }

    /// SIGKILLs every process still in one of these sessions.
    pub fn kill_all(&mut self) {
        self.prune();
        if self.sids.is_empty() {
            return;
        }
        for &sid in &self.sids {
            sys::kill_group(sid, libc::SIGKILL);
        }
        let me = std::process::id() as libc::pid_t;
        // Members may fork while we kill; a few rounds settle it.
        for _ in 0..3 {
            let victims: Vec<libc::pid_t> = scan()
                .into_iter()
                .filter(|p| p.pid != me && p.state != 'Z' && self.sids.contains(&p.sid))
                .map(|p| p.pid)
                .collect();
            if victims.is_empty() {
                break;
            }
            for pid in victims {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.sids.clear();
    }
}

/// One line of /proc/<pid>/stat, the fields we need.
#[derive(Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: libc::pid_t,
    pub state: char,
    pub sid: libc::pid_t,
}

/// Parses /proc/<pid>/stat. The command name is in parentheses and may
/// itself contain spaces and parentheses, so fields are counted from the
/// last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    // After the name: state ppid pgrp session ...
    let mut fields = tail.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let sid = fields.nth(2)?.parse().ok()?;
    Some(ProcStat { pid, state, sid })
}

/// All processes currently visible in /proc.
pub fn scan() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let text = "4242 (we ird) (x)) S 1 4240 4241 0 -1 4194560 100 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                pid: 4242,
                state: 'S',
                sid: 4241
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x) Z"), None);
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id() as libc::pid_t;
        assert!(scan().iter().any(|p| p.pid == me));
    }
}
