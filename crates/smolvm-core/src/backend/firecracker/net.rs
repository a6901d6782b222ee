//! Tap devices for Firecracker guests (Firecracker has no user-mode
//! network). Creating a tap needs root (CAP_NET_ADMIN).
//!
//! Each sandbox gets a persistent tap named `smv<10 hex digits>` (a hash
//! of the sandbox directory, so two data directories never collide; Linux
//! allows 15 characters) and a /30 link of its own in 172.30.0.0/16: the
//! host end is `.1`, the guest `.2`. No route, forwarding or NAT is set
//! up: the guest reaches the host's end of its link and nothing else.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// A sandbox's tap device and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    /// Interface name (<= 15 characters).
    pub name: String,
    /// Host end of the link.
    pub host_ip: Ipv4Addr,
    /// Guest end of the link.
    pub guest_ip: Ipv4Addr,
}

impl TapPlan {
    /// The plan for the sandbox living in `dir`.
    pub fn for_sandbox(dir: &Path) -> TapPlan {
        let hash = blake3::hash(dir.as_os_str().as_encoded_bytes());
        let b = hash.as_bytes();
        let name = format!("smv{}", b[..5].iter().map(|x| format!("{x:02x}")).collect::<String>());
        // 16384 /30 links in 172.30.0.0/16.
        let link = (u32::from(b[5]) << 8 | u32::from(b[6])) & 0x3fff;
        let base = u32::from(Ipv4Addr::new(172, 30, 0, 0)) + link * 4;
        TapPlan { name, host_ip: Ipv4Addr::from(base + 1), guest_ip: Ipv4Addr::from(base + 2) }
    }

    /// True when the interface exists.
    pub fn exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.name).exists()
    }

    /// Creates the persistent tap and brings it up with the host address.
    pub fn create(&self) -> io::Result<()> {
        if self.exists() {
            // Left over by a VMM that died: start clean.
            self.delete()?;
        }
        let tun = attach(&self.name)?;
        // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        drop(tun);
        if let Err(e) = self.configure() {
            let _ = self.delete();
            return Err(e);
        }
        Ok(())
    }

    /// Removes the tap (no-op when it does not exist). A Firecracker that
    /// was just killed may hold it for a moment longer (its threads exit
    /// after the main one), so a busy tap is retried for a while.
    pub fn delete(&self) -> io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match self.delete_once() {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn delete_once(&self) -> io::Result<()> {
        if !self.exists() {
            return Ok(());
        }
        let tun = attach(&self.name)?;
        // SAFETY: as in `create`.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 0 as libc::c_ulong) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn configure(&self) -> io::Result<()> {
        // SAFETY: plain socket(2) call; the fd is owned by `sock` below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let sock: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let set_addr = |request: libc::c_ulong, addr: Ipv4Addr| -> io::Result<()> {
            let mut req = ifreq(&self.name);
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: the union member for address requests is a sockaddr,
            // which a sockaddr_in fits in.
            unsafe {
                std::ptr::write(std::ptr::addr_of_mut!(req.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(), sin);
                if libc::ioctl(sock.as_raw_fd(), request, &mut req) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        set_addr(libc::SIOCSIFADDR, self.host_ip)?;
        set_addr(libc::SIOCSIFNETMASK, Ipv4Addr::new(255, 255, 255, 252))?;
        let mut req = ifreq(&self.name);
        // SAFETY: flags requests read and write the `ifru_flags` member.
        unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

/// Opens /dev/net/tun attached to tap `name` (created if missing).
fn attach(name: &str) -> io::Result<File> {
    let tun = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes an ifreq we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_short_distinct_and_stable() {
        let a = TapPlan::for_sandbox(Path::new("/var/lib/smolvm/sandboxes/demo"));
        let b = TapPlan::for_sandbox(Path::new("/tmp/other/sandboxes/demo"));
        assert!(a.name.len() <= 15 && a.name.starts_with("smv"));
        assert_ne!(a.name, b.name);
        assert_eq!(a, TapPlan::for_sandbox(Path::new("/var/lib/smolvm/sandboxes/demo")));
        assert_eq!(a.host_ip.octets()[..2], [172, 30]);
        assert_eq!(u32::from(a.guest_ip), u32::from(a.host_ip) + 1);
        assert_eq!(u32::from(a.host_ip) % 4, 1);
    }

    /// Creates and removes a real tap when we may (root, /dev/net/tun).
    #[test]
    fn tap_create_and_delete() {
        let t = tempfile::tempdir().unwrap();
        let plan = TapPlan::for_sandbox(t.path());
        match plan.create() {
            Ok(()) => {}
            Err(e) => {
                eprintln!("SKIPPED: cannot create a tap here ({e})");
                return;
            }
        }
        assert!(plan.exists());
        plan.delete().unwrap();
        assert!(!plan.exists());
        plan.delete().unwrap();
    }
}
