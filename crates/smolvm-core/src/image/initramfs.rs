//! The initramfs: a gzip-compressed newc cpio archive with a static busybox,
//! the guest kernel modules and `/init` (init.sh). The cpio format is written
//! here (it is a few fixed headers); compression uses the `gzip` program.
//! Entries are root-owned with mtime 0, so the archive is reproducible and
//! needs no privileges to build (device nodes included).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::kernel::Module;
use super::util::{self, run};
use super::ImageError;

/// The initramfs /init script.
pub(crate) const INIT_SCRIPT: &str = include_str!("init.sh");

/// Busybox applets init.sh calls (as commands, not shell builtins).
const INIT_APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "insmod",
    "sleep",
    "switch_root",
    "poweroff",
    "reboot",
    "cat",
    "mkdir",
    "ls",
    "dmesg",
];

/// Where the load order of the modules is written inside the initramfs.
const MODULE_LIST: &str = "etc/smolvm-modules";

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a newc ("070701") cpio archive. Names are relative ("bin/sh");
/// parents must be added before their children, as the kernel unpacks in order.
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }

    pub(crate) fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, &[], (0, 0))
    }

    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, data, (0, 0))
    }

    pub(crate) fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0))
    }

    pub(crate) fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, &[], (major, minor))
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        // Pad to 512 bytes as cpio(1) does; harmless for the kernel.
        let pad = (512 - (self.written % 512) as usize) % 512;
        self.put(&vec![0u8; pad])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes the uncompressed archive for `busybox` and `modules` to `out`.
fn write_archive<W: Write>(out: W, busybox: &[u8], modules: &[Module]) -> io::Result<W> {
    let mut w = CpioWriter::new(out);
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "sys",
        "tmp",
    ] {
        w.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for applet in INIT_APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    w.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    let mut list = String::new();
    for m in modules {
        w.file(&format!("lib/modules/{}.ko", m.name), 0o644, &m.data)?;
        list.push_str(&m.name);
        list.push('\n');
    }
    w.file(MODULE_LIST, 0o644, list.as_bytes())?;
    w.finish()
}

/// Builds `dest` (initramfs.cpio.gz): the archive goes to a temp file next to
/// it, then through `gzip -9 -n`.
pub(crate) fn build(busybox: &Path, modules: &[Module], dest: &Path) -> Result<(), ImageError> {
    let bb = fs::read(busybox).map_err(ImageError::io("read", busybox))?;
    let cpio_path = dest.with_extension(format!("cpio-{}", util::random_suffix()));
    let result = (|| {
        let file = File::create(&cpio_path).map_err(ImageError::io("create", &cpio_path))?;
        write_archive(BufWriter::new(file), &bb, modules)
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(ImageError::io("write", &cpio_path))?;
        let input = File::open(&cpio_path).map_err(ImageError::io("open", &cpio_path))?;
        let output = File::create(dest).map_err(ImageError::io("create", dest))?;
        let mut cmd = Command::new("gzip");
        cmd.args(["-9", "-n", "-c"])
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(output));
        run(&mut cmd, "install the gzip package").map(|_| ())
    })();
    let _ = fs::remove_file(&cpio_path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cpio_available() -> bool {
        util::find_program("cpio").is_some()
    }

    /// Runs `cpio` with `args` on `archive` inside `dir`, returning stdout.
    fn cpio(dir: &Path, args: &[&str], archive: &[u8]) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(archive)
            .expect("feed cpio");
        let out = child.wait_with_output().expect("cpio");
        assert!(
            out.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn cpio_roundtrip_with_real_cpio() {
        if !cpio_available() {
            eprintln!("skipped: no cpio program");
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.dir("etc", 0o700).unwrap();
        w.file("bin/tool", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("etc/odd", 0o640, b"12345").unwrap(); // length not a multiple of 4
        w.file("etc/empty", 0o644, b"").unwrap();
        w.symlink("bin/sh", "tool").unwrap();
        let archive = w.finish().unwrap();
        assert_eq!(archive.len() % 512, 0);

        let tmp = tempfile::tempdir().unwrap();
        cpio(
            tmp.path(),
            &["-idm", "--quiet", "--no-absolute-filenames"],
            &archive,
        );
        let p = tmp.path();
        assert_eq!(
            fs::read(p.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(fs::read(p.join("etc/odd")).unwrap(), b"12345");
        assert_eq!(fs::read(p.join("etc/empty")).unwrap(), b"");
        assert_eq!(fs::read_link(p.join("bin/sh")).unwrap(), Path::new("tool"));
        let mode = |f: &str| fs::metadata(p.join(f)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin/tool"), 0o755);
        assert_eq!(mode("etc/odd"), 0o640);
        assert_eq!(mode("etc"), 0o700);
    }

    #[test]
    fn initramfs_layout_lists_in_order() {
        if !cpio_available() {
            eprintln!("skipped: no cpio program");
            return;
        }
        let modules = vec![
            Module {
                name: "virtio_ring".into(),
                data: b"ring".to_vec(),
            },
            Module {
                name: "virtio".into(),
                data: b"virtio".to_vec(),
            },
        ];
        let archive = write_archive(Vec::new(), b"BB", &modules).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let listing = cpio(tmp.path(), &["-itv", "--quiet"], &archive);
        assert!(listing.contains("dev/console"), "{listing}");
        assert!(listing
            .lines()
            .any(|l| l.starts_with('c') && l.ends_with("dev/console")));
        let names: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert!(pos("bin") < pos("bin/busybox"));
        assert!(pos("lib/modules/virtio_ring.ko") < pos("lib/modules/virtio.ko"));
        assert!(pos("init") > 0);

        let out = tmp.path().join("x");
        fs::create_dir(&out).unwrap();
        cpio(
            &out,
            &[
                "-idm",
                "--quiet",
                "--no-absolute-filenames",
                "init",
                "etc/smolvm-modules",
            ],
            &archive,
        );
        assert_eq!(
            fs::read_to_string(out.join("etc/smolvm-modules")).unwrap(),
            "virtio_ring\nvirtio\n"
        );
        assert_eq!(fs::read_to_string(out.join("init")).unwrap(), INIT_SCRIPT);
    }

    #[test]
    fn init_script_is_posix_sh() {
        // `sh -n` parses without running; dash is stricter than busybox ash.
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(INIT_SCRIPT)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(INIT_SCRIPT.contains("smolvm-initramfs:"));
        assert!(INIT_SCRIPT.contains("exec switch_root /newroot"));
    }
}
