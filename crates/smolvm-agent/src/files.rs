//! Upload and Download requests, and atomic file replacement.
//!
//! Uploads stream into a temporary file next to the target and are renamed
//! into place only after DataEnd and fsync, so a reader never sees a
//! half-written file and an interrupted upload leaves nothing behind.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use smolvm_proto::{Frame, FrameKind, Response, CHUNK_SIZE};

use crate::sink::{error, io_error, FrameSink};
use crate::system::freeze;

/// How an upload handler left the stream.
pub enum UploadEnd {
    /// The request got its Response; leftover Data frames of a refused
    /// upload are ignored by the session loop.
    Done,
    /// A Hello or Request came before DataEnd; the session handles it next.
    Interrupted(Frame),
    /// The stream ended mid-upload.
    StreamEnded,
}

/// Handles Upload: Data frames from `next_frame` until DataEnd.
pub fn upload(
    next_frame: &mut dyn FnMut() -> io::Result<Option<Frame>>,
    sink: &FrameSink,
    path: &str,
    mode: u32,
    create_dirs: bool,
) -> io::Result<UploadEnd> {
    let mut target = match TempFile::for_target(path, create_dirs) {
        Ok(t) => t,
        Err(response) => {
            sink.respond(&response)?;
            return Ok(UploadEnd::Done);
        }
    };
    let mut bytes: u64 = 0;
    loop {
        let Some(frame) = next_frame()? else {
            return Ok(UploadEnd::StreamEnded);
        };
        match frame.kind {
            FrameKind::Data => {
                if let Err(e) = target.file.write_all(&frame.payload) {
                    sink.respond(&io_error(&format!("cannot write {path}"), &e))?;
                    return Ok(UploadEnd::Done);
                }
                bytes += frame.payload.len() as u64;
            }
            FrameKind::DataEnd => {
                let response = match target.commit(mode) {
                    Ok(()) => Response::Uploaded { bytes },
                    Err(e) => io_error(&format!("cannot finish {path}"), &e),
                };
                sink.respond(&response)?;
                return Ok(UploadEnd::Done);
            }
            FrameKind::Hello | FrameKind::Request => {
                sink.error("bad_request", "upload interrupted before DataEnd")?;
                return Ok(UploadEnd::Interrupted(frame));
            }
            _ => {}
        }
    }
}

/// Handles Download: DownloadStart, Data chunks, DataEnd. A read error
/// after DownloadStart is reported with a Response::Error in place of
/// DataEnd (the protocol has no other way to say it).
pub fn download(sink: &FrameSink, path: &str) -> io::Result<()> {
    let (mut file, size, mode) = match open_regular(path) {
        Ok(opened) => opened,
        Err(response) => return sink.respond(&response),
    };
    sink.respond(&Response::DownloadStart { size, mode })?;
    let mut buf = vec![0u8; CHUNK_SIZE];
    // Never send more than announced, even if the file grows meanwhile.
    let mut remaining = size;
    while remaining > 0 {
        let want = remaining.min(CHUNK_SIZE as u64) as usize;
        match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                sink.frame(FrameKind::Data, &buf[..n])?;
                remaining -= n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return sink.respond(&io_error(&format!("cannot read {path}"), &e)),
        }
    }
    sink.frame(FrameKind::DataEnd, &[])
}

/// Opens `path` for reading if it is a regular file: (file, size, mode).
fn open_regular(path: &str) -> Result<(File, u64, u32), Response> {
    if !path.starts_with('/') {
        return Err(error("bad_request", format!("path must be absolute: {path}")));
    }
    let not_regular = || error("not_regular", format!("{path} is not a regular file"));
    let meta = fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    // O_NONBLOCK: if the path was swapped for a FIFO since the check,
    // opening it must not hang the session.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io_error(path, &e))?;
    let meta = file.metadata().map_err(|e| io_error(path, &e))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, meta.len(), meta.permissions().mode() & 0o7777))
}

/// Distinguishes temp files of concurrent uploads in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file beside its final path; removed on drop unless
/// committed.
struct TempFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Validates an upload target and creates the temp file for it.
    fn for_target(path: &str, create_dirs: bool) -> Result<TempFile, Response> {
        let target = Path::new(path);
        if !target.is_absolute() || path.contains('\0') {
            return Err(error("bad_request", format!("path must be absolute: {path}")));
        }
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(error("bad_request", format!("not a file path: {path}")));
        };
        if freeze::is_frozen() {
            return Err(error("frozen", "filesystems are frozen; thaw before uploading"));
        }
        if create_dirs {
            fs::create_dir_all(dir).map_err(|e| io_error(&format!("cannot create {}", dir.display()), &e))?;
        }
        TempFile::create(dir, name, target)
            .map_err(|e| io_error(&format!("cannot create a file in {}", dir.display()), &e))
    }

    fn create(dir: &Path, name: &OsStr, target: &Path) -> io::Result<TempFile> {
        // Keep the temp name under NAME_MAX even for very long names.
        let stem = &name.as_bytes()[..name.len().min(200)];
        let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = b".".to_vec();
        temp_name.extend_from_slice(stem);
        temp_name.extend_from_slice(format!(".smolvm-{}-{unique}.tmp", std::process::id()).as_bytes());
        let temp = dir.join(OsStr::from_bytes(&temp_name));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        Ok(TempFile {
            file,
            temp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    /// Flushes the data, applies `mode` and renames over the target.
    fn commit(&mut self, mode: u32) -> io::Result<()> {
        self.file.sync_all()?;
        self.file.set_permissions(Permissions::from_mode(mode & 0o7777))?;
        fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        if let Some(dir) = self.target.parent() {
            // Make the rename itself durable; best effort.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Replaces `path` atomically with `contents` and `mode` (also replaces a
/// symlink at `path` rather than writing through it).
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file path"));
    };
    let mut temp = TempFile::create(dir, name, path)?;
    temp.file.write_all(contents)?;
    temp.commit(mode)
}
