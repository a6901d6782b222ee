//! Copy-on-write file work for raw disks and memory files: clone a file by
//! reflink where the filesystem can (FICLONE: btrfs, XFS, ...), else by a
//! sparse copy of its data extents only (SEEK_DATA/SEEK_HOLE, then
//! copy_file_range); merge Firecracker Diff memory files onto their base
//! and verify the result. Never a plain byte-for-byte copy of holes.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::SeekFrom;

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// Shared extents (no data copied).
    Reflink,
    /// Only the data extents were copied; holes stay holes.
    Sparse,
}

/// Creates `dest` (new, mode 0600) with the content of `src`.
pub fn clone_file(src: &Path, dest: &Path) -> io::Result<CloneMethod> {
    let from = File::open(src)?;
    let to = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dest)?;
    let result = clone_into(&from, &to);
    match result {
        Ok(how) => {
            to.sync_all()?;
            Ok(how)
        }
        Err(e) => {
            drop(to);
            let _ = std::fs::remove_file(dest);
            Err(e)
        }
    }
}

fn clone_into(from: &File, to: &File) -> io::Result<CloneMethod> {
    if rustix::fs::ioctl_ficlone(to, from).is_ok() {
        return Ok(CloneMethod::Reflink);
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    for (start, end) in data_extents(from)? {
        copy_range(from, to, start, end)?;
    }
    Ok(CloneMethod::Sparse)
}

/// The data extents of `file` as `[start, end)` byte ranges, in order.
pub fn data_extents(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA support: treat the whole rest as data.
            Err(rustix::io::Errno::INVAL) if pos == 0 => {
                out.push((0, len));
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(len);
        if end > start {
            out.push((start, end));
        }
        pos = end.max(start + 1);
    }
    Ok(out)
}

/// Copies `[start, end)` of `from` to the same offsets of `to`.
fn copy_range(from: &File, to: &File, start: u64, end: u64) -> io::Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    while off_in < end {
        let want = usize::try_from(end - off_in).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), want) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the source file shrank while being copied")),
            Ok(_) => {}
            // Kernels or filesystems without copy_file_range: plain reads
            // and writes of this extent (still only the data).
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                return copy_range_rw(from, to, off_in, end)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_rw(from: &File, to: &File, mut pos: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let n = usize::try_from(end - pos).unwrap_or(usize::MAX).min(buf.len());
        from.read_exact_at(&mut buf[..n], pos)?;
        to.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Builds `dest` as `layers[0]` with every later layer's data extents
/// written over it, in order (a Firecracker Full memory file followed by
/// its Diff files). All layers must have the same size.
pub fn merge_layers(layers: &[&Path], dest: &Path) -> io::Result<()> {
    let Some((base, deltas)) = layers.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "nothing to merge"));
    };
    let size = std::fs::metadata(base)?.len();
    for d in deltas {
        let dsize = std::fs::metadata(d)?.len();
        if dsize != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is {dsize} bytes but its base is {size}", d.display()),
            ));
        }
    }
    clone_file(base, dest)?;
    let result = (|| {
        let to = OpenOptions::new().write(true).open(dest)?;
        for d in deltas {
            let from = File::open(d)?;
            for (start, end) in data_extents(&from)? {
                copy_range(&from, &to, start, end)?;
            }
        }
        to.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
}

/// Re-reads `merged` and checks that every byte comes from the layer that
/// should own it: the last delta with data there, else the base. Ranges
/// that are holes in the base and in the merge (zeros in both) are known
/// equal without reading them.
pub fn verify_merge(layers: &[&Path], merged: &Path) -> io::Result<()> {
    let out = File::open(merged)?;
    let size = out.metadata()?.len();
    let merged_data = data_extents(&out)?;
    // Ranges already claimed by a later layer.
    let mut claimed: Vec<(u64, u64)> = Vec::new();
    let mut a = vec![0u8; 1 << 20];
    let mut b = vec![0u8; 1 << 20];
    for (i, layer) in layers.iter().enumerate().rev() {
        let f = File::open(layer)?;
        if f.metadata()?.len() != size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} has another size than the merge", layer.display())));
        }
        // The base owns everything nobody else claimed: its data, and
        // wherever the merge has data (which must then be zeros or the
        // base's). Elsewhere both are holes.
        let extents = if i == 0 {
            let mut all = data_extents(&f)?;
            all.extend(merged_data.iter().copied());
            union(all)
        } else {
            data_extents(&f)?
        };
        for (start, end) in extents {
            for (s, e) in subtract(start, end, &claimed) {
                let mut pos = s;
                while pos < e {
                    let n = usize::try_from(e - pos).unwrap_or(usize::MAX).min(a.len());
                    f.read_exact_at(&mut a[..n], pos)?;
                    out.read_exact_at(&mut b[..n], pos)?;
                    if a[..n] != b[..n] {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("merged memory differs from {} near offset {pos}", layer.display()),
                        ));
                    }
                    pos += n as u64;
                }
            }
            claimed.push((start, end));
        }
        claimed.sort_unstable();
    }
    Ok(())
}

/// The union of `ranges` as sorted, disjoint ranges.
fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `[start, end)` minus the (sorted, possibly overlapping) `claimed` ranges.
fn subtract(start: u64, end: u64, claimed: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    for &(cs, ce) in claimed {
        if ce <= pos || cs >= end {
            continue;
        }
        if cs > pos {
            out.push((pos, cs.min(end)));
        }
        pos = pos.max(ce);
        if pos >= end {
            break;
        }
    }
    if pos < end {
        out.push((pos, end));
    }
    out
}

