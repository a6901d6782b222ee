//! Choosing hardware acceleration. `/dev/kvm` existing is not enough: on
//! PVM hosts it opens but cannot run ordinary guest kernels, so KVM counts
//! as usable only with the vmx/svm CPU flags and a read-write /dev/kvm.

use serde::{Deserialize, Serialize};

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// True when KVM can run ordinary guests here.
pub fn kvm_usable() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_virt && std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Resolves `auto`: returns the choice and, when falling back to TCG, a
/// one-line notice for the user.
pub fn resolve_auto() -> (Accel, Option<&'static str>) {
    if kvm_usable() {
        (Accel::Kvm, None)
    } else {
        (
            Accel::Tcg,
            Some("KVM is not usable on this host (no vmx/svm CPU flags or no read-write /dev/kvm); using TCG software emulation, which is slower"),
        )
    }
}

/// The host TSC frequency in kHz, passed to TCG guests so the kernel skips
/// TSC calibration (which can hang under TCG on `-M microvm`).
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}
