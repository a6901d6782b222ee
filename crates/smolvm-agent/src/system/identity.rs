//! Hostname and machine-id: set at boot from the kernel command line and
//! again by SetIdentity after a sandbox is cloned from a snapshot.

use std::fs;
use std::io;
use std::path::Path;

use smolvm_proto::Response;

use crate::files::write_file_atomic;
use crate::sink::{error, io_error};
use crate::system::freeze;

/// A hostname we accept: 1–63 characters of `[a-z0-9-]`.
pub fn valid_hostname(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A machine-id as systemd writes it: 32 lowercase hex digits.
pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Answers SetIdentity.
pub fn set_identity(hostname: &str, machine_id: &str) -> Response {
    if !valid_hostname(hostname) {
        return error("bad_request", "hostname must be 1-63 characters of [a-z0-9-]");
    }
    if !valid_machine_id(machine_id) {
        return error("bad_request", "machine_id must be 32 lowercase hex digits");
    }
    if freeze::is_frozen() {
        return error("frozen", "filesystems are frozen; thaw before changing identity");
    }
    if let Err(e) = apply_hostname(hostname) {
        return io_error("cannot set the hostname", &e);
    }
    if let Err(e) = write_file_atomic(
        Path::new("/etc/machine-id"),
        format!("{machine_id}\n").as_bytes(),
        0o444,
    ) {
        return io_error("cannot write /etc/machine-id", &e);
    }
    Response::Ok
}

/// Sets the kernel hostname, /etc/hostname and the /etc/hosts entry that
/// lets the name resolve (sudo and others complain otherwise).
pub fn apply_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    crate::sys::cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    write_file_atomic(Path::new("/etc/hostname"), format!("{name}\n").as_bytes(), 0o644)?;
    let hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
    write_file_atomic(Path::new("/etc/hosts"), hosts_with_name(&hosts, name).as_bytes(), 0o644)
}

/// `hosts` with its 127.0.1.1 line replaced by one naming `name`, and a
/// localhost line added if there is none.
pub fn hosts_with_name(hosts: &str, name: &str) -> String {
    let mut out = String::new();
    let mut has_localhost = false;
    for line in hosts.lines() {
        let mut fields = line.split_whitespace();
        let address = fields.next();
        if address == Some("127.0.1.1") {
            continue;
        }
        if address == Some("127.0.0.1") && fields.any(|f| f == "localhost") {
            has_localhost = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !has_localhost {
        out.insert_str(0, "127.0.0.1\tlocalhost\n");
    }
    out.push_str(&format!("127.0.1.1\t{name}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_validated() {
        assert!(valid_hostname("sbx-01"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("Upper"));
        assert!(!valid_hostname("a.b"));
        assert!(!valid_hostname(&"a".repeat(64)));
        assert!(valid_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_machine_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!valid_machine_id("0123"));
        assert!(matches!(set_identity("bad name", "0"), Response::Error { code, .. } if code == "bad_request"));
    }

    #[test]
    fn hosts_file_gets_exactly_one_name_line() {
        let before = "127.0.0.1 localhost\n127.0.1.1 old\n::1 ip6-localhost\n";
        let after = hosts_with_name(before, "new");
        assert_eq!(after, "127.0.0.1 localhost\n::1 ip6-localhost\n127.0.1.1\tnew\n");
        assert_eq!(hosts_with_name("", "x"), "127.0.0.1\tlocalhost\n127.0.1.1\tx\n");
    }
}
