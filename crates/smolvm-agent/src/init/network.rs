//! Hostname, interfaces, default route and resolver from the boot config.
//! Interfaces are configured by running `ip` from PATH (busybox's applet in
//! the tiny image, iproute2 in Debian) with an argument vector, never a
//! shell string.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::cmdline::BootConfig;
use crate::files::write_file_atomic;
use crate::system::identity;

/// The interface the host's network device appears as.
const INTERFACE: &str = "eth0";
/// virtio_net may still be probing when init starts.
const INTERFACE_WAIT: Duration = Duration::from_secs(2);

/// Applies hostname, addresses, route and DNS; logs failures and goes on.
pub fn configure(boot: &BootConfig) {
    if let Some(name) = &boot.hostname {
        if let Err(e) = identity::apply_hostname(name) {
            crate::diag!("cannot set hostname {name}: {e}");
        }
    }
    run_ip(&["link", "set", "lo", "up"]);
    if let Some((address, prefix)) = boot.address {
        if !wait_for_interface(INTERFACE, INTERFACE_WAIT) {
            crate::diag!("{INTERFACE} did not appear; network not configured");
            return;
        }
        let family = family_flag(address);
        let cidr = format!("{address}/{prefix}");
        run_ip(&["link", "set", INTERFACE, "up"]);
        run_ip(&[family, "addr", "add", &cidr, "dev", INTERFACE]);
        if let Some(gateway) = boot.gateway {
            let via = gateway.to_string();
            run_ip(&[
                family_flag(gateway),
                "route",
                "add",
                "default",
                "via",
                &via,
                "dev",
                INTERFACE,
            ]);
        }
    }
    if !boot.dns.is_empty() {
        let text: String = boot.dns.iter().map(|server| format!("nameserver {server}\n")).collect();
        // Atomic replace also replaces a dangling resolv.conf symlink.
        if let Err(e) = write_file_atomic(Path::new("/etc/resolv.conf"), text.as_bytes(), 0o644) {
            crate::diag!("cannot write /etc/resolv.conf: {e}");
        }
    }
}

fn family_flag(address: IpAddr) -> &'static str {
    if address.is_ipv4() {
        "-4"
    } else {
        "-6"
    }
}

fn wait_for_interface(name: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let path = Path::new("/sys/class/net").join(name);
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

fn run_ip(args: &[&str]) {
    match Command::new("ip").args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => crate::diag!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => crate::diag!("cannot run `ip {}`: {e}", args.join(" ")),
    }
}
