//! Disk layers: qcow2 files in `<data>/layers/`, each an overlay on the
//! previous one (the first on the image's root filesystem).
//!
//! A sandbox runs on the top layer of its chain. A snapshot seals that top
//! layer (the VM switches to a fresh overlay on it) and records the chain,
//! so a snapshot costs what changed since the last one, never a disk copy.
//! Sealed layers are immutable and shared by every sandbox and snapshot
//! whose chain includes them; a layer no chain references is garbage.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The layer directory.
pub struct Layers {
    dir: PathBuf,
}

impl Layers {
    /// Layers under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Layers { dir }
    }

    /// A fresh, unique layer id.
    pub fn new_id() -> String {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        format!("l-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
    }

    /// True for ids this module generates; anything else (from a manifest
    /// on disk, say) is refused so it can never name a path elsewhere.
    pub fn is_valid_id(id: &str) -> bool {
        id.len() == 18 && id.starts_with("l-") && id[2..].bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    }

    /// The file of layer `id` (which must be valid).
    pub fn path(&self, id: &str) -> PathBuf {
        debug_assert!(Self::is_valid_id(id));
        self.dir.join(format!("{id}.qcow2"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes layer files no chain in `referenced` names. The caller holds
    /// the layers lock, so no create/snapshot is adding one meanwhile.
    pub fn collect_garbage(&self, referenced: &HashSet<String>) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return removed };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".qcow2") else { continue };
            if Self::is_valid_id(id) && !referenced.contains(id) && std::fs::remove_file(entry.path()).is_ok() {
                removed.push(id.to_string());
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::Layers;

    #[test]
    fn ids_are_unique_and_validated() {
        let a = Layers::new_id();
        assert!(Layers::is_valid_id(&a));
        assert_ne!(a, Layers::new_id());
        for bad in ["", "l-", "l-../../etc/passw", "l-0123456789ABCDEF", "x-0123456789abcdef", "l-0123456789abcdef0"] {
            assert!(!Layers::is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn garbage_collection_keeps_referenced_layers() {
        let dir = tempfile::tempdir().unwrap();
        let layers = Layers::new(dir.path().to_path_buf());
        let (keep, drop) = (Layers::new_id(), Layers::new_id());
        for id in [&keep, &drop] {
            std::fs::write(layers.path(id), b"x").unwrap();
        }
        std::fs::write(dir.path().join("other.txt"), b"x").unwrap();
        let removed = layers.collect_garbage(&[keep.clone()].into_iter().collect());
        assert_eq!(removed, vec![drop.clone()]);
        assert!(layers.path(&keep).exists() && !layers.path(&drop).exists());
        assert!(dir.path().join("other.txt").exists());
    }
}
