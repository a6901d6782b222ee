//! "Changed between snapshots": what the guest does before each snapshot.
//!
//! Each step writes N MiB of new data into a file on the root disk and
//! M MiB into a tmpfs file (guest memory), M = min(N, memory/4) so a small
//! guest is not pushed into the OOM killer. The data comes from a random
//! source file made once per sandbox (a fresh 1 MiB from /dev/urandom,
//! repeated); each step reads it at a different page offset, so every page
//! written differs from what the previous step left there. Disk writes use
//! O_DIRECT both ways: under TCG the guest copies data at ~50 MB/s, while
//! DMA is done by QEMU at host speed, which keeps a 200 MiB step at ~1 s.
//! Neither QEMU nor the snapshot paths compress or deduplicate, so a
//! repeated random MiB costs them exactly what fresh random data would.

/// MiB of guest memory a step changes for a guest of `memory_mib`.
pub fn memory_change_mib(change_mib: u32, memory_mib: u32) -> u32 {
    change_mib.min(memory_mib / 4)
}

/// One-time script: a random source file of at least `max_change_mib` + 1
/// MiB (the offset of a step is below 1 MiB) at /root/src.
pub fn setup_script(max_change_mib: u32) -> String {
    let quads = (max_change_mib + 1).div_ceil(4);
    format!(
        "set -e; head -c 1048576 /dev/urandom > /tmp/seed; cat /tmp/seed /tmp/seed /tmp/seed /tmp/seed > /tmp/seed4; \
         i=0; while [ $i -lt {quads} ]; do dd if=/tmp/seed4 of=/root/src bs=4M seek=$i oflag=direct conv=notrunc 2>/dev/null; i=$((i+1)); done; \
         rm -f /tmp/seed /tmp/seed4; sync"
    )
}

/// The script for step `step`: `disk_mib` to /root/chg and `mem_mib` to
/// /dev/shm/chg, both read from /root/src at offset (step % 255 + 1) pages.
pub fn change_script(step: u64, disk_mib: u32, mem_mib: u32) -> String {
    let off = (step % 255 + 1) * 4096;
    let mut s = format!(
        "set -e; dd if=/root/src of=/root/chg bs=1M count={disk_mib} iflag=direct,skip_bytes skip={off} oflag=direct conv=notrunc 2>/dev/null"
    );
    if mem_mib > 0 {
        s.push_str(&format!(
            "; dd if=/root/src of=/dev/shm/chg bs=1M count={mem_mib} iflag=direct,skip_bytes skip={off} conv=notrunc 2>/dev/null"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        assert_eq!(memory_change_mib(200, 256), 64);
        assert_eq!(memory_change_mib(200, 1024), 200);
        assert_eq!(memory_change_mib(10, 256), 10);
        assert!(setup_script(200).contains("-lt 51 ]"));
        let a = change_script(0, 10, 10);
        let b = change_script(1, 10, 10);
        assert!(
            a.contains("skip=4096 ") && b.contains("skip=8192 "),
            "{a}\n{b}"
        );
        assert!(
            change_script(254, 1, 0).contains("skip=1044480 ")
                && !change_script(254, 1, 0).contains("shm")
        );
        // The offset never reaches 1 MiB, so src = change + 1 MiB suffices.
        assert!((0..1000).all(|k| (k % 255 + 1) * 4096 < 1 << 20));
    }
}
