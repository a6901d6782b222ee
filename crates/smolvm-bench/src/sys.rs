//! What the benchmark reads from the host: per-process I/O counters and
//! memory, allocated file sizes, CPU and load, and the machine description.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// `write_bytes` of /proc/<pid>/io: bytes the process (and the children
/// it reaped) caused to be written to storage, counted when page-cache
/// pages are dirtied. 0 when unreadable (the process is gone).
pub fn write_bytes(pid: &str) -> u64 {
    proc_io_field(pid, "write_bytes")
}

fn proc_io_field(pid: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Resident and proportional set size of a process, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemUse {
    /// RSS.
    pub rss: u64,
    /// PSS (shared pages divided among their users).
    pub pss: u64,
}

/// RSS and PSS from /proc/<pid>/smaps_rollup.
pub fn mem_use(pid: i32) -> Option<MemUse> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(MemUse {
        rss: kib("Rss")? * 1024,
        pss: kib("Pss")? * 1024,
    })
}

/// Bytes a file really occupies (holes of a sparse file do not count).
pub fn allocated(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Allocated bytes of every regular file under `dir` (recursive).
pub fn allocated_tree(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return allocated(dir);
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            total += allocated_tree(&e.path());
        } else if ft.is_file() {
            total += allocated(&e.path());
        }
    }
    total
}

/// The 1/5/15-minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Host CPU time counters (jiffies) from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

impl CpuTimes {
    /// Reads them now.
    pub fn now() -> CpuTimes {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = text.lines().next().unwrap_or("");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        CpuTimes {
            busy: get(0) + get(1) + get(2) + get(5) + get(6),
            idle: get(3) + get(4),
            steal: get(7),
        }
    }

    /// Busy and steal shares of all cores between `self` and `later`.
    pub fn usage_since(&self, later: &CpuTimes) -> (f64, f64) {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let total = busy + idle + steal;
        if total == 0.0 {
            (0.0, 0.0)
        } else {
            (busy / total, steal / total)
        }
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// lscpu "Model name".
    pub cpu_model: String,
    /// Online CPUs.
    pub cores: usize,
    /// "Hypervisor vendor" from lscpu, if any (this machine is itself a VM).
    pub hypervisor: String,
    /// Total RAM in GiB.
    pub ram_gib: f64,
    /// `uname -sr`.
    pub kernel: String,
    /// First line of `qemu-system-x86_64 --version`.
    pub qemu: String,
    /// First line of `qemu-img --version`.
    pub qemu_img: String,
    /// Filesystem type of the data directory.
    pub data_fs: String,
    /// /etc/os-release PRETTY_NAME.
    pub os: String,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Describes this machine; `data` is the benchmark's data directory.
pub fn machine(data: &Path) -> Machine {
    let lscpu = Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        lscpu
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    Machine {
        cpu_model: field("Model name"),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        hypervisor: field("Hypervisor vendor"),
        ram_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: first_line("uname", &["-sr"]),
        qemu: first_line(
            &std::env::var("SMOLVM_QEMU_BIN").unwrap_or_else(|_| "qemu-system-x86_64".into()),
            &["--version"],
        ),
        qemu_img: first_line(
            &std::env::var("SMOLVM_QEMU_IMG_BIN").unwrap_or_else(|_| "qemu-img".into()),
            &["--version"],
        ),
        data_fs: first_line(
            "findmnt",
            &["-n", "-o", "FSTYPE", "-T", &data.display().to_string()],
        ),
        os,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_counters_are_readable() {
        assert!(mem_use(std::process::id() as i32).is_some_and(|m| m.rss > 0 && m.pss > 0));
        let dir = std::env::temp_dir().join(format!("smolvm-bench-sys-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), vec![1u8; 64 * 1024]).unwrap();
        assert!(allocated_tree(&dir) >= 64 * 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
