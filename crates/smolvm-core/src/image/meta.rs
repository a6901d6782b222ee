//! `image.json`: what a built image is. Read back as untrusted input (the data
//! dir may have been edited or damaged): the size is capped, the name must
//! match the directory, and no path is ever taken from it.

use std::fs;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{Base, ImageError};

/// Bumped when the layout of an image directory changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// image.json is a few hundred bytes; anything this large is not ours.
const MAX_BYTES: u64 = 64 * 1024;

/// Apparent sizes of the image files in bytes, recorded for information.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub vmlinuz: u64,
    pub vmlinux: u64,
    pub initramfs: u64,
    /// The ext4 filesystem size (the file is sparse).
    pub rootfs: u64,
    /// What the whole image directory occupies on disk.
    pub disk_usage: u64,
}

/// The on-disk form of image.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: u32,
    pub name: String,
    pub base: String,
    pub kernel_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub sizes: Sizes,
    /// Imported images without an agent: the console text that says the
    /// guest is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_console: Option<String>,
}

/// Validated contents of image.json.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub base: Base,
    pub kernel_version: String,
    pub created_at: OffsetDateTime,
    pub ready_console: Option<String>,
}

/// Formats a timestamp as RFC 3339 in UTC.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// A kernel release string as Debian makes them; it is shown to users and
/// used in paths, so nothing else is accepted.
fn valid_kernel_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        && !v.starts_with('.')
}

/// A console readiness marker: 1-64 printable ASCII characters.
pub(crate) fn valid_console_marker(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(format!("the console readiness text {text:?} must be 1-64 printable ASCII characters"));
    }
    Ok(())
}

/// Reads and validates `path`, which belongs to the image directory `name`.
pub(crate) fn read(path: &Path, name: &str) -> Result<Parsed, ImageError> {
    let bad = |reason: String| ImageError::Metadata {
        path: path.to_path_buf(),
        reason,
    };
    let meta = fs::symlink_metadata(path).map_err(|e| bad(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut buf))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    if buf.len() as u64 > MAX_BYTES {
        return Err(bad(format!("larger than {MAX_BYTES} bytes")));
    }
    let m: Meta = serde_json::from_slice(&buf).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if m.format > FORMAT_VERSION {
        return Err(bad(format!(
            "format {} is newer than this smolvm understands ({FORMAT_VERSION}); upgrade smolvm",
            m.format
        )));
    }
    if m.format == 0 {
        return Err(bad("format 0 is not valid".into()));
    }
    if m.name != name {
        return Err(bad(format!(
            "it names image '{}' but lives in directory '{name}'",
            m.name
        )));
    }
    let base = m.base.parse::<Base>().map_err(|e| bad(e.to_string()))?;
    if !valid_kernel_version(&m.kernel_version) {
        return Err(bad("kernel_version is not a kernel release string".into()));
    }
    let created_at = OffsetDateTime::parse(&m.created_at, &Rfc3339)
        .map_err(|e| bad(format!("created_at is not RFC 3339: {e}")))?;
    if let Some(text) = &m.ready_console {
        valid_console_marker(text).map_err(bad)?;
    }
    Ok(Parsed {
        base,
        kernel_version: m.kernel_version,
        created_at,
        ready_console: m.ready_console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("image.json");
        fs::write(&p, body).unwrap();
        p
    }

    fn meta_json(name: &str, kv: &str) -> String {
        format!(
            r#"{{"format":1,"name":"{name}","base":"tiny","kernel_version":"{kv}",
            "created_at":"2026-01-02T03:04:05Z","sizes":{{"vmlinuz":1,"vmlinux":2,"initramfs":3,"rootfs":4,"disk_usage":5}}}}"#
        )
    }

    #[test]
    fn accepts_valid_and_rejects_tampered() {
        let t = tempfile::tempdir().unwrap();
        let p = write(t.path(), &meta_json("a", "6.1.0-57-cloud-amd64"));
        let parsed = read(&p, "a").unwrap();
        assert_eq!(parsed.base, Base::Tiny);
        assert_eq!(rfc3339(parsed.created_at), "2026-01-02T03:04:05Z");
        assert!(read(&p, "b")
            .unwrap_err()
            .to_string()
            .contains("lives in directory"));
        let p = write(t.path(), &meta_json("a", "../../etc"));
        assert!(read(&p, "a").is_err());
        let p = write(t.path(), &"x".repeat(70_000));
        assert!(read(&p, "a")
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        let p = write(
            t.path(),
            &meta_json("a", "6.1").replace("\"format\":1", "\"format\":9"),
        );
        assert!(read(&p, "a")
            .unwrap_err()
            .to_string()
            .contains("upgrade smolvm"));
    }
}
