//! Guest images (kernel + initramfs + root filesystem).
//!
//! An image is built once and never changed; sandboxes boot from it with a
//! copy-on-write overlay on top of its `rootfs.ext4`. It lives in
//! `<data_dir>/images/<name>/`:
//!
//! - `vmlinuz`: Debian's cloud kernel as a bzImage, for QEMU direct boot;
//! - `vmlinux`: the same kernel as an ELF, for Firecracker;
//! - `initramfs.cpio.gz`: busybox + virtio/vsock modules + `/init`, which
//!   mounts `/dev/vda` and switches to it;
//! - `rootfs.ext4`: raw, sparse ext4 whose `/sbin/init` is the smolvm agent;
//! - `image.json`: name, base, kernel version, creation time, sizes.
//!
//! Downloaded packages and unpacked kernels are cached in `<data_dir>/cache/`
//! so that rebuilding is quick and works offline once cached.

mod agent;
mod debian;
mod elf;
mod error;
mod import;
mod initramfs;
mod kernel;
mod meta;
mod packages;
mod rootfs;
mod util;

#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use time::OffsetDateTime;

pub use agent::{check_static_agent, find_agent_binary, AGENT_ENV};
pub use error::ImageError;
pub use import::ImportSpec;
pub use meta::FORMAT_VERSION;

/// Kernel arguments the initramfs relies on: the serial console, the root
/// disk it mounts, and an immediate reboot on panic (so a broken guest makes
/// the VMM exit instead of hanging). Backends append their own (for example
/// `tsc_early_khz=`, networking).
pub const KERNEL_CMDLINE_BASE: &str = "console=ttyS0 root=/dev/vda rw panic=-1 quiet";

const VMLINUZ: &str = "vmlinuz";
const VMLINUX: &str = "vmlinux";
const INITRAMFS: &str = "initramfs.cpio.gz";
const ROOTFS: &str = "rootfs.ext4";
const METADATA: &str = "image.json";
/// Every file a complete image directory has.
const IMAGE_FILES: [&str; 5] = [VMLINUZ, VMLINUX, INITRAMFS, ROOTFS, METADATA];
/// The files an imported image must have (the others are optional).
const IMPORTED_FILES: [&str; 3] = [VMLINUX, ROOTFS, METADATA];

/// What the root filesystem is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Base {
    /// Static busybox plus the agent: ~3 MB, builds in seconds, no root needed.
    Tiny,
    /// Debian bookworm minbase via debootstrap: apt works; needs root to build.
    Debian,
    /// Brought in with `smolvm image import`: any ELF kernel, optional
    /// initramfs and root filesystem, readiness of its own.
    Imported,
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Base::Tiny => "tiny",
            Base::Debian => "debian",
            Base::Imported => "imported",
        })
    }
}

impl FromStr for Base {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Base::Tiny),
            "debian" => Ok(Base::Debian),
            "imported" => Ok(Base::Imported),
            other => Err(ImageError::UnknownBase(other.chars().take(64).collect())),
        }
    }
}

/// How a sandbox booted from an image is known to be up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The smolvm agent answers (every built image).
    Agent,
    /// The guest has no agent; it is up once its serial console has
    /// printed this text.
    Console(String),
}

impl Readiness {
    /// True when the guest runs the smolvm agent.
    pub fn has_agent(&self) -> bool {
        matches!(self, Readiness::Agent)
    }
}

/// A built image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub base: Base,
    /// `<data_dir>/images/<name>`.
    pub dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub kernel_version: String,
    pub created_at: OffsetDateTime,
    /// Bytes the image occupies on disk (the sparse rootfs counts only its data).
    pub size_bytes: u64,
    /// How a booted guest is known to be up.
    pub ready: Readiness,
}

impl Image {
    /// bzImage for QEMU `-kernel`.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join(VMLINUZ)
    }
    /// Uncompressed ELF kernel for Firecracker.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }
    /// gzip'd cpio for QEMU `-initrd` / Firecracker `initrd_path`.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join(INITRAMFS)
    }
    /// Raw ext4 root filesystem; never write to it, use an overlay.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(ROOTFS)
    }
    /// See [`KERNEL_CMDLINE_BASE`].
    pub fn kernel_cmdline_base() -> &'static str {
        KERNEL_CMDLINE_BASE
    }
}

