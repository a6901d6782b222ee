//! PID 1 of the guest.
//!
//! Boot: mount what the initramfs did not move into the root, set the
//! environment children inherit, apply the `smolvm.*` kernel parameters
//! (hostname, network, DNS; see [`cmdline`]), start an online `resize2fs`
//! of /dev/vda if the tool exists. Then fork the agent server and loop:
//! reap every zombie, restart the server (with backoff) if it dies, and run
//! the power-off sequence on SIGTERM, SIGINT (Ctrl-Alt-Del) or SIGUSR2 (the
//! server's Shutdown request). PID 1 must never exit, so every step logs
//! and carries on, and panics are contained.

pub mod cmdline;
mod mounts;
mod network;
mod signals;

use std::env;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use self::cmdline::BootConfig;
use crate::server::{self, AgentConfig};
use crate::system::power;

/// PATH for init's own tools and every command the agent runs.
pub const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A server that ran this long is considered healthy again.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// Longest sleep between loop rounds (signals wake it earlier).
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Runs init forever.
pub fn run() -> ! {
    signals::take_over();
    if process::id() == 1 {
        signals::route_ctrl_alt_del();
    }
    let (boot, resizer) = panic::catch_unwind(boot_setup).unwrap_or_else(|_| {
        crate::diag!("boot setup panicked; continuing with defaults");
        (BootConfig::default(), None)
    });
    let mut supervisor = Supervisor {
        halt: boot.halt,
        init_pid: process::id() as libc::pid_t,
        server: None,
        server_started: Instant::now(),
        restart_at: Instant::now(),
        backoff: FIRST_BACKOFF,
        resizer,
    };
    loop {
        if panic::catch_unwind(AssertUnwindSafe(|| supervisor.step())).is_err() {
            crate::diag!("init loop panicked; carrying on");
            thread::sleep(Duration::from_secs(1));
        }
    }
}

fn boot_setup() -> (BootConfig, Option<libc::pid_t>) {
    let _ = env::set_current_dir("/");
    mounts::mount_api_filesystems();
    set_child_environment();
    if fs::symlink_metadata("/etc/mtab").is_err() {
        // resize2fs, mount and df look for mounted filesystems there.
        let _ = std::os::unix::fs::symlink("../proc/self/mounts", "/etc/mtab");
    }
    let boot = cmdline::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    network::configure(&boot);
    let resizer = grow_root_filesystem();
    (boot, resizer)
}

/// The environment every later process inherits (PID 1 is still single
/// threaded here, so changing it is safe).
fn set_child_environment() {
    env::set_var("PATH", SEARCH_PATH);
    env::set_var("HOME", "/root");
    env::set_var("TERM", "xterm-256color");
}

/// Starts `resize2fs /dev/vda` in the background so the root filesystem
/// grows online to the disk's size. Returns its pid for the reaper.
fn grow_root_filesystem() -> Option<libc::pid_t> {
    let tool = find_program("resize2fs")?;
    if !Path::new("/dev/vda").exists() {
        return None;
    }
    let spawned = Command::new(&tool)
        .arg("/dev/vda")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        // Not waited on here: the reaper collects it.
        Ok(child) => Some(child.id() as libc::pid_t),
        Err(e) => {
            crate::diag!("cannot run {}: {e}", tool.display());
            None
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    SEARCH_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

struct Supervisor {
    halt: power::HaltAction,
    init_pid: libc::pid_t,
    server: Option<libc::pid_t>,
    server_started: Instant,
    restart_at: Instant,
    backoff: Duration,
    resizer: Option<libc::pid_t>,
}

impl Supervisor {
    fn step(&mut self) {
        let now = Instant::now();
        if self.server.is_none() && now >= self.restart_at {
            self.start_server();
        }
        let wait = match self.server {
            None => self
                .restart_at
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), IDLE_WAIT),
            Some(_) => IDLE_WAIT,
        };
        if let Some(signal) = signals::wait(wait) {
            if signals::POWER_OFF.contains(&signal) {
                power::power_off(self.halt, true);
                // Only reached if reboot(2) failed: the server is gone too.
                self.server = None;
            }
        }
        self.reap();
    }

    fn start_server(&mut self) {
        // SAFETY: init is single threaded, so the child may run anything.
        match unsafe { libc::fork() } {
            -1 => {
                crate::diag!("cannot fork the agent server: {}", std::io::Error::last_os_error());
                self.restart_at = Instant::now() + self.backoff;
            }
            0 => {
                signals::restore_defaults();
                let config = AgentConfig {
                    init_pid: Some(self.init_pid),
                };
                let _ = panic::catch_unwind(|| server::serve(config));
                // Never fall back into the parent's supervisor loop.
                // SAFETY: _exit ends this child immediately.
                unsafe { libc::_exit(1) };
            }
            pid => {
                self.server = Some(pid);
                self.server_started = Instant::now();
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: `status` is a valid int to fill.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if Some(pid) == self.server {
                self.server_exited(status);
            } else if Some(pid) == self.resizer {
                self.resizer = None;
                if status != 0 {
                    crate::diag!("resize2fs /dev/vda failed (wait status {status:#x})");
                }
            }
        }
    }

    fn server_exited(&mut self, status: libc::c_int) {
        if self.server_started.elapsed() >= STABLE_RUN {
            self.backoff = FIRST_BACKOFF;
        }
        crate::diag!(
            "agent server exited (wait status {status:#x}); restarting in {:?}",
            self.backoff
        );
        self.server = None;
        self.restart_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
