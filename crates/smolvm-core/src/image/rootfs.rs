//! Root filesystems: a directory tree is populated (busybox for `tiny`, a
//! cached debootstrap for `debian`), then turned into a raw ext4 image with
//! `mkfs.ext4 -d`, which needs neither root nor a mount.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::{self, mkdir, run, symlink, write_file};
use super::{Base, ImageError};

/// Where the agent lives in every image; /sbin/init points at it.
pub(crate) const AGENT_PATH: &str = "usr/local/bin/smolvm-agent";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// `tiny` gets a fixed, sparse 1 GiB filesystem; the guest can grow it online.
const TINY_SIZE: u64 = GIB;
/// `debian` gets its content plus this much free space, and at least DEBIAN_MIN.
const DEBIAN_FREE: u64 = GIB;
const DEBIAN_MIN: u64 = 2 * GIB;

/// Inputs every base needs.
pub(crate) struct Inputs<'a> {
    pub busybox: &'a Path,
    pub agent: &'a Path,
    pub cache: &'a Path,
}

/// Populates `staging` for `base` and writes the ext4 image `dest`.
pub(crate) fn build(
    base: Base,
    inputs: &Inputs<'_>,
    staging: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let size = match base {
        Base::Tiny => {
            populate_tiny(inputs, staging, progress)?;
            TINY_SIZE
        }
        Base::Debian => {
            super::debian::populate(inputs, staging, progress)?;
            (content_size(staging)? + DEBIAN_FREE)
                .max(DEBIAN_MIN)
                .div_ceil(MIB)
                * MIB
        }
        Base::Imported => return Err(ImageError::UnknownBase("imported images are not built".into())),
    };
    progress(&format!(
        "Creating the ext4 root filesystem ({} MiB)",
        size / MIB
    ));
    mkfs(staging, dest, size)?;
    if base == Base::Tiny {
        // Everything in `tiny` belongs to root, even when built by a user.
        chown_root_in_image(staging, dest)?;
    }
    Ok(())
}

/// Files, users and symlinks both bases share.
pub(super) fn common_setup(staging: &Path, agent: &Path) -> Result<(), ImageError> {
    for (d, mode) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("usr/local/bin", 0o755),
        ("var/tmp", 0o1777),
    ] {
        mkdir(&contained(staging, d)?, mode)?;
    }
    let agent_dest = contained(staging, AGENT_PATH)?;
    remove_if_exists(&agent_dest)?;
    fs::copy(agent, &agent_dest).map_err(ImageError::io("copy the agent to", &agent_dest))?;
    util::set_mode(&agent_dest, 0o755)?;
    let sbin = contained(staging, "sbin")?;
    if !sbin.exists() {
        mkdir(&sbin, 0o755)?;
    }
    // Replace whatever init the base had (a symlink or a file).
    symlink(
        Path::new("/").join(AGENT_PATH),
        &contained(staging, "sbin/init")?,
    )?;
    let etc = |f: &str| contained(staging, &format!("etc/{f}"));
    // Remove first: writing through a base's symlink could land outside the tree.
    let put = |f: &str, data: &[u8], mode: u32| -> Result<(), ImageError> {
        let p = etc(f)?;
        remove_if_exists(&p)?;
        write_file(&p, data, mode)
    };
    put("hostname", b"smolvm\n", 0o644)?;
    put(
        "hosts",
        b"127.0.0.1\tlocalhost\n127.0.1.1\tsmolvm\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    put("resolv.conf", b"# written by smolvm-agent at boot\n", 0o644)?;
    // Empty: tools that need a machine id then generate a fresh one per sandbox.
    put("machine-id", b"", 0o444)?;
    symlink("../proc/self/mounts", &etc("mtab")?)
}

