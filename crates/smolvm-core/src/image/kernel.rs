//! The guest kernel: Debian's cloud kernel package unpacked into the cache,
//! the uncompressed `vmlinux` Firecracker needs, and the kernel modules the
//! initramfs loads (with their dependencies, in load order).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::util::{self, run};
use super::{elf, packages, ImageError};

/// Debian's metapackage that always points at the current cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Modules the guest needs: virtio transports (MMIO for microvm/Firecracker,
/// PCI for q35), the root disk, network, console ports, vsock and entropy.
/// ext4 and the 8250 serial console are built into Debian's cloud kernel.
pub(crate) const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
];

/// Start of an LZ4 legacy frame (the format the kernel's LZ4 decompressor reads).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// An unpacked kernel package in the cache.
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// Kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub version: String,
    /// The cache dir holding the unpacked package (`<cache>/kernel-<version>`).
    pub dir: PathBuf,
}

impl Kernel {
    pub(crate) fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.version))
    }
    /// Our extraction of the bzImage payload, cached beside the package.
    pub(crate) fn vmlinux(&self) -> PathBuf {
        self.dir.join("smolvm-vmlinux")
    }
    pub(crate) fn modules_dir(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.version)
    }
}

/// Resolves, downloads (once) and unpacks (once) the current cloud kernel,
/// and extracts its vmlinux (once).
pub(crate) fn prepare(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Kernel, ImageError> {
    progress("Resolving the kernel package");
    let package = packages::resolve_metapackage(KERNEL_METAPACKAGE, "linux-image-")?;
    let version = package.trim_start_matches("linux-image-").to_string();
    let dir = packages::fetch_and_extract(cache, &package, &format!("kernel-{version}"), progress)?;
    let kernel = Kernel { version, dir };
    if !kernel.vmlinuz().is_file() {
        return Err(ImageError::Kernel {
            path: kernel.vmlinuz(),
            reason: format!(
                "package {package} has no bzImage there; delete {} and retry",
                kernel.dir.display()
            ),
        });
    }
    if !kernel.vmlinux().is_file() {
        progress("Extracting vmlinux from the bzImage");
        extract_vmlinux(&kernel.vmlinuz(), &kernel.vmlinux())?;
    }
    Ok(kernel)
}

/// Where an LZ4 payload may start in a bzImage, best guess first: the
/// boot-protocol header's payload_offset (exact, with its length, whose last
/// 4 bytes are the uncompressed size), then every raw magic match.
pub(crate) fn lz4_candidates(bz: &[u8]) -> Vec<(usize, Option<usize>)> {
    let mut out = Vec::new();
    if bz.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        let setup_sects = match bz.get(0x1f1) {
            Some(0) | None => 4,
            Some(&n) => usize::from(n),
        };
        let word = |o: usize| {
            bz.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if let (Some(off), Some(len)) = (word(0x248), word(0x24c)) {
            let start = (setup_sects + 1) * 512 + off as usize;
            if bz.get(start..start + 4) == Some(LZ4_LEGACY_MAGIC.as_slice()) {
                out.push((start, Some(len as usize)));
            }
        }
    }
    let mut pos = 0;
    while let Some(i) = bz[pos..].windows(4).position(|w| w == LZ4_LEGACY_MAGIC) {
        let at = pos + i;
        if !out.iter().any(|&(s, _)| s == at) {
            out.push((at, None));
        }
        pos = at + 1;
    }
    out
}

/// Decompresses the kernel inside `vmlinuz` to `dest` with `lz4 -dc` and
/// checks that the result is a whole x86-64 ELF. Debian ships no vmlinux;
/// Firecracker cannot boot a bzImage.
pub(crate) fn extract_vmlinux(vmlinuz: &Path, dest: &Path) -> Result<(), ImageError> {
    let bz = fs::read(vmlinuz).map_err(ImageError::io("read", vmlinuz))?;
    let candidates = lz4_candidates(&bz);
    if candidates.is_empty() {
        return Err(ImageError::Kernel {
            path: vmlinuz.to_path_buf(),
            reason: "no LZ4 payload (magic 02 21 4C 18) found; only LZ4-compressed kernels are supported".into(),
        });
    }
    let suffix = util::random_suffix();
    let payload = dest.with_extension(format!("payload-{suffix}"));
    let out_tmp = dest.with_extension(format!("tmp-{suffix}"));
    let mut last_err = String::new();
    for (start, len) in candidates.into_iter().take(4) {
        let (body, expected) = match len {
            Some(l) if l >= 8 && start + l <= bz.len() => {
                let trailer = &bz[start + l - 4..start + l];
                let size = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
                (&bz[start..start + l - 4], Some(u64::from(size)))
            }
            _ => (&bz[start..], None),
        };
        util::write_file(&payload, body, 0o600)?;
        let result = decompress_checked(&payload, &out_tmp, expected);
        let _ = fs::remove_file(&payload);
        match result {
            Ok(()) => {
                return fs::rename(&out_tmp, dest)
                    .map_err(ImageError::io("rename into place", dest));
            }
            Err(e) => {
                let _ = fs::remove_file(&out_tmp);
                last_err = format!("payload at offset {start}: {e}");
            }
        }
    }
    Err(ImageError::Kernel {
        path: vmlinuz.to_path_buf(),
        reason: format!("could not extract a vmlinux ELF ({last_err})"),
    })
}

/// Runs `lz4 -dc payload > out` and validates `out`. Without a known size,
/// lz4 complains about the bytes after the frame (the rest of the bzImage),
/// so its exit status is ignored and the ELF's completeness decides.
fn decompress_checked(payload: &Path, out: &Path, expected: Option<u64>) -> Result<(), String> {
    let file = fs::File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let mut cmd = Command::new("lz4");
    cmd.arg("-dc").arg(payload).stdout(Stdio::from(file));
    let res = util::spawn_output(&mut cmd, "install the lz4 package").map_err(|e| e.to_string())?;
    if expected.is_some() && !res.status.success() {
        return Err(util::command_failed(&cmd, &res, "").to_string());
    }
    let size = fs::metadata(out).map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; 64];
    fs::File::open(out)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| format!("output too short: {e}"))?;
    let h = elf::header(&head)?;
    if h.machine != elf::EM_X86_64 {
        return Err(format!("ELF machine {} is not x86-64", h.machine));
    }
    if h.sections_end > size {
        return Err(format!(
            "ELF truncated ({size} bytes, sections end at {})",
            h.sections_end
        ));
    }
    if let Some(want) = expected {
        if want != size {
            return Err(format!("decompressed {size} bytes, header says {want}"));
        }
    }
    Ok(())
}

