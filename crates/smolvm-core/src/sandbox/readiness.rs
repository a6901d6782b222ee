//! Knowing a guest is up, and which snapshot its memory last matched.
//!
//! Readiness is the image's: guests with the smolvm agent are up when the
//! agent answers; an imported guest without one is up when its serial
//! console (`console.log`, appended across boots) prints its readiness
//! text after the launch.
//!
//! The memory base is the snapshot whose memory the running VMM's memory
//! equalled when it last started tracking changes (its last memory
//! snapshot or the snapshot it was restored from). It is what a backend's
//! delta memory file applies to. It is kept as `memory-base.json` in the
//! sandbox directory together with the VMM's process identity, so it is
//! void as soon as the VMM is another process (a reboot, a restart).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Progress, SandboxError};
use crate::agent;
use crate::backend::{AnyBackend, Backend};
use crate::image::{Image, Readiness};
use crate::process::ProcessId;

const CONSOLE_LOG: &str = "console.log";
const MEMORY_BASE: &str = "memory-base.json";

/// Where the console log ends now (output after it is the next boot's).
pub(crate) fn console_offset(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(CONSOLE_LOG)).map(|m| m.len()).unwrap_or(0)
}

/// Waits until the guest launched as `process` is up, by its image's
/// readiness; fails early when the VMM exits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_guest_ready(
    name: &str,
    dir: &Path,
    image: &Image,
    backend: &AnyBackend,
    process: &ProcessId,
    console_from: u64,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), SandboxError> {
    let exited = || SandboxError::Boot {
        name: name.to_string(),
        reason: format!("the VMM exited during boot; console: {}", crate::backend::log_tail(&dir.join(CONSOLE_LOG), 1500)),
    };
    match &image.ready {
        Readiness::Agent => {
            progress.step("Waiting for the guest agent");
            let ready = agent::wait_ready(&backend.agent_endpoint(dir), timeout, || if process.is_alive() { Ok(()) } else { Err(exited()) });
            match ready {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(SandboxError::Boot { name: name.to_string(), reason: e.to_string() }),
                Err(e) => Err(e),
            }
        }
        Readiness::Console(text) => {
            progress.step(&format!("Waiting for {text:?} on the guest console"));
            let deadline = Instant::now() + timeout;
            loop {
                if console_contains(&dir.join(CONSOLE_LOG), console_from, text) {
                    return Ok(());
                }
                if !process.is_alive() {
                    return Err(exited());
                }
                if Instant::now() >= deadline {
                    return Err(SandboxError::Boot {
                        name: name.to_string(),
                        reason: format!(
                            "the guest console did not print {text:?} within {timeout:?}; console: {}",
                            crate::backend::log_tail(&dir.join(CONSOLE_LOG), 1500)
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// True when `text` appears in `path` after byte `from`.
fn console_contains(path: &Path, from: u64, text: &str) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    // The marker shows up early; a bounded read keeps this cheap.
    if f.take(4 << 20).read_to_end(&mut buf).is_err() {
        return false;
    }
    buf.windows(text.len().max(1)).any(|w| w == text.as_bytes())
}

/// The snapshot a VMM's memory last matched (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MemoryBase {
    /// The snapshot.
    pub snapshot_id: String,
    /// The VMM process it holds for.
    pub process: ProcessId,
}

impl MemoryBase {
    fn path(dir: &Path) -> PathBuf {
        dir.join(MEMORY_BASE)
    }

    /// The base recorded for the VMM `process`, if any.
    pub(crate) fn read(dir: &Path, process: Option<ProcessId>) -> Option<String> {
        let text = std::fs::read(Self::path(dir)).ok()?;
        let base: MemoryBase = serde_json::from_slice(&text).ok()?;
        (Some(base.process) == process && process.is_some_and(|p| p.is_alive()) && crate::names::validate("snapshot_id", &base.snapshot_id).is_ok())
            .then_some(base.snapshot_id)
    }

    /// Records `snapshot_id` as the base of `process`.
    pub(crate) fn write(dir: &Path, snapshot_id: &str, process: ProcessId) {
        let base = MemoryBase { snapshot_id: snapshot_id.to_string(), process };
        let tmp = dir.join(format!(".{MEMORY_BASE}.tmp"));
        let ok = std::fs::write(&tmp, serde_json::to_vec(&base).unwrap_or_default()).and_then(|_| std::fs::rename(&tmp, Self::path(dir)));
        if let Err(e) = ok {
            tracing::debug!(error = %e, "could not record the memory base");
        }
    }

    /// Forgets the base (the VMM's change tracking is being consumed).
    pub(crate) fn clear(dir: &Path) {
        let _ = std::fs::remove_file(Self::path(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_text_is_found_only_after_the_offset() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(CONSOLE_LOG);
        std::fs::write(&p, "old boot: COUNT 5\n").unwrap();
        let from = console_offset(t.path());
        assert!(!console_contains(&p, from, "COUNT "));
        std::fs::write(&p, "old boot: COUNT 5\nnew: COUNT 1\n").unwrap();
        assert!(console_contains(&p, from, "COUNT "));
        assert!(!console_contains(&t.path().join("missing"), 0, "x"));
    }

    #[test]
    fn memory_base_holds_only_for_its_process() {
        let t = tempfile::tempdir().unwrap();
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        MemoryBase::write(t.path(), "snap-1", me);
        assert_eq!(MemoryBase::read(t.path(), Some(me)).as_deref(), Some("snap-1"));
        let other = ProcessId { pid: me.pid, start_time: me.start_time + 1 };
        assert_eq!(MemoryBase::read(t.path(), Some(other)), None);
        assert_eq!(MemoryBase::read(t.path(), None), None);
        MemoryBase::clear(t.path());
        assert_eq!(MemoryBase::read(t.path(), Some(me)), None);
    }
}