fn populate_tiny(
    inputs: &Inputs<'_>,
    staging: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    progress("Populating the tiny root filesystem");
    for d in [
        "bin", "sbin", "etc", "lib", "usr/bin", "usr/sbin", "var", "mnt",
    ] {
        mkdir(&staging.join(d), 0o755)?;
    }
    let bb = staging.join("bin/busybox");
    fs::copy(inputs.busybox, &bb).map_err(ImageError::io("copy busybox to", &bb))?;
    util::set_mode(&bb, 0o755)?;
    let mut cmd = Command::new(inputs.busybox);
    cmd.arg("--list");
    let out = run(
        &mut cmd,
        "the cached busybox-static package may be damaged; delete it and retry",
    )?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        let plain = !applet.is_empty() && !applet.contains('/') && applet != "busybox";
        if plain {
            symlink("busybox", &staging.join("bin").join(applet))?;
        }
    }
    if !staging.join("bin/sh").exists() {
        return Err(ImageError::Rootfs {
            path: bb,
            reason: "this busybox has no 'sh' applet".into(),
        });
    }
    write_file(
        &staging.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    write_file(&staging.join("etc/group"), b"root:x:0:\n", 0o644)?;
    common_setup(staging, inputs.agent)?;
    copy_resize2fs(staging, progress)
}

/// Copies the host's resize2fs with the libraries and loader `ldd` names, so
/// the guest can grow its root filesystem online. Optional: warns if missing.
fn copy_resize2fs(staging: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let warn = |progress: &mut dyn FnMut(&str), why: &str| {
        let msg = format!("warning: {why}; the guest will not be able to grow its filesystem");
        tracing::warn!("{msg}");
        progress(&msg);
    };
    let Some(bin) = util::find_program("resize2fs") else {
        warn(
            progress,
            "resize2fs not found on the host (install e2fsprogs)",
        );
        return Ok(());
    };
    let mut cmd = Command::new("ldd");
    cmd.arg(&bin);
    let libs = match run(&mut cmd, "") {
        Ok(out) => parse_ldd(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => {
            warn(
                progress,
                &format!("cannot list the libraries of resize2fs ({e})"),
            );
            return Ok(());
        }
    };
    let dest = staging.join("sbin/resize2fs");
    fs::copy(&bin, &dest).map_err(ImageError::io("copy resize2fs to", &dest))?;
    util::set_mode(&dest, 0o755)?;
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let to = staging.join(rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(ImageError::io("create directory", parent))?;
        }
        // fs::copy follows the host's symlinks (libc.so.6 -> libc-2.36.so etc.).
        fs::copy(&lib, &to).map_err(ImageError::io("copy library to", &to))?;
        util::set_mode(&to, 0o755)?;
    }
    Ok(())
}

/// Absolute paths of the shared objects in `ldd` output (the vDSO has none).
pub(crate) fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `staging/rel`, refusing paths whose parent resolves outside `staging`
/// (a base tree may contain absolute symlinks that point into the host).
pub(super) fn contained(staging: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let path = staging.join(rel);
    let root = staging
        .canonicalize()
        .map_err(ImageError::io("resolve", staging))?;
    let mut parent = path.parent().unwrap_or(staging).to_path_buf();
    // Walk up to the deepest existing ancestor; it is what a write would follow.
    while !parent.exists() {
        match parent.parent() {
            Some(p) => parent = p.to_path_buf(),
            None => break,
        }
    }
    let real = parent
        .canonicalize()
        .map_err(ImageError::io("resolve", &parent))?;
    if !real.starts_with(&root) {
        return Err(ImageError::Rootfs {
            path,
            reason: format!("resolves outside the root tree (to {})", real.display()),
        });
    }
    Ok(path)
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(path) {
        Ok(_) => fs::remove_file(path).map_err(ImageError::io("remove", path)),
        Err(_) => Ok(()),
    }
}

/// Bytes the tree will need in ext4: data rounded to blocks plus an inode each.
fn content_size(dir: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    util::walk(dir, &mut |_, meta| {
        total += meta.len().div_ceil(4096) * 4096 + 256;
        Ok(())
    })?;
    Ok(total)
}

