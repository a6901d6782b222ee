//! Integrity of snapshot artifacts: every file a restore reads (the memory
//! file and each disk layer of the chain) is recorded in the manifest with
//! its size and BLAKE3 hash, and checked before a restore changes anything.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use crate::layers::Layers;

/// Size and hash of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Length in bytes.
    pub size: u64,
    /// BLAKE3 of the content, lowercase hex.
    pub blake3: String,
}

/// Hashes a regular file without following a symlink. Holes of a sparse
/// file (memory files are mostly holes) are hashed as the zeros they read
/// as, without reading them: the same hash, but no page cache filled with
/// zero pages (which costs more than the hashing on some hosts).
pub fn digest_file(path: &Path) -> io::Result<Digest> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    let size = meta.len();
    let mut hasher = blake3::Hasher::new();
    let zeros = vec![0u8; 1 << 16];
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    while pos < size {
        // The next data at or after `pos` (EOF: none; no SEEK_DATA: all data).
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            Err(rustix::io::Errno::NXIO) => size,
            Err(_) => pos,
        };
        let mut hole = data - pos;
        while hole > 0 {
            let n = hole.min(zeros.len() as u64) as usize;
            hasher.update(&zeros[..n]);
            hole -= n as u64;
        }
        if data >= size {
            break;
        }
        let end = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        file.seek(SeekFrom::Start(data))?;
        let mut left = end - data;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n])?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        pos = end;
    }
    Ok(Digest { size, blake3: hasher.finalize().to_hex().to_string() })
}

/// Digests for every layer of `chain`, reusing ones already recorded by
/// other manifests (sealed layers never change) and hashing the rest.
pub fn layer_digests(layers: &Layers, chain: &[String], known: &BTreeMap<String, Digest>) -> io::Result<BTreeMap<String, Digest>> {
    let mut out = BTreeMap::new();
    for id in chain {
        let digest = match known.get(id) {
            Some(d) => d.clone(),
            None => digest_file(&layers.path(id))?,
        };
        out.insert(id.clone(), digest);
    }
    Ok(out)
}

/// One artifact's check result.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactCheck {
    /// File path.
    pub path: String,
    /// "ok", "missing", "size_mismatch", "hash_mismatch", "unrecorded", "unreadable".
    pub status: String,
    /// Human detail.
    pub detail: String,
}

/// Checks every artifact of a snapshot; empty `problems` means intact.
pub fn verify(manifest: &Manifest, dir: &Path, layers: &Layers) -> Vec<ArtifactCheck> {
    let mut checks = Vec::new();
    if let Some(mem) = &manifest.memory_file {
        checks.push(check(&dir.join(mem), manifest.memory_digest.as_ref()));
    }
    if let Some(state) = &manifest.state_file {
        checks.push(check(&dir.join(state), manifest.state_digest.as_ref()));
    }
    for id in &manifest.disk_chain {
        checks.push(check(&layers.path(id), manifest.layer_digests.get(id)));
    }
    checks
}

fn check(path: &Path, expected: Option<&Digest>) -> ArtifactCheck {
    let shown = path.display().to_string();
    let result = |status: &str, detail: String| ArtifactCheck { path: shown.clone(), status: status.into(), detail };
    let Some(expected) = expected else {
        return result("unrecorded", "the manifest records no digest for it".into());
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(_) => return result("missing", "the file is missing".into()),
    };
    if !meta.file_type().is_file() {
        return result("unreadable", "not a regular file (a symlink or device is never followed)".into());
    }
    if meta.len() != expected.size {
        return result("size_mismatch", format!("{} bytes, expected {} (truncated or grown)", meta.len(), expected.size));
    }
    match digest_file(path) {
        Ok(d) if d.blake3 == expected.blake3 => result("ok", String::new()),
        Ok(_) => result("hash_mismatch", "content differs from what was saved (corrupted)".into()),
        Err(e) => result("unreadable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_hash_like_their_content() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(&[3u8; 5000], 4 << 20).unwrap();
        f.write_all_at(&[9u8; 10], (10 << 20) - 10).unwrap();
        let dense = dir.path().join("dense");
        std::fs::write(&dense, std::fs::read(&sparse).unwrap()).unwrap();
        let expected = blake3::hash(&std::fs::read(&dense).unwrap()).to_hex().to_string();
        assert_eq!(digest_file(&sparse).unwrap().blake3, expected);
        assert_eq!(digest_file(&dense).unwrap().blake3, expected);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(digest_file(&empty).unwrap().blake3, blake3::hash(b"").to_hex().to_string());
        let holes = dir.path().join("holes");
        std::fs::File::create(&holes).unwrap().set_len(3 << 20).unwrap();
        assert_eq!(digest_file(&holes).unwrap().blake3, blake3::hash(&vec![0u8; 3 << 20]).to_hex().to_string());
    }

    #[test]
    fn corruption_truncation_and_symlinks_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.bin");
        std::fs::write(&f, vec![7u8; 100_000]).unwrap();
        let d = digest_file(&f).unwrap();
        assert_eq!(check(&f, Some(&d)).status, "ok");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(&f, &bytes).unwrap();
        assert_eq!(check(&f, Some(&d)).status, "hash_mismatch");
        std::fs::write(&f, &bytes[..50]).unwrap();
        assert_eq!(check(&f, Some(&d)).status, "size_mismatch");
        std::fs::remove_file(&f).unwrap();
        assert_eq!(check(&f, Some(&d)).status, "missing");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(&target, &f).unwrap();
        assert_eq!(check(&f, Some(&d)).status, "unreadable");
        assert_eq!(check(&target, None).status, "unrecorded");
    }
}
