//! Sandboxes: their configuration, their lifecycle state machine, and the
//! engine that drives them through a backend.

mod engine;
mod error;
mod readiness;
mod recover;

use serde::{Deserialize, Serialize};

pub use engine::{CreateOptions, Engine, Progress, SandboxInfo};
pub use error::SandboxError;
pub(crate) use readiness::{console_offset, wait_guest_ready, MemoryBase};
pub use recover::{crash_point, PIDFILE};
pub(crate) use recover::Journal;

use crate::backend::accel::Accel;
use crate::backend::BackendKind;

/// Lifecycle states (the reference tool's five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Recorded, never booted (only seen while `create` runs).
    Created,
    /// The VM runs.
    Running,
    /// The VMM lives, vCPUs stopped.
    Paused,
    /// No VMM process; the disk is kept.
    Stopped,
    /// The VMM died unexpectedly or a restore failed.
    Error,
}

impl SandboxStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Created => "created",
            SandboxStatus::Running => "running",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Error => "error",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => SandboxStatus::Created,
            "running" => SandboxStatus::Running,
            "paused" => SandboxStatus::Paused,
            "stopped" => SandboxStatus::Stopped,
            "error" => SandboxStatus::Error,
            _ => return None,
        })
    }

    /// True when a VMM process should exist.
    pub fn has_vmm(self) -> bool {
        matches!(self, SandboxStatus::Running | SandboxStatus::Paused)
    }

    /// Whether the lifecycle allows going from `self` to `to`. Written out
    /// in full so adding a state forces a decision for every transition.
    pub fn can_become(self, to: SandboxStatus) -> bool {
        use SandboxStatus::*;
        match (self, to) {
            (Created, Running) | (Created, Paused) | (Created, Error) => true,
            (Running, Paused) | (Running, Stopped) | (Running, Error) => true,
            (Paused, Running) | (Paused, Stopped) | (Paused, Error) => true,
            (Stopped, Running) | (Stopped, Paused) | (Stopped, Error) => true,
            (Error, Running) | (Error, Paused) | (Error, Stopped) => true,
            (Created, Created) | (Created, Stopped) => false,
            (Running, Running) | (Running, Created) => false,
            (Paused, Paused) | (Paused, Created) => false,
            (Stopped, Stopped) | (Stopped, Created) => false,
            (Error, Error) | (Error, Created) => false,
        }
    }
}

/// Machine type for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `-M microvm`: minimal, fastest to boot.
    Microvm,
    /// `-M q35`: a full PC, for guests that need PCI.
    Q35,
}

/// Guest networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// User-mode NAT (QEMU slirp): outbound access, host port forwards.
    User,
    /// No network device.
    None,
}

/// A host port on 127.0.0.1 forwarded to a guest TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Host port (bound on 127.0.0.1 only).
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

/// How a sandbox was created; stored with it and with its snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Image name.
    pub image: String,
    /// VMM.
    pub backend: BackendKind,
    /// Acceleration, resolved at create time.
    pub accel: Accel,
    /// QEMU machine type.
    pub machine: Machine,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Root disk size in MiB.
    pub disk_size_mib: u64,
    /// Networking.
    pub network: NetworkMode,
    /// Port forwards.
    pub ports: Vec<PortForward>,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// The VMM that ran it last (its `check_installed` string), recorded
    /// at create and restore time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_version: Option<String>,
}

/// A random locally administered MAC in QEMU's 52:54:00 range.
pub fn random_mac() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// The guest hostname for a sandbox name: hostnames allow neither `_` nor
/// more than 63 characters, sandbox names do.
pub fn hostname_for(name: &str) -> String {
    let h: String = name.chars().map(|c| if c == '_' { '-' } else { c }).take(63).collect();
    h.trim_end_matches('-').to_string()
}

/// A fresh machine-id (32 lowercase hex digits).
pub fn random_machine_id() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::SandboxStatus::{self, *};

    #[test]
    fn hostnames_follow_the_hostname_rule() {
        assert_eq!(super::hostname_for("my_box"), "my-box");
        assert_eq!(super::hostname_for(&"a".repeat(64)).len(), 63);
        assert_eq!(super::hostname_for(&format!("{}_b", "a".repeat(62))), "a".repeat(62));
    }

    #[test]
    fn lifecycle_transitions() {
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert!(!Running.can_become(Running));
        assert!(!Stopped.can_become(Created));
        for s in [Created, Running, Paused, Stopped, Error] {
            assert_eq!(SandboxStatus::parse(s.as_str()), Some(s));
        }
    }
}
