//! Requests that act on the guest as a whole: health, clock, entropy,
//! identity, filesystem sync/freeze and power-off.

pub mod freeze;
pub mod identity;
pub mod power;

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use smolvm_proto::{Response, PROTOCOL_VERSION};

use crate::server::AgentConfig;
use crate::sink::{error, FrameSink};
use crate::sys;

/// Features this agent implements, as reported by Health.
pub const CAPABILITIES: [&str; 9] = [
    "exec", "tty", "files", "sync", "freeze", "clock", "entropy", "identity", "shutdown",
];

/// Most entropy bytes one AddEntropy request may carry.
const MAX_ENTROPY_BYTES: usize = 512;
/// `_IOW('R', 0x03, int[2])` from linux/random.h (not in the libc crate).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseed the kernel's CRNG from the input pool now.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Answers Health.
pub fn health() -> Response {
    Response::Health {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
        uptime_ms: sys::clock(libc::CLOCK_BOOTTIME).as_millis() as u64,
        wall_clock: sys::clock(libc::CLOCK_REALTIME).as_secs_f64(),
    }
}

/// Answers SetClock: steps CLOCK_REALTIME (after a restore the guest clock
/// is as old as the snapshot).
pub fn set_clock(unix_secs: i64, nanos: u32) -> Response {
    if nanos >= 1_000_000_000 || unix_secs < 0 {
        return error("bad_request", "time out of range");
    }
    let ts = libc::timespec {
        tv_sec: unix_secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec.
    match sys::cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }) {
        Ok(_) => Response::Ok,
        Err(e) => error("io", format!("cannot set the clock: {e}")),
    }
}

/// Answers AddEntropy: mixes the bytes into the kernel pool and credits
/// them fully (the host's randomness is trusted; clones of a snapshot must
/// not share RNG state).
pub fn add_entropy(hex: &str) -> Response {
    let bytes = match decode_hex(hex, MAX_ENTROPY_BYTES) {
        Some(b) => b,
        None => {
            return error(
                "bad_request",
                format!("entropy must be hex, at most {MAX_ENTROPY_BYTES} bytes"),
            )
        }
    };
    if bytes.is_empty() {
        return Response::Ok;
    }
    match credit_entropy(&bytes) {
        Ok(()) => Response::Ok,
        Err(e) => error("io", format!("cannot add entropy: {e}")),
    }
}

fn credit_entropy(bytes: &[u8]) -> io::Result<()> {
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let words = 2 + bytes.len().div_ceil(4);
    let mut info = vec![0u32; words];
    info[0] = (bytes.len() * 8) as u32;
    info[1] = bytes.len() as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    let urandom = File::open("/dev/urandom")?;
    // SAFETY: `info` is laid out as rand_pool_info with buf_size bytes after
    // the two header ints.
    unsafe { sys::ioctl_ptr(urandom.as_raw_fd(), RNDADDENTROPY, info.as_mut_ptr()) }?;
    // Credited entropy alone reaches /dev/urandom only at the next periodic
    // reseed: two guests resumed from one memory image would keep drawing
    // the same bytes until then. Reseed now.
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { sys::ioctl_ptr(urandom.as_raw_fd(), RNDRESEEDCRNG, std::ptr::null_mut::<u8>()) }.map(drop)
}

/// Decodes lowercase or uppercase hex of at most `max` bytes.
pub fn decode_hex(hex: &str, max: usize) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() / 2 > max {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Answers Shutdown: Ok first (the host waits for it), then power off
/// through our init, or directly when there is none.
pub fn shutdown(sink: &FrameSink, config: &AgentConfig) -> io::Result<()> {
    if config.init_pid.is_none() && !sys::is_root() {
        return sink.error("unsupported", "powering off needs root");
    }
    // The host may already be gone; power off regardless.
    let _ = sink.respond(&Response::Ok);
    freeze::thaw();
    match config.init_pid {
        Some(init) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(init, libc::SIGUSR2) };
        }
        None => power::power_off(power::HaltAction::from_kernel_cmdline(), false),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decoding_is_strict_and_bounded() {
        assert_eq!(decode_hex("00ffA0", 8), Some(vec![0, 0xff, 0xa0]));
        assert_eq!(decode_hex("", 8), Some(vec![]));
        assert_eq!(decode_hex("abc", 8), None);
        assert_eq!(decode_hex("zz", 8), None);
        assert_eq!(decode_hex(&"ab".repeat(9), 8), None);
    }

    #[test]
    fn health_reports_versions_and_clocks() {
        let Response::Health {
            agent_version,
            protocol_version,
            capabilities,
            uptime_ms,
            wall_clock,
        } = health()
        else {
            panic!("not a Health response");
        };
        assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(protocol_version, PROTOCOL_VERSION);
        assert!(capabilities.iter().any(|c| c == "exec"));
        assert!(uptime_ms > 0);
        assert!(wall_clock > 1.6e9);
    }

    #[test]
    fn clock_rejects_out_of_range_values() {
        assert!(matches!(set_clock(0, 1_000_000_000), Response::Error { .. }));
        assert!(matches!(set_clock(-5, 0), Response::Error { .. }));
    }
}
