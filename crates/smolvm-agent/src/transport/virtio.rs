//! virtio-serial ports (QEMU). Each port named `smolvm.agent.<n>` carries
//! one session at a time.
//!
//! While no host client is connected to a port the kernel reports POLLHUP
//! (together with POLLIN) at once and read() returns 0, so a port cannot be
//! waited on with a blocking read. One dispatcher thread therefore polls every idle port in
//! one poll() call, naps briefly while they all just report HUP, and gives a
//! port that has data to a session thread. When that session ends (the host
//! disconnected), the port is closed and reopened, which also works across a
//! VM snapshot/restore.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use smolvm_proto::AGENT_PORT_PREFIX;

use super::{serve_session, PortStream};
use crate::server::{AgentConfig, Ready};
use crate::sys;

const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// Nap between poll rounds while every idle port only reports HUP, right
/// after activity (a host that just used a port tends to come back soon)...
const IDLE_NAP: Duration = Duration::from_millis(5);
/// ...and after a quiet spell, so an idle sandbox costs the host little CPU
/// (the first request after it waits at most this long).
const QUIET_NAP: Duration = Duration::from_millis(20);
/// How long after the last session the short nap is kept.
const ACTIVE_SPELL: Duration = Duration::from_secs(10);
/// Ports appear when virtio_console binds; rescan quickly during boot.
const FAST_SCAN: Duration = Duration::from_millis(100);
const FAST_SCAN_WINDOW: Duration = Duration::from_secs(10);
const SLOW_SCAN: Duration = Duration::from_secs(2);
/// Retry delay when a port is still busy (being closed elsewhere).
const BUSY_RETRY: Duration = Duration::from_millis(20);
/// Upper bound on ports served, whatever the host configures.
const MAX_PORTS: usize = 64;

enum PortState {
    /// Not open; try to (re)open at this instant.
    Closed { retry_at: Instant },
    /// Open and waiting for a host to send something.
    Idle(File),
    /// A session thread owns it.
    Busy,
}

struct Port {
    name: String,
    dev: PathBuf,
    state: PortState,
    open_error_logged: bool,
}

/// Runs the dispatcher forever on the calling thread.
pub fn run(config: Arc<AgentConfig>, ready: Arc<Ready>) -> ! {
    let (done_tx, done_rx) = mpsc::channel::<usize>();
    let mut ports: Vec<Port> = Vec::new();
    let started = Instant::now();
    let mut next_scan = started;
    let mut warned_none = false;
    let mut last_activity = Instant::now();
    loop {
        let now = Instant::now();
        let nap = if now.duration_since(last_activity) < ACTIVE_SPELL { IDLE_NAP } else { QUIET_NAP };
        if now >= next_scan {
            scan(&mut ports);
            let fast = ports.is_empty() && now.duration_since(started) < FAST_SCAN_WINDOW;
            next_scan = now + if fast { FAST_SCAN } else { SLOW_SCAN };
            if ports.is_empty() && !fast && !warned_none {
                warned_none = true;
                // Expected under Firecracker, where vsock is the transport.
                if !ready.is_marked() {
                    crate::diag!("no virtio-serial agent port found yet (still looking)");
                }
            }
        }
        while let Ok(index) = done_rx.try_recv() {
            last_activity = Instant::now();
            if let Some(port) = ports.get_mut(index) {
                port.state = PortState::Closed {
                    retry_at: Instant::now(),
                };
            }
        }
        for port in ports.iter_mut() {
            open_if_due(port);
        }
        if ports.iter().any(|p| matches!(p.state, PortState::Idle(_))) {
            ready.mark("virtio-serial");
        }

        let idle: Vec<usize> = (0..ports.len())
            .filter(|&i| matches!(ports[i].state, PortState::Idle(_)))
            .collect();
        if idle.is_empty() {
            thread::sleep(nap);
            continue;
        }
        let mut fds: Vec<libc::pollfd> = idle
            .iter()
            .map(|&i| match &ports[i].state {
                PortState::Idle(f) => sys::pollfd(f.as_raw_fd(), libc::POLLIN),
                _ => unreachable!("filtered to idle ports"),
            })
            .collect();
        let ready_count = match sys::poll(&mut fds, Some(nap)) {
            Ok(n) => n,
            Err(e) => {
                crate::diag!("poll on virtio ports failed: {e}");
                thread::sleep(IDLE_NAP);
                continue;
            }
        };
        let mut handed_off = false;
        for (slot, &index) in idle.iter().enumerate() {
            let revents = fds[slot].revents;
            if revents & (libc::POLLNVAL | libc::POLLERR) != 0 {
                ports[index].state = PortState::Closed {
                    retry_at: Instant::now() + SLOW_SCAN,
                };
            } else if revents & libc::POLLHUP != 0 {
                // No host connected. The kernel then also reports POLLIN
                // (a read would not block: it returns 0), so HUP decides.
            } else if revents & libc::POLLIN != 0 {
                handed_off = true;
                last_activity = Instant::now();
                start_session(index, &mut ports[index], &config, &done_tx);
            }
        }
        if ready_count > 0 && !handed_off {
            // Only hang-ups: poll returned at once, so nap to avoid spinning.
            thread::sleep(nap);
        }
    }
}

