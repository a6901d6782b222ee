//! Small helpers shared by the image builders: running external programs with
//! their stderr captured, atomic-ish file handling and a self-removing temp dir.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::ImageError;

/// The most stderr kept in an error: enough for the real message, not a whole log.
const STDERR_KEEP: usize = 4000;

/// Renders a command as the user would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stderr captured; stdout is captured too unless
/// the caller redirected it. A failure to start or a non-zero exit becomes an
/// [`ImageError`] carrying the command line, the stderr and `hint`.
pub(crate) fn run(cmd: &mut Command, hint: &str) -> Result<Output, ImageError> {
    let out = spawn_output(cmd, hint)?;
    if !out.status.success() {
        return Err(command_failed(cmd, &out, hint));
    }
    Ok(out)
}

/// Like [`run`] but returns the output whatever the exit status, for callers
/// that interpret failures themselves.
pub(crate) fn spawn_output(cmd: &mut Command, hint: &str) -> Result<Output, ImageError> {
    if cmd.get_current_dir().is_none() {
        // Never depend on the caller's working directory.
        cmd.current_dir("/");
    }
    cmd.output().map_err(|source| ImageError::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        hint: if source.kind() == io::ErrorKind::NotFound {
            format!("is it installed? {hint}")
        } else {
            hint.to_string()
        },
        source,
    })
}

/// Builds the error for a program that exited unsuccessfully.
pub(crate) fn command_failed(cmd: &Command, out: &Output, hint: &str) -> ImageError {
    ImageError::Command {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr: tail(&String::from_utf8_lossy(&out.stderr), STDERR_KEEP),
        hint: hint.to_string(),
    }
}

/// The last `max` bytes of `s` (on a char boundary): errors are at the end.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// A short random hex string for temp names, so concurrent builds never collide.
pub(crate) fn random_suffix() -> String {
    let mut buf = [0u8; 6];
    if getrandom::fill(&mut buf).is_err() {
        // Uniqueness only matters between concurrent builds; pid + time suffice then.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf[..4].copy_from_slice(&nanos.to_le_bytes());
        buf[4..].copy_from_slice(&(std::process::id() as u16).to_le_bytes());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A directory that is removed with everything in it when dropped, unless
/// [`TempDir::keep`] was called: a failed build leaves nothing behind.
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `path` (which must not exist yet).
    pub(crate) fn create(path: PathBuf) -> Result<Self, ImageError> {
        fs::create_dir(&path).map_err(ImageError::io("create directory", &path))?;
        Ok(TempDir { path, keep: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the removal (the directory was renamed into place).
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `data` to `path` with `mode`, creating or truncating it.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(ImageError::io("create", path))?;
    f.write_all(data).map_err(ImageError::io("write", path))?;
    set_mode(path, mode)
}

/// Sets permission bits exactly (independent of the umask).
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io("set permissions of", path))
}

/// Creates directory `path` (and parents) with exactly `mode`.
pub(crate) fn mkdir(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::create_dir_all(path).map_err(ImageError::io("create directory", path))?;
    set_mode(path, mode)
}

/// Creates (or replaces) a symlink `path` -> `target`.
pub(crate) fn symlink(target: impl AsRef<Path>, path: &Path) -> Result<(), ImageError> {
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path).map_err(ImageError::io("remove", path))?;
    }
    std::os::unix::fs::symlink(target, path).map_err(ImageError::io("create symlink", path))
}

/// Flushes a file or directory to disk, so a rename that publishes it is durable.
pub(crate) fn fsync(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("fsync", path))
}

/// Finds an executable by name on $PATH and the sbin directories (which a
/// non-root PATH often lacks).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [OsStr::new("/usr/sbin"), OsStr::new("/sbin")];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Bytes a file really occupies on disk (sparse files count only their data).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Calls `f` for every entry below `dir` (not following symlinks), parents
/// before children, with the path relative to `dir`.
pub(crate) fn walk(
    dir: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    fn inner(
        root: &Path,
        rel: &Path,
        f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), ImageError>,
    ) -> Result<(), ImageError> {
        let abs = root.join(rel);
        let rd = fs::read_dir(&abs).map_err(ImageError::io("read directory", &abs))?;
        let mut names: Vec<_> = rd
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(ImageError::io("read directory", &abs))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let p = root.join(&rel);
            let meta = fs::symlink_metadata(&p).map_err(ImageError::io("stat", &p))?;
            f(&rel, &meta)?;
            if meta.is_dir() {
                inner(root, &rel, f)?;
            }
        }
        Ok(())
    }
    inner(dir, Path::new(""), f)
}

/// Whether the process runs as root (needed for debootstrap and for
/// root-owned files in a tree).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
