//! Which Firecracker we run, what its API offers, and whether it can load
//! a given snapshot.
//!
//! Firecracker versions its snapshot state file separately from its
//! releases (a semver "snapshot data format"). A binary loads a state file
//! whose format has the same major version and a minor version no newer
//! than its own; `firecracker --snapshot-version` prints its own format and
//! `firecracker --describe-snapshot FILE` the format of a file.

use std::path::Path;
use std::process::Command;

use crate::backend::BackendError;

/// Oldest release this backend drives (`track_dirty_pages` on
/// `/snapshot/load` and `network_overrides` need 1.13).
pub const MIN_VERSION: Version = Version(1, 13, 0);
/// First release with `vsock_override` on `/snapshot/load`.
pub const VSOCK_OVERRIDE_SINCE: Version = Version(1, 16, 0);

/// A `major.minor.patch` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    /// Finds the first `[v]X.Y.Z` in `text` (pre-release suffixes ignored).
    pub fn find_in(text: &str) -> Option<Version> {
        text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',').find_map(|word| {
            let w = word.strip_prefix('v').unwrap_or(word);
            let core = w.split(['-', '+']).next()?;
            let mut parts = core.split('.');
            let v = Version(parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
            parts.next().is_none().then_some(v)
        })
    }
}

/// What one Firecracker binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Release, e.g. 1.16.1.
    pub release: Version,
    /// Snapshot data format it writes, e.g. 10.0.0.
    pub snapshot_format: Version,
}

impl Installed {
    /// The string recorded with sandboxes and snapshots.
    pub fn describe(&self) -> String {
        format!("Firecracker v{} (snapshot format v{})", self.release, self.snapshot_format)
    }

    /// Whether this binary can load a state file of format `format`.
    pub fn can_load(&self, format: Version) -> bool {
        format.0 == self.snapshot_format.0 && format.1 <= self.snapshot_format.1
    }
}

fn run(bin: &Path, args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|source| BackendError::Spawn { program: bin.display().to_string(), source })?;
    if !out.status.success() {
        return Err(BackendError::Tool {
            tool: format!("{} {}", bin.display(), args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().chars().take(500).collect(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asks the binary for its release and snapshot format.
pub fn probe(bin: &Path) -> Result<Installed, BackendError> {
    let text = run(bin, &["--version"])?;
    let release = Version::find_in(&text).ok_or_else(|| BackendError::Tool {
        tool: format!("{} --version", bin.display()),
        stderr: format!("no version in its output {:?}", text.trim()),
    })?;
    if release < MIN_VERSION {
        return Err(BackendError::Unsupported(format!(
            "{} is Firecracker v{release}; smolvm needs v{MIN_VERSION} or newer",
            bin.display()
        )));
    }
    let fmt = run(bin, &["--snapshot-version"])?;
    let snapshot_format = Version::find_in(&fmt).ok_or_else(|| BackendError::Tool {
        tool: format!("{} --snapshot-version", bin.display()),
        stderr: format!("no version in its output {:?}", fmt.trim()),
    })?;
    Ok(Installed { release, snapshot_format })
}

/// The snapshot data format of a state file, as the binary reads it.
pub fn state_file_format(bin: &Path, state: &Path) -> Result<Version, BackendError> {
    let text = run(bin, &["--describe-snapshot", &state.display().to_string()])?;
    Version::find_in(&text).ok_or_else(|| BackendError::Tool {
        tool: format!("{} --describe-snapshot", bin.display()),
        stderr: format!("no version in its output {:?}", text.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_and_compared() {
        assert_eq!(Version::find_in("Firecracker v1.16.1\n\n"), Some(Version(1, 16, 1)));
        assert_eq!(Version::find_in("v10.0.0"), Some(Version(10, 0, 0)));
        assert_eq!(Version::find_in("Firecracker v1.17.0-dev"), Some(Version(1, 17, 0)));
        assert_eq!(Version::find_in("Firecracker v1.16.1 (snapshot format v10.0.0)"), Some(Version(1, 16, 1)));
        assert_eq!(Version::find_in("no version here 1.2"), None);
        assert!(Version(1, 12, 9) < MIN_VERSION && Version(1, 16, 0) >= VSOCK_OVERRIDE_SINCE);
        let fc = Installed { release: Version(1, 16, 1), snapshot_format: Version(10, 2, 0) };
        assert!(fc.can_load(Version(10, 0, 0)) && fc.can_load(Version(10, 2, 0)));
        assert!(!fc.can_load(Version(10, 3, 0)) && !fc.can_load(Version(9, 0, 0)) && !fc.can_load(Version(11, 0, 0)));
        assert_eq!(fc.describe(), "Firecracker v1.16.1 (snapshot format v10.2.0)");
    }
}