/// Normalises a module name the way the kernel does (`-` and `_` are equal).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// Orders `wanted` plus all their dependencies so that every module comes
/// after everything it depends on (depth-first, dependencies first), each once.
pub(crate) fn resolve_order(
    wanted: &[String],
    deps_of: &mut dyn FnMut(&str) -> Result<Vec<String>, ImageError>,
) -> Result<Vec<String>, ImageError> {
    fn visit(
        name: &str,
        deps_of: &mut dyn FnMut(&str) -> Result<Vec<String>, ImageError>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            return Err(ImageError::Kernel {
                path: PathBuf::from(name),
                reason: format!("module dependency cycle: {} -> {name}", stack.join(" -> ")),
            });
        }
        stack.push(name.to_string());
        for dep in deps_of(name)? {
            visit(&norm(&dep), deps_of, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
    let (mut done, mut stack, mut order) = (HashSet::new(), Vec::new(), Vec::new());
    for w in wanted {
        visit(&norm(w), deps_of, &mut done, &mut stack, &mut order)?;
    }
    Ok(order)
}

/// A kernel module ready for the initramfs (decompressed).
pub(crate) struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst` / `.ko.gz`.
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some(("xz", "install the xz-utils package"))
    } else if name.ends_with(".ko.zst") {
        Some(("zstd", "install the zstd package"))
    } else if name.ends_with(".ko.gz") {
        Some(("gzip", "install the gzip package"))
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(ImageError::io("read", path)),
        Some((prog, hint)) => {
            let mut cmd = Command::new(prog);
            cmd.arg("-dc").arg(path);
            Ok(run(&mut cmd, hint)?.stdout)
        }
    }
}

/// Module name -> file, for every module the package ships.
fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>, ImageError> {
    let mut index = HashMap::new();
    let kdir = dir.join("kernel");
    util::walk(&kdir, &mut |rel, meta| {
        if meta.is_file() {
            let file = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(pos) = file.find(".ko") {
                let ext = &file[pos..];
                if [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].contains(&ext) {
                    index.insert(norm(&file[..pos]), kdir.join(rel));
                }
            }
        }
        Ok(())
    })?;
    Ok(index)
}

/// Names of modules built into the kernel (from `modules.builtin`).
fn builtin_modules(dir: &Path) -> Result<HashSet<String>, ImageError> {
    let path = dir.join("modules.builtin");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ImageError::io("read", &path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| norm(f.trim_end_matches(".ko")))
        .collect())
}

/// The guest modules and their dependencies, in load order. Dependencies come
/// from each module's own `.modinfo` (Debian's package ships no modules.dep).
pub(crate) fn guest_modules(kernel: &Kernel) -> Result<Vec<Module>, ImageError> {
    let dir = kernel.modules_dir();
    let index = index_modules(&dir)?;
    let builtin = builtin_modules(&dir)?;
    let mut wanted = Vec::new();
    for m in GUEST_MODULES {
        let m = norm(m);
        if index.contains_key(&m) {
            wanted.push(m);
        } else if !builtin.contains(&m) {
            return Err(ImageError::ModuleMissing { module: m, dir });
        }
    }
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    let order = resolve_order(&wanted, &mut |name| {
        let path = index.get(name).ok_or_else(|| ImageError::ModuleMissing {
            module: name.to_string(),
            dir: dir.clone(),
        })?;
        let bytes = read_module(path)?;
        let deps = elf::module_depends(&bytes).map_err(|reason| ImageError::Kernel {
            path: path.clone(),
            reason,
        })?;
        data.insert(name.to_string(), bytes);
        Ok(deps.into_iter().filter(|d| !builtin.contains(d)).collect())
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let data = data.remove(&name).unwrap_or_default();
            Module { name, data }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(graph: &[(&str, &[&str])], wanted: &[&str]) -> Result<Vec<String>, ImageError> {
        let g: HashMap<String, Vec<String>> = graph
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        let wanted: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
        resolve_order(&wanted, &mut |n| Ok(g.get(n).cloned().unwrap_or_default()))
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let graph: &[(&str, &[&str])] = &[
            ("virtio", &["virtio_ring"]),
            (
                "virtio_pci",
                &["virtio_ring", "virtio_pci_modern_dev", "virtio"],
            ),
            ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ("net_failover", &["failover"]),
            (
                "vmw_vsock_virtio_transport",
                &["virtio", "vmw_vsock_virtio_transport_common", "vsock"],
            ),
            ("vmw_vsock_virtio_transport_common", &["vsock"]),
        ];
        let got = order(
            graph,
            &["virtio_pci", "virtio_net", "vmw_vsock_virtio_transport"],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
    }

    #[test]
    fn dashes_are_underscores_and_cycles_fail() {
        let got = order(&[("virtio_rng", &["rng-core"])], &["virtio-rng"]).unwrap();
        assert_eq!(got, ["rng_core", "virtio_rng"]);
        let err = order(&[("a", &["b"]), ("b", &["a"])], &["a"]).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn lz4_magic_search() {
        let mut bz = vec![0u8; 3000];
        bz[1234..1238].copy_from_slice(&LZ4_LEGACY_MAGIC);
        bz[2000..2004].copy_from_slice(&LZ4_LEGACY_MAGIC);
        assert_eq!(lz4_candidates(&bz), vec![(1234, None), (2000, None)]);
        assert!(lz4_candidates(&[0u8; 100]).is_empty());
        // A boot-protocol header pointing at the second match puts it first, with its length.
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x1f1] = 2; // setup sectors: payload base at 3 * 512 = 1536
        bz[0x248..0x24c].copy_from_slice(&(2000u32 - 1536).to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&500u32.to_le_bytes());
        assert_eq!(lz4_candidates(&bz), vec![(2000, Some(500)), (1234, None)]);
    }
}
