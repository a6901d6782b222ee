//! The `debian` base: Debian bookworm minbase made by debootstrap (from the
//! mirror apt already uses), cached as a tarball so later builds skip it,
//! then turned into a smolvm root: the agent as /sbin/init, bash for root,
//! no stale apt lists.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::rootfs::{common_setup, contained, Inputs};
use super::util::{self, run, write_file};
use super::{Base, ImageError};

const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_INCLUDE: &str = "iproute2,ca-certificates,procps,e2fsprogs";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// The Debian mirror apt uses (first `URIs:` of debian.sources), so debootstrap
/// goes where apt already can.
fn debian_mirror() -> String {
    fs::read_to_string(DEBIAN_SOURCES)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let uri = l.trim().strip_prefix("URIs:")?.split_whitespace().next()?;
                (uri.starts_with("http://") || uri.starts_with("https://")).then(|| uri.to_string())
            })
        })
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// A debootstrap tarball in the cache, made on first use.
fn debootstrap_tarball(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, ImageError> {
    let mirror = debian_mirror();
    let key = blake3::hash(format!("{DEBIAN_SUITE}|minbase|{DEBIAN_INCLUDE}|{mirror}").as_bytes());
    let tar = cache.join(format!(
        "debootstrap-{DEBIAN_SUITE}-{}.tar",
        &key.to_hex()[..12]
    ));
    if tar.is_file() {
        return Ok(tar);
    }
    progress(&format!(
        "Running debootstrap {DEBIAN_SUITE} from {mirror} (a few minutes, once)"
    ));
    let tmp = util::TempDir::create(cache.join(format!(".debootstrap-{}", util::random_suffix())))?;
    let target = tmp.path().join("root");
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={DEBIAN_INCLUDE}"))
        .arg(DEBIAN_SUITE)
        .arg(&target)
        .arg(&mirror);
    let out = util::spawn_output(&mut cmd, "install the debootstrap package")?;
    if !out.status.success() {
        let log =
            fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(util::command_failed(
            &cmd,
            &out,
            &format!(
                "check the mirror {mirror}; end of debootstrap.log:\n{}",
                tail.join("\n")
            ),
        ));
    }
    progress("Caching the debootstrap result");
    let tar_tmp = tmp.path().join("root.tar");
    let mut cmd = Command::new("tar");
    cmd.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-cf"])
        .arg(&tar_tmp)
        .arg("-C")
        .arg(&target)
        .arg(".");
    run(
        &mut cmd,
        "is there enough free space in the cache directory?",
    )?;
    util::fsync(&tar_tmp)?;
    fs::rename(&tar_tmp, &tar).map_err(ImageError::io("rename into place", &tar))?;
    Ok(tar)
}

/// Fills `staging` with the Debian base and smolvm's additions.
pub(super) fn populate(
    inputs: &Inputs<'_>,
    staging: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    if !util::is_root() {
        return Err(ImageError::NeedsRoot {
            base: Base::Debian,
            why: "debootstrap creates device nodes and root-owned files",
        });
    }
    let tar = debootstrap_tarball(inputs.cache, progress)?;
    progress("Unpacking the Debian base");
    let mut cmd = Command::new("tar");
    cmd.args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(staging);
    run(
        &mut cmd,
        "the cached tarball may be damaged; delete it and retry",
    )?;
    common_setup(staging, inputs.agent)?;
    let passwd = contained(staging, "etc/passwd")?;
    let text = fs::read_to_string(&passwd).map_err(ImageError::io("read", &passwd))?;
    write_file(&passwd, root_shell(&text, "/bin/bash").as_bytes(), 0o644)?;
    // Package lists and .debs are stale the moment the image is built.
    for dir in [
        "var/lib/apt/lists",
        "var/cache/apt/archives",
        "var/cache/apt",
    ] {
        let d = contained(staging, dir)?;
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_file() && name != "lock" && (dir != "var/cache/apt" || name.ends_with(".bin")) {
                fs::remove_file(&p).map_err(ImageError::io("remove", &p))?;
            }
        }
    }
    Ok(())
}

/// `passwd` with root's login shell set to `shell`.
pub(crate) fn root_shell(passwd: &str, shell: &str) -> String {
    let mut out = String::new();
    for line in passwd.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"root") && fields.len() == 7 {
            fields[6] = shell;
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_shell_only_changes_root() {
        let p = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
        assert_eq!(
            root_shell(p, "/bin/bash"),
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        );
    }
}
