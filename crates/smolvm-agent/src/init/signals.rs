//! Signal handling of PID 1: the signals it cares about are blocked and
//! taken synchronously with sigtimedwait, so its main loop stays plain
//! sequential code (no async-signal-safety concerns).

use std::mem::MaybeUninit;
use std::time::Duration;

/// Signals that mean "power off": SIGTERM (host/VMM request), SIGINT
/// (Ctrl-Alt-Del once CAD is handed to init) and SIGUSR2 (the agent
/// server's Shutdown request).
pub const POWER_OFF: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2];
/// All signals PID 1 takes over: the power-off ones, SIGCHLD for reaping,
/// and SIGHUP which is swallowed.
const TAKEN: [libc::c_int; 5] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR2, libc::SIGCHLD, libc::SIGHUP];

extern "C" fn ignore(_: libc::c_int) {}

fn taken_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset then modifies it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for signal in TAKEN {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        set.assume_init()
    }
}

/// Blocks the taken signals (so they queue for [`wait`]) and installs a
/// no-op handler for each: the kernel drops signals sent to init whose
/// disposition is the default.
pub fn take_over() {
    let set = taken_set();
    for signal in TAKEN {
        // SAFETY: sigaction is plain data; a zeroed one with a handler and
        // an empty mask is valid.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: `set` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Undoes [`take_over`] in a forked child (the server), which must die
/// from SIGTERM like any process.
pub fn restore_defaults() {
    for signal in TAKEN {
        // SAFETY: resetting a disposition to the default is always valid.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let set = taken_set();
    // SAFETY: `set` is initialised.
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

/// Waits up to `timeout` for a taken signal; `None` on timeout.
pub fn wait(timeout: Duration) -> Option<libc::c_int> {
    let set = taken_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `ts` are valid; a null siginfo pointer is allowed.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (signal > 0).then_some(signal)
}

/// Makes Ctrl-Alt-Del send SIGINT to init instead of rebooting at once.
pub fn route_ctrl_alt_del() {
    // SAFETY: reboot(2) with CAD_OFF only changes how CAD is handled.
    if unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) } != 0 {
        crate::diag!("cannot take over Ctrl-Alt-Del: {}", std::io::Error::last_os_error());
    }
}
