//! The power-off sequence, run by PID 1 on SIGTERM/SIGINT/SIGUSR2, or by a
//! server without our init when asked to Shutdown.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::system::freeze;

/// How long processes get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
const KILL_GRACE: Duration = Duration::from_millis(500);

/// What the final reboot(2) call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HaltAction {
    /// RB_POWER_OFF: QEMU exits (ACPI power-off).
    #[default]
    PowerOff,
    /// RB_AUTOBOOT: for VMMs that end the VM on reset rather than on ACPI
    /// power-off (Firecracker with `reboot=k`).
    Reboot,
}

impl HaltAction {
    /// The action named by `smolvm.halt=` on the kernel command line.
    pub fn from_kernel_cmdline() -> Self {
        let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
        crate::init::cmdline::parse(&cmdline).halt
    }
}

/// Stops every other process, flushes and makes the root read-only, then
/// powers off. Returns only if reboot(2) fails. `reap` is set for PID 1,
/// which inherits (and must reap) every orphan.
pub fn power_off(action: HaltAction, reap: bool) {
    crate::diag!("powering off");
    // A frozen filesystem would hang the final sync and remount.
    freeze::thaw_everything();
    // SAFETY: kill(-1) signals every process we may signal except ourselves.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    wait_for_others(TERM_GRACE, reap);
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    wait_for_others(KILL_GRACE, reap);
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: constant C strings and null data are valid mount(2) arguments.
    let remounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if remounted != 0 {
        crate::diag!("cannot remount / read-only: {}", std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    unsafe { libc::sync() };
    let command = match action {
        HaltAction::PowerOff => libc::RB_POWER_OFF,
        HaltAction::Reboot => libc::RB_AUTOBOOT,
    };
    // SAFETY: reboot(2) with a valid command.
    if unsafe { libc::reboot(command) } != 0 {
        crate::diag!("reboot(2) failed: {}", std::io::Error::last_os_error());
    }
}

/// Waits until no other user process is left, or `limit` passes.
fn wait_for_others(limit: Duration, reap: bool) {
    let deadline = Instant::now() + limit;
    loop {
        let alone = if reap {
            reap_all_children()
        } else {
            !other_processes_exist()
        };
        if alone || Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reaps exited children; true when there are no children at all.
fn reap_all_children() -> bool {
    loop {
        // SAFETY: waitpid with a null status pointer is allowed.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        return pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
}

/// Whether a user process other than PID 1 and ourselves still runs
/// (kernel threads and zombies have an empty cmdline).
fn other_processes_exist() -> bool {
    let me = std::process::id() as libc::pid_t;
    crate::procs::scan()
        .iter()
        .any(|p| p.pid != 1 && p.pid != me && fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| !c.is_empty()))
}