/// `mkfs.ext4 -d`: the image is created sparse at `size` bytes.
fn mkfs(staging: &Path, dest: &Path, size: u64) -> Result<(), ImageError> {
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-F", "-q", "-L", "smolvm-root", "-d"])
        .arg(staging)
        .args([
            "-E",
            "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
        ])
        .arg(dest)
        .arg(format!("{}M", size / MIB));
    run(&mut cmd, "install e2fsprogs >= 1.43 (for mkfs.ext4 -d)").map(|_| ())
}

/// Files keep their owner in `mkfs.ext4 -d`; when the tree was made by a
/// user, set every inode that is not root's to 0:0 with `debugfs -w`.
fn chown_root_in_image(staging: &Path, image: &Path) -> Result<(), ImageError> {
    let mut script = String::new();
    util::walk(staging, &mut |rel, meta| {
        if meta.uid() != 0 || meta.gid() != 0 {
            let p = format!("/{}", rel.display());
            if p.contains('"') || p.contains('\n') {
                return Err(ImageError::Rootfs {
                    path: staging.join(rel),
                    reason: "unsupported character in file name".into(),
                });
            }
            script.push_str(&format!("sif \"{p}\" uid 0\nsif \"{p}\" gid 0\n"));
        }
        Ok(())
    })?;
    if script.is_empty() {
        return Ok(());
    }
    let cmds = image.with_extension("debugfs-cmds");
    write_file(&cmds, script.as_bytes(), 0o600)?;
    let mut cmd = Command::new("debugfs");
    cmd.arg("-w").arg("-f").arg(&cmds).arg(image);
    let res = run(&mut cmd, "install e2fsprogs");
    let _ = fs::remove_file(&cmds);
    let out = res?;
    // debugfs reports per-command errors on stderr but still exits 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(line) = stderr
        .lines()
        .find(|l| l.contains("sif:") || l.contains("not found"))
    {
        return Err(util::command_failed(
            &cmd,
            &out,
            &format!("setting root ownership failed: {line}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibext2fs.so.2 => /lib/x86_64-linux-gnu/libext2fs.so.2 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \tlibmissing.so => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libext2fs.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    /// A tree made by a user (here: chowned to 1000) ends up root-owned.
    #[test]
    fn tiny_tree_becomes_root_owned() {
        if !util::is_root()
            || util::find_program("debugfs").is_none()
            || util::find_program("mkfs.ext4").is_none()
        {
            eprintln!("SKIPPED tiny_tree_becomes_root_owned: needs root (to chown), mkfs.ext4 and debugfs");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join("tree");
        fs::create_dir_all(staging.join("bin")).unwrap();
        fs::write(staging.join("bin/tool"), b"x").unwrap();
        std::os::unix::fs::symlink("tool", staging.join("bin/sh")).unwrap();
        for p in ["bin", "bin/tool", "bin/sh"] {
            std::os::unix::fs::lchown(staging.join(p), Some(1000), Some(1000)).unwrap();
        }
        let img = t.path().join("fs.ext4");
        mkfs(&staging, &img, 16 * MIB).unwrap();
        chown_root_in_image(&staging, &img).unwrap();
        for p in ["/bin", "/bin/tool", "/bin/sh"] {
            let out = Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {p}"))
                .arg(&img)
                .output()
                .unwrap();
            let stat = String::from_utf8_lossy(&out.stdout);
            assert!(stat.contains("User:     0   Group:     0"), "{p}: {stat}");
        }
    }

    #[test]
    fn contained_refuses_escaping_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        fs::create_dir_all(s.join("usr/sbin")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", s.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/etc", s.join("etc")).unwrap();
        assert!(contained(s, "sbin/init").is_ok());
        assert!(contained(s, "new/dir/file").is_ok());
        assert!(contained(s, "etc/passwd").is_err());
    }
}
