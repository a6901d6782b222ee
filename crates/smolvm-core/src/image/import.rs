//! `smolvm image import`: an image made of a kernel of the user's own (an
//! ELF vmlinux, as Firecracker boots it), an optional initramfs and an
//! optional root filesystem. Such a guest need not run the smolvm agent:
//! it can instead be declared up when its serial console prints a given
//! text (its [`Readiness`](super::Readiness)).

use std::fs;
use std::io::Read;
use std::path::Path;

use time::OffsetDateTime;

use super::{elf, meta, publish, util, validate_name, Base, Image, ImageError, ImageStore};
use super::{FORMAT_VERSION, IMAGE_FILES, INITRAMFS, METADATA, ROOTFS, VMLINUX};

/// Size of the empty disk an image without a root filesystem gets.
const EMPTY_DISK: u64 = 16 << 20;

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportSpec<'a> {
    /// An x86-64 ELF kernel (vmlinux).
    pub kernel: &'a Path,
    /// An initramfs for it.
    pub initramfs: Option<&'a Path>,
    /// A raw root filesystem image (else an empty 16 MiB disk).
    pub rootfs: Option<&'a Path>,
    /// The guest has no agent and is up once its console prints this.
    pub ready_console: Option<String>,
}

impl ImageStore {
    /// Imports image `name` from `spec` (published atomically, like a build).
    pub fn import(&self, name: &str, spec: &ImportSpec<'_>) -> Result<Image, ImageError> {
        validate_name(name)?;
        let final_dir = self.root.join(name);
        if fs::symlink_metadata(&final_dir).is_ok() {
            return Err(ImageError::AlreadyExists { name: name.into() });
        }
        if let Some(text) = &spec.ready_console {
            meta::valid_console_marker(text).map_err(|reason| ImageError::Kernel { path: spec.kernel.into(), reason })?;
        }
        check_kernel(spec.kernel)?;
        fs::create_dir_all(&self.root).map_err(ImageError::io("create directory", &self.root))?;
        let tmp = util::TempDir::create(self.root.join(format!(".tmp-{name}-{}", util::random_suffix())))?;
        let dir = tmp.path();
        let copy = |from: &Path, to: &str| -> Result<u64, ImageError> {
            let dest = dir.join(to);
            let n = fs::copy(from, &dest).map_err(ImageError::io("copy", from))?;
            util::set_mode(&dest, 0o644)?;
            Ok(n)
        };
        let vmlinux = copy(spec.kernel, VMLINUX)?;
        let initramfs = match spec.initramfs {
            Some(p) => copy(p, INITRAMFS)?,
            None => 0,
        };
        let rootfs = match spec.rootfs {
            Some(p) => copy(p, ROOTFS)?,
            None => {
                let dest = dir.join(ROOTFS);
                let f = fs::File::create(&dest).map_err(ImageError::io("create", &dest))?;
                f.set_len(EMPTY_DISK).map_err(ImageError::io("size", &dest))?;
                util::set_mode(&dest, 0o644)?;
                EMPTY_DISK
            }
        };
        let now = OffsetDateTime::now_utc();
        let created_at = now.replace_nanosecond(0).unwrap_or(now);
        let present: Vec<&str> = IMAGE_FILES.into_iter().filter(|f| dir.join(f).exists()).collect();
        let m = meta::Meta {
            format: FORMAT_VERSION,
            name: name.to_string(),
            base: Base::Imported.to_string(),
            kernel_version: "imported".into(),
            created_at: meta::rfc3339(created_at),
            sizes: meta::Sizes {
                vmlinuz: 0,
                vmlinux,
                initramfs,
                rootfs,
                disk_usage: present.iter().map(|f| util::disk_usage(&dir.join(f))).sum(),
            },
            ready_console: spec.ready_console.clone(),
        };
        let json = serde_json::to_vec_pretty(&m)
            .map_err(|e| ImageError::Metadata { path: dir.join(METADATA), reason: e.to_string() })?;
        util::write_file(&dir.join(METADATA), &json, 0o644)?;
        for f in IMAGE_FILES.into_iter().filter(|f| dir.join(f).exists()) {
            util::fsync(&dir.join(f))?;
        }
        util::fsync(dir)?;
        publish(dir, &final_dir, name)?;
        tmp.keep();
        util::fsync(&self.root)?;
        self.get(name)
    }
}

/// The kernel must be a 64-bit x86 ELF file.
fn check_kernel(path: &Path) -> Result<(), ImageError> {
    let mut head = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(64).read_to_end(&mut head))
        .map_err(ImageError::io("read", path))?;
    let bad = |reason: String| ImageError::Kernel { path: path.into(), reason };
    let h = elf::header(&head).map_err(|e| bad(format!("{e}; an imported kernel must be an uncompressed ELF vmlinux")))?;
    if h.machine != elf::EM_X86_64 {
        return Err(bad(format!("ELF machine {} is not x86-64", h.machine)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Readiness;

    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x12] = 62;
        e
    }

    #[test]
    fn import_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let kernel = t.path().join("k");
        fs::write(&kernel, tiny_elf()).unwrap();
        let store = ImageStore::new(t.path().join("data"));
        let spec = ImportSpec { kernel: &kernel, initramfs: None, rootfs: None, ready_console: Some("COUNT ".into()) };
        let img = store.import("counter", &spec).unwrap();
        assert_eq!(img.base, Base::Imported);
        assert_eq!(img.ready, Readiness::Console("COUNT ".into()));
        assert!(img.vmlinux().is_file() && img.rootfs().is_file() && !img.vmlinuz().exists());
        assert_eq!(store.get("counter").unwrap(), img);
        assert!(matches!(store.import("counter", &spec), Err(ImageError::AlreadyExists { .. })));
        let not_elf = t.path().join("bz");
        fs::write(&not_elf, b"MZ not an elf").unwrap();
        let bad = ImportSpec { kernel: &not_elf, ..spec.clone() };
        assert!(matches!(store.import("other", &bad), Err(ImageError::Kernel { .. })));
        let bad = ImportSpec { ready_console: Some("line\nbreak".into()), ..spec };
        assert!(store.import("other", &bad).is_err());
        assert!(store.images_dir().read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
    }
}
