//! Debian packages as plain files: `apt-get download` into a cache and
//! `dpkg-deb -x` into a directory. Nothing is ever installed into the host
//! (installing the kernel package would rewrite the host's /boot).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::util::{self, run, spawn_output};
use super::ImageError;

/// Where apt keeps its downloaded package lists.
const APT_LISTS: &str = "/var/lib/apt/lists";

/// The versioned package a metapackage depends on whose name starts with
/// `prefix`, from `apt-cache depends` output (e.g. `linux-image-cloud-amd64`
/// -> `linux-image-6.1.0-57-cloud-amd64`).
pub(crate) fn parse_depends(output: &str, prefix: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        // Alternatives and virtual packages are shown as "<name>"; skip them.
        let valid = dep.starts_with(prefix)
            && dep
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        valid.then(|| dep.to_string())
    })
}

/// Distinguishes "apt was never updated" from "this package is unknown".
fn not_found(package: &str, stderr: &str) -> ImageError {
    let have_lists = fs::read_dir(APT_LISTS)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if have_lists {
        ImageError::PackageUnavailable {
            package: package.to_string(),
            stderr: stderr.trim().to_string(),
        }
    } else {
        ImageError::NoPackageLists {
            package: package.to_string(),
        }
    }
}

/// Resolves metapackage `meta` to the concrete package it depends on.
pub(crate) fn resolve_metapackage(meta: &str, prefix: &str) -> Result<String, ImageError> {
    let mut cmd = Command::new("apt-cache");
    cmd.args(["depends", "--no-recommends", "--no-suggests", meta]);
    let out = spawn_output(&mut cmd, "smolvm needs apt (Debian or Ubuntu)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stdout.trim().is_empty() {
        return Err(not_found(meta, &stderr));
    }
    parse_depends(&stdout, prefix).ok_or_else(|| ImageError::PackageUnavailable {
        package: meta.to_string(),
        stderr: format!(
            "it depends on no '{prefix}*' package (apt-cache said: {})",
            stdout.trim()
        ),
    })
}

/// A cached .deb of `package` in `dir`, if one was downloaded before.
fn cached_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, ImageError> {
    let prefix = format!("{package}_");
    let rd = fs::read_dir(dir).map_err(ImageError::io("read directory", dir))?;
    let mut found: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    // Several versions may be cached after an upgrade; take the newest name.
    found.sort();
    Ok(found.pop())
}

/// The .deb of `package` in `<cache>/packages/`, downloaded with
/// `apt-get download` unless already cached. Downloads go to a private temp
/// directory first, so concurrent builds never see a half-written .deb.
pub(crate) fn fetch_deb(
    cache: &Path,
    package: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, ImageError> {
    let dir = cache.join("packages");
    fs::create_dir_all(&dir).map_err(ImageError::io("create directory", &dir))?;
    if let Some(deb) = cached_deb(&dir, package)? {
        return Ok(deb);
    }
    progress(&format!("Downloading {package}"));
    let tmp = util::TempDir::create(dir.join(format!(".download-{}", util::random_suffix())))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", "-q", package])
        .current_dir(tmp.path());
    let out = spawn_output(&mut cmd, "smolvm needs apt (Debian or Ubuntu)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("Unable to locate package")
            || stderr.contains("no installation candidate")
        {
            return Err(not_found(package, &stderr));
        }
        return Err(util::command_failed(
            &cmd,
            &out,
            "check the network connection to the Debian mirror",
        ));
    }
    let deb = cached_deb(tmp.path(), package)?.ok_or_else(|| ImageError::Command {
        command: util::describe(&cmd),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        hint: "apt-get reported success but left no .deb file".into(),
    })?;
    let name = deb.file_name().map(PathBuf::from).unwrap_or_default();
    let dest = dir.join(name);
    fs::rename(&deb, &dest).map_err(ImageError::io("move into the package cache", &dest))?;
    Ok(dest)
}

/// Unpacks `deb` into `dest` (a cache directory) unless it is already there.
/// Unpacks into a temp sibling and renames, so a present `dest` is complete.
pub(crate) fn extract_deb(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let label = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = util::TempDir::create(parent.join(format!(".{label}-{}", util::random_suffix())))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(tmp.path());
    run(
        &mut cmd,
        "delete the cached .deb and try again; it may be damaged",
    )?;
    match fs::rename(tmp.path(), dest) {
        Ok(()) => {
            tmp.keep();
            Ok(())
        }
        // Another build unpacked the same package meanwhile: use theirs.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(ImageError::io("rename into place", dest)(e)),
    }
}

/// Fetches and unpacks `package` into `<cache>/<label>/`, returning that dir.
pub(crate) fn fetch_and_extract(
    cache: &Path,
    package: &str,
    label: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, ImageError> {
    let dest = cache.join(label);
    if !dest.is_dir() {
        let deb = fetch_deb(cache, package, progress)?;
        progress(&format!("Unpacking {package}"));
        extract_deb(&deb, &dest)?;
    }
    Ok(dest)
}

/// Fetches the static busybox (`busybox-static`), returning its path.
pub(crate) fn busybox(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, ImageError> {
    let dir = fetch_and_extract(cache, "busybox-static", "busybox-static", progress)?;
    let bin = dir.join("bin/busybox");
    if !bin.is_file() {
        return Err(ImageError::Rootfs {
            path: bin,
            reason: "the busybox-static package has no bin/busybox; delete the cache dir and retry"
                .into(),
        });
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-57-cloud-amd64\n";
        assert_eq!(
            parse_depends(out, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-57-cloud-amd64")
        );
        assert_eq!(
            parse_depends("x\n  Depends: <virtual>\n", "linux-image-"),
            None
        );
        assert_eq!(
            parse_depends("x\n  Recommends: linux-image-1\n", "linux-image-"),
            None
        );
        assert_eq!(parse_depends("", "linux-image-"), None);
    }
}
