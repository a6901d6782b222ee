//! Locating the guest agent binary. It becomes the guest's /sbin/init, so it
//! must be static: the `tiny` image has no dynamic loader or libc.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{elf, ImageError};

/// Environment variable that names the agent binary explicitly.
pub const AGENT_ENV: &str = "SMOLVM_AGENT_BIN";
const AGENT_NAME: &str = "smolvm-agent";
/// Program headers sit at the start of any sane executable; this is plenty.
const HEAD_BYTES: u64 = 64 * 1024;

/// Checks that `path` is a static x86-64 ELF executable (no PT_INTERP).
pub fn check_static_agent(path: &Path) -> Result<(), ImageError> {
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head))
        .map_err(|e| ImageError::Agent {
            detail: format!("cannot read {}: {e}", path.display()),
        })?;
    let bad = |why: String| ImageError::Agent {
        detail: format!("{} {why}", path.display()),
    };
    let h = elf::header(&head).map_err(|e| bad(format!("is not usable: {e}")))?;
    if h.machine != elf::EM_X86_64 {
        return Err(bad(format!(
            "is not an x86-64 binary (ELF machine {})",
            h.machine
        )));
    }
    match elf::has_interp(&head) {
        Ok(false) => Ok(()),
        Ok(true) => Err(bad(
            "is dynamically linked (it has an ELF interpreter)".into()
        )),
        Err(e) => Err(bad(format!("is not usable: {e}"))),
    }
}

/// Candidate locations, in order: $SMOLVM_AGENT_BIN alone if set; else next
/// to the running executable, then the static-target build dirs of a cargo
/// workspace (`target/x86_64-unknown-linux-gnu/{release,debug}`).
fn candidates(env: Option<PathBuf>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = env {
        return vec![p];
    }
    let Some(dir) = exe.and_then(Path::parent) else {
        return Vec::new();
    };
    let mut out = vec![dir.join(AGENT_NAME)];
    if let Some(up) = dir.parent() {
        for profile in ["release", "debug"] {
            out.push(
                up.join("x86_64-unknown-linux-gnu")
                    .join(profile)
                    .join(AGENT_NAME),
            );
        }
    }
    out
}

/// Finds a static smolvm-agent binary: `$SMOLVM_AGENT_BIN`, else
/// `smolvm-agent` next to the current executable, else
/// `<exe dir>/../x86_64-unknown-linux-gnu/{release,debug}/smolvm-agent`.
/// A dynamically linked candidate (a plain `cargo build` makes one next to
/// the CLI) is skipped in favour of the next one.
pub fn find_agent_binary() -> Result<PathBuf, ImageError> {
    let env = std::env::var_os(AGENT_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let from_env = env.is_some();
    let exe = std::env::current_exe().ok();
    let mut notes = Vec::new();
    for c in candidates(env, exe.as_deref()) {
        if !c.is_file() {
            notes.push(format!("{} does not exist", c.display()));
            continue;
        }
        match check_static_agent(&c) {
            Ok(()) => return Ok(c),
            Err(ImageError::Agent { detail }) => notes.push(detail),
            Err(e) => notes.push(e.to_string()),
        }
    }
    let detail = if notes.is_empty() {
        "cannot locate the running executable to search next to it".to_string()
    } else if from_env {
        format!("{AGENT_ENV}: {}", notes.join("; "))
    } else {
        notes.join("; ")
    };
    Err(ImageError::Agent { detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_order() {
        let exe = Path::new("/w/target/debug/smolvm");
        assert_eq!(
            candidates(None, Some(exe)),
            [
                PathBuf::from("/w/target/debug/smolvm-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release/smolvm-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/debug/smolvm-agent"),
            ]
        );
        assert_eq!(
            candidates(Some("/a".into()), Some(exe)),
            [PathBuf::from("/a")]
        );
    }

    #[test]
    fn dynamic_binary_is_refused() {
        let err = check_static_agent(Path::new("/bin/sh")).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
        let err = check_static_agent(Path::new("/etc/hostname")).unwrap_err();
        assert!(err.to_string().contains("not usable"), "{err}");
    }
}
