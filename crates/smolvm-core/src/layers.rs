//! Disk layers: files in `<data>/layers/`. For QEMU each is a qcow2
//! overlay on the previous one (the first on the image's root
//! filesystem); for Firecracker each is a complete raw ext4 file, cloned
//! by reflink or as a sparse copy from the previous one. A layer's
//! extension says which (`BackendKind::layer_extension`).
//!
//! A sandbox runs on the top layer of its chain. A snapshot seals that top
//! layer (the VM switches to a fresh overlay on it) and records the chain,
//! so a snapshot costs what changed since the last one, never a disk copy.
//! Sealed layers are immutable and shared by every sandbox and snapshot
//! whose chain includes them; a layer no chain references is garbage.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Extensions of every layer format.
const EXTENSIONS: [&str; 2] = ["qcow2", "raw"];

/// The layer directory.
pub struct Layers {
    dir: PathBuf,
    /// Extension of layers created through this handle.
    ext: &'static str,
}

impl Layers {
    /// Layers under `dir`; new ones are qcow2.
    pub fn new(dir: PathBuf) -> Self {
        Layers { dir, ext: EXTENSIONS[0] }
    }

    /// Layers under `dir`; new ones get extension `ext` (one of the known
    /// layer formats).
    pub fn with_extension(dir: PathBuf, ext: &'static str) -> Self {
        debug_assert!(EXTENSIONS.contains(&ext));
        Layers { dir, ext }
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

    /// The file of layer `id` (which must be valid): the existing file of
    /// that id whatever its format, else where a new one of this handle's
    /// format goes.
    pub fn path(&self, id: &str) -> PathBuf {
        debug_assert!(Self::is_valid_id(id));
        let own = self.dir.join(format!("{id}.{}", self.ext));
        if own.exists() {
            return own;
        }
        EXTENSIONS
            .iter()
            .map(|ext| self.dir.join(format!("{id}.{ext}")))
            .find(|p| p.exists())
            .unwrap_or(own)
    }

    /// The layer id a file name in the layer directory stands for (any
    /// layer format), if it is one.
    pub fn id_of_file(name: &str) -> Option<&str> {
        EXTENSIONS
            .iter()
            .find_map(|ext| name.strip_suffix(ext).and_then(|n| n.strip_suffix('.')))
            .filter(|id| Self::is_valid_id(id))
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
            let Some(id) = Self::id_of_file(&name) else { continue };
            if !referenced.contains(id) && std::fs::remove_file(entry.path()).is_ok() {
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

    #[test]
    fn raw_layers_are_found_and_collected_too() {
        let dir = tempfile::tempdir().unwrap();
        let raw = Layers::with_extension(dir.path().to_path_buf(), "raw");
        let (keep, drop) = (Layers::new_id(), Layers::new_id());
        assert!(raw.path(&keep).to_string_lossy().ends_with(".raw"));
        for id in [&keep, &drop] {
            std::fs::write(raw.path(id), b"x").unwrap();
        }
        // A handle for another format still finds existing raw layers.
        let any = Layers::new(dir.path().to_path_buf());
        assert_eq!(any.path(&keep), raw.path(&keep));
        assert_eq!(any.collect_garbage(&[keep.clone()].into_iter().collect()), vec![drop.clone()]);
        assert!(raw.path(&keep).exists() && !raw.path(&drop).exists());
    }
}
