//! The machine's limit for a given number of bytes: writing them
//! sequentially into a new file on the data directory's filesystem and
//! `fdatasync`ing it (what a snapshot create must at least do), and
//! reading them back from the page cache (what a restore must at least do).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

const CHUNK: usize = 1 << 20;

fn random_chunk() -> Vec<u8> {
    let mut buf = vec![0u8; CHUNK];
    let _ = getrandom::fill(&mut buf);
    buf
}

fn write_file(path: &Path, bytes: u64, chunk: &[u8], sync: bool) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    if sync {
        f.sync_data()?;
    }
    Ok(())
}

/// Milliseconds to write `bytes` sequentially and fdatasync, `runs` times
/// (each into a fresh file in `dir`, removed afterwards).
pub fn write_ms(dir: &Path, bytes: u64, runs: usize) -> Result<Vec<f64>> {
    let chunk = random_chunk();
    let path = dir.join(".bench-limit-write");
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let _ = std::fs::remove_file(&path);
        let t = Instant::now();
        write_file(&path, bytes, &chunk, true)?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        std::fs::remove_file(&path)?;
    }
    Ok(out)
}

/// Milliseconds to read `bytes` back from the page cache, `runs` times.
pub fn read_ms(dir: &Path, bytes: u64, runs: usize) -> Result<Vec<f64>> {
    let chunk = random_chunk();
    let path = dir.join(".bench-limit-read");
    write_file(&path, bytes, &chunk, false)?;
    let mut buf = vec![0u8; CHUNK];
    let read_all = |buf: &mut [u8]| -> Result<u64> {
        let mut f = File::open(&path)?;
        let mut total = 0;
        loop {
            let n = f.read(buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    };
    read_all(&mut buf)?; // warm the cache
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        read_all(&mut buf)?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    Ok(out)
}