fn start_session(index: usize, port: &mut Port, config: &Arc<AgentConfig>, done: &mpsc::Sender<usize>) {
    let file = match std::mem::replace(&mut port.state, PortState::Busy) {
        PortState::Idle(f) => f,
        other => {
            port.state = other;
            return;
        }
    };
    let config = config.clone();
    let done = done.clone();
    let name = port.name.clone();
    let spawned = thread::Builder::new().name(format!("port-{index}")).spawn(move || {
        serve_session(PortStream::new(file), &config, &name);
        let _ = done.send(index);
    });
    if let Err(e) = spawned {
        crate::diag!("cannot start a session thread for {}: {e}", port.name);
        port.state = PortState::Closed {
            retry_at: Instant::now() + SLOW_SCAN,
        };
    }
}

fn open_if_due(port: &mut Port) {
    let PortState::Closed { retry_at } = port.state else {
        return;
    };
    if Instant::now() < retry_at {
        return;
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&port.dev);
    match opened {
        Ok(file) => {
            port.open_error_logged = false;
            port.state = PortState::Idle(file);
        }
        // EBUSY right after a session: a command forked at that moment
        // still holds the old descriptor until it execs (close-on-exec).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            port.state = PortState::Closed {
                retry_at: Instant::now() + BUSY_RETRY,
            };
        }
        Err(e) => {
            if !port.open_error_logged {
                crate::diag!("cannot open {} ({}): {e}", port.dev.display(), port.name);
                port.open_error_logged = true;
            }
            port.state = PortState::Closed {
                retry_at: Instant::now() + SLOW_SCAN,
            };
        }
    }
}

/// Adds agent ports that appeared since the last scan.
fn scan(ports: &mut Vec<Port>) {
    let Ok(entries) = fs::read_dir(PORTS_DIR) else { return };
    let known: HashSet<PathBuf> = ports.iter().map(|p| p.dev.clone()).collect();
    for entry in entries.flatten() {
        if ports.len() >= MAX_PORTS {
            break;
        }
        let dir = entry.path();
        let Some(node) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let dev = Path::new("/dev").join(&node);
        if known.contains(&dev) {
            continue;
        }
        let Ok(name) = fs::read_to_string(dir.join("name")) else {
            continue;
        };
        let name = name.trim().to_string();
        if !name.starts_with(AGENT_PORT_PREFIX) {
            continue;
        }
        ensure_device_node(&dev, &dir);
        ports.push(Port {
            name,
            dev,
            state: PortState::Closed {
                retry_at: Instant::now(),
            },
            open_error_logged: false,
        });
    }
}

/// devtmpfs normally creates /dev/vportNpM; without it, make the node from
/// the `dev` (major:minor) attribute.
fn ensure_device_node(dev: &Path, sysdir: &Path) {
    if fs::metadata(dev)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
    {
        return;
    }
    let Ok(numbers) = fs::read_to_string(sysdir.join("dev")) else {
        return;
    };
    let Some((major, minor)) = numbers.trim().split_once(':') else {
        return;
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return;
    };
    let Ok(path) = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid C string; mknod has no other preconditions.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) };
    if rc != 0 {
        crate::diag!("cannot create {}: {}", dev.display(), std::io::Error::last_os_error());
    }
}