/// Checks an image name: `^[a-z0-9]([a-z0-9_-]{0,62}[a-z0-9])?$`. Names become
/// directory names and CLI arguments, so nothing else is allowed.
pub fn validate_name(name: &str) -> Result<(), ImageError> {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !b.is_empty()
        && b.len() <= 64
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| edge(c) || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

/// The images of one data directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    cache: PathBuf,
}

impl ImageStore {
    /// Images in `<data_dir>/images`, caches in `<data_dir>/cache`.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        let d = data_dir.as_ref();
        ImageStore {
            root: d.join("images"),
            cache: d.join("cache"),
        }
    }

    /// Uses `cache` for downloaded packages instead of `<data_dir>/cache`
    /// (lets several data dirs, e.g. tests, share one download).
    pub fn with_cache_dir(mut self, cache: impl Into<PathBuf>) -> Self {
        self.cache = cache.into();
        self
    }

    /// Keeps images in `dir` instead of `<data_dir>/images` (the data
    /// directory's `SMOLVM_IMAGE_DIR` setting; tests share one image).
    pub fn with_images_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = dir.into();
        self
    }

    /// `<data_dir>/images`.
    pub fn images_dir(&self) -> &Path {
        &self.root
    }

    /// Builds image `name` from `base` with `agent_bin` as its init. The build
    /// happens in `images/.tmp-<name>-<random>/`, which is renamed into place
    /// only when complete and removed on any failure. `progress` receives one
    /// line per step, for the user.
    pub fn build(
        &self,
        name: &str,
        base: Base,
        agent_bin: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Image, ImageError> {
        validate_name(name)?;
        let final_dir = self.root.join(name);
        if fs::symlink_metadata(&final_dir).is_ok() {
            return Err(ImageError::AlreadyExists { name: name.into() });
        }
        if base == Base::Imported {
            return Err(ImageError::UnknownBase(
                "imported (use 'smolvm image import' to bring in a kernel of your own)".into(),
            ));
        }
        if base == Base::Debian && !util::is_root() {
            return Err(ImageError::NeedsRoot {
                base,
                why: "debootstrap creates device nodes and root-owned files",
            });
        }
        check_static_agent(agent_bin)?;
        for d in [&self.root, &self.cache] {
            fs::create_dir_all(d).map_err(ImageError::io("create directory", d))?;
        }
        self.remove_stale_temp_dirs();
        let tmp = util::TempDir::create(
            self.root
                .join(format!(".tmp-{name}-{}", util::random_suffix())),
        )?;
        let dir = tmp.path();

        let kernel = kernel::prepare(&self.cache, progress)?;
        let busybox = packages::busybox(&self.cache, progress)?;
        for (from, to) in [(kernel.vmlinuz(), VMLINUZ), (kernel.vmlinux(), VMLINUX)] {
            let dest = dir.join(to);
            fs::copy(&from, &dest).map_err(ImageError::io("copy the kernel to", &dest))?;
            util::set_mode(&dest, 0o644)?;
        }

        let modules = kernel::guest_modules(&kernel)?;
        progress(&format!(
            "Building the initramfs ({} kernel modules)",
            modules.len()
        ));
        initramfs::build(&busybox, &modules, &dir.join(INITRAMFS))?;

        let staging = dir.join("rootfs.staging");
        util::mkdir(&staging, 0o755)?;
        let inputs = rootfs::Inputs {
            busybox: &busybox,
            agent: agent_bin,
            cache: &self.cache,
        };
        rootfs::build(base, &inputs, &staging, &dir.join(ROOTFS), progress)?;
        fs::remove_dir_all(&staging).map_err(ImageError::io("remove", &staging))?;

        let now = OffsetDateTime::now_utc();
        let created_at = now.replace_nanosecond(0).unwrap_or(now);
        let size = |f: &str| fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
        let mut sizes = meta::Sizes {
            vmlinuz: size(VMLINUZ),
            vmlinux: size(VMLINUX),
            initramfs: size(INITRAMFS),
            rootfs: size(ROOTFS),
            disk_usage: 0,
        };
        sizes.disk_usage = IMAGE_FILES
            .iter()
            .map(|f| util::disk_usage(&dir.join(f)))
            .sum();
        let m = meta::Meta {
            format: FORMAT_VERSION,
            name: name.to_string(),
            base: base.to_string(),
            kernel_version: kernel.version.clone(),
            created_at: meta::rfc3339(created_at),
            sizes,
            ready_console: None,
        };
        let json = serde_json::to_vec_pretty(&m).map_err(|e| ImageError::Metadata {
            path: dir.join(METADATA),
            reason: e.to_string(),
        })?;
        util::write_file(&dir.join(METADATA), &json, 0o644)?;

        progress("Syncing to disk");
        for f in IMAGE_FILES {
            util::fsync(&dir.join(f))?;
        }
        util::fsync(dir)?;
        publish(dir, &final_dir, name)?;
        tmp.keep();
        util::fsync(&self.root)?;
        self.get(name)
    }

    /// Removes `.tmp-*` build or delete dirs left by a process that was killed
    /// (a day old: no live build takes that long). Best effort.
    fn remove_stale_temp_dirs(&self) {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return;
        };
        let day = std::time::Duration::from_secs(24 * 3600);
        for e in rd.filter_map(Result::ok) {
            let stale = e.file_name().to_string_lossy().starts_with(".tmp-")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > day);
            if stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// The image called `name`.
    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(ImageError::NotFound { name: name.into() }),
        }
        let parsed = meta::read(&dir.join(METADATA), name)?;
        let mut size_bytes = 0;
        for f in IMAGE_FILES {
            let p = dir.join(f);
            let required = parsed.base != Base::Imported || IMPORTED_FILES.contains(&f);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => size_bytes += util::disk_usage(&p),
                Err(_) if !required => {}
                _ => {
                    return Err(ImageError::Metadata {
                        path: p,
                        reason: "missing or not a regular file".into(),
                    })
                }
            }
        }
        Ok(Image {
            name: name.to_string(),
            base: parsed.base,
            dir,
            kernel_version: parsed.kernel_version,
            created_at: parsed.created_at,
            size_bytes,
            ready: match parsed.ready_console {
                Some(text) => Readiness::Console(text),
                None => Readiness::Agent,
            },
        })
    }

    /// All valid images, sorted by name. Unreadable or damaged image
    /// directories are skipped with a warning rather than hiding the others.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read directory", &self.root)(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            match self.get(&n) {
                Ok(img) => out.push(img),
                Err(e) => tracing::warn!("skipping image '{n}': {e}"),
            }
        }
        Ok(out)
    }

    /// Deletes image `name`. The directory is first renamed away, so the image
    /// disappears at once and a half-deleted one is never visible. Whether a
    /// sandbox still uses the image is the caller's check.
    pub fn delete(&self, name: &str) -> Result<(), ImageError> {
        validate_name(name)?;
        let dir = self.root.join(name);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(ImageError::NotFound { name: name.into() }),
        }
        let doomed = self
            .root
            .join(format!(".tmp-delete-{name}-{}", util::random_suffix()));
        fs::rename(&dir, &doomed).map_err(ImageError::io("rename for deletion", &dir))?;
        fs::remove_dir_all(&doomed).map_err(ImageError::io("remove", &doomed))
    }
}

/// Renames the finished temp dir to its final name, never replacing an image
/// that a concurrent build published meanwhile.
fn publish(tmp: &Path, final_dir: &Path, name: &str) -> Result<(), ImageError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, tmp, CWD, final_dir, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
            Err(ImageError::AlreadyExists { name: name.into() })
        }
        // Filesystems without RENAME_NOREPLACE: a plain rename still refuses
        // to replace a non-empty directory.
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => fs::rename(tmp, final_dir)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => {
                    ImageError::AlreadyExists { name: name.into() }
                }
                _ => ImageError::io("rename into place", final_dir)(e),
            }),
        Err(e) => Err(ImageError::io("rename into place", final_dir)(e.into())),
    }
}