/// Punches holes where `path` holds all-zero pages, so a Full memory file
/// (which Firecracker writes whole) only occupies the guest's used memory.
/// Returns the bytes freed.
pub fn punch_zero_pages(path: &Path) -> io::Result<u64> {
    const PAGE: usize = 4096;
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut freed = 0u64;
    for (start, end) in data_extents(&file)? {
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).unwrap_or(usize::MAX).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos)?;
            let mut run: Option<u64> = None;
            let mut off = 0;
            while off < n {
                let page_end = (off + PAGE).min(n);
                let zero = buf[off..page_end].iter().all(|&x| x == 0);
                let at = pos + off as u64;
                match (zero, run) {
                    (true, None) => run = Some(at),
                    (false, Some(s)) => {
                        freed += punch(&file, s, at)?;
                        run = None;
                    }
                    _ => {}
                }
                off = page_end;
            }
            if let Some(s) = run {
                freed += punch(&file, s, pos + n as u64)?;
            }
            pos += n as u64;
        }
    }
    file.sync_all()?;
    Ok(freed)
}

fn punch(file: &File, start: u64, end: u64) -> io::Result<u64> {
    rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        start,
        end - start,
    )?;
    Ok(end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    fn write_at(path: &Path, size: u64, pages: &[(u64, u8)]) {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(path).unwrap();
        f.set_len(size).unwrap();
        for &(page, byte) in pages {
            f.write_all_at(&[byte; 4096], page * 4096).unwrap();
        }
    }

    #[test]
    fn sparse_clone_keeps_holes_and_data() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        write_at(&src, 64 << 20, &[(3, 1), (4000, 2), (16383, 3)]);
        let dest = t.path().join("dest");
        clone_file(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dest).unwrap());
        assert!(allocated(&dest) < 1 << 20, "the clone is not sparse: {} bytes", allocated(&dest));
        assert!(clone_file(&src, &dest).is_err(), "an existing destination is never overwritten");
    }

    #[test]
    fn merge_applies_deltas_in_order_and_verifies() {
        let t = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        let base = t.path().join("base");
        let d1 = t.path().join("d1");
        let d2 = t.path().join("d2");
        write_at(&base, size, &[(0, 1), (1, 1), (2, 1), (100, 1)]);
        write_at(&d1, size, &[(1, 2), (200, 2)]);
        write_at(&d2, size, &[(2, 3), (200, 3), (300, 0)]);
        let merged = t.path().join("merged");
        let layers = [base.as_path(), d1.as_path(), d2.as_path()];
        merge_layers(&layers, &merged).unwrap();
        let m = std::fs::read(&merged).unwrap();
        let page = |n: usize| m[n * 4096];
        assert_eq!((page(0), page(1), page(2), page(100), page(200), page(300)), (1, 2, 3, 1, 3, 0));
        verify_merge(&layers, &merged).unwrap();
        // A wrong byte anywhere is found.
        let f = OpenOptions::new().write(true).open(&merged).unwrap();
        f.write_all_at(&[9], 150 * 4096 + 7).unwrap();
        assert!(verify_merge(&layers, &merged).is_err());
        // Layers of different sizes are refused.
        write_at(&d2, size / 2, &[]);
        assert!(merge_layers(&layers, &t.path().join("m2")).is_err());
    }

    #[test]
    fn zero_pages_become_holes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("mem");
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&p).unwrap();
        f.write_all_at(&vec![0u8; 4 << 20], 0).unwrap();
        f.write_all_at(&[5u8; 4096], 8192).unwrap();
        f.sync_all().unwrap();
        let before = std::fs::read(&p).unwrap();
        let freed = punch_zero_pages(&p).unwrap();
        assert!(freed >= (4 << 20) - 8192, "freed {freed}");
        assert_eq!(before, std::fs::read(&p).unwrap());
        assert!(allocated(&p) <= 64 * 1024);
    }

    #[test]
    fn verify_finds_data_written_into_a_hole_of_every_layer() {
        let t = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        let (base, d1) = (t.path().join("base"), t.path().join("d1"));
        write_at(&base, size, &[(0, 1)]);
        write_at(&d1, size, &[(1, 2)]);
        let merged = t.path().join("merged");
        let layers = [base.as_path(), d1.as_path()];
        merge_layers(&layers, &merged).unwrap();
        verify_merge(&layers, &merged).unwrap();
        let f = OpenOptions::new().write(true).open(&merged).unwrap();
        f.write_all_at(&[7], 1000 * 4096).unwrap();
        assert!(verify_merge(&layers, &merged).is_err());
    }

    #[test]
    fn unions_and_subtract_ranges() {
        assert_eq!(union(vec![(5, 7), (0, 2), (1, 3), (7, 8)]), vec![(0, 3), (5, 8)]);
        assert_eq!(subtract(0, 10, &[]), vec![(0, 10)]);
        assert_eq!(subtract(0, 10, &[(2, 4), (3, 5), (8, 20)]), vec![(0, 2), (5, 8)]);
        assert_eq!(subtract(5, 6, &[(0, 10)]), vec![]);
    }
}
