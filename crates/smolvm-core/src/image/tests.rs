//! Tests of the public API: names, bases, and a real `tiny` build (downloads
//! the kernel and busybox packages once into a cache shared by test runs).

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

#[test]
fn name_rule() {
    for ok in ["a", "0", "dev", "my-image_2", &"a".repeat(64)] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "_a",
        "a_",
        "A",
        "a.b",
        "a/b",
        "..",
        ".tmp-x",
        "a b",
        "é",
        &"a".repeat(65),
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn base_round_trip() {
    for b in [Base::Tiny, Base::Debian] {
        assert_eq!(b.to_string().parse::<Base>().unwrap(), b);
    }
    assert!("alpine"
        .parse::<Base>()
        .unwrap_err()
        .to_string()
        .contains("'tiny' or 'debian'"));
}

#[test]
fn messages_say_what_to_do() {
    let e = ImageError::AlreadyExists { name: "x".into() };
    assert_eq!(
        e.to_string(),
        "Image 'x' already exists; delete it with 'smolvm image delete x' or pick another --name"
    );
    let e = ImageError::NotFound { name: "x".into() };
    assert!(e.to_string().contains("smolvm image build --name x"));
}

#[test]
fn missing_images() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::new(t.path());
    assert!(store.list().unwrap().is_empty());
    assert!(matches!(
        store.get("nope"),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("nope"),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        store.get("../etc"),
        Err(ImageError::InvalidName { .. })
    ));
}

/// Programs a real build needs; without them the build test is skipped.
const BUILD_TOOLS: &[&str] = &[
    "apt-get",
    "apt-cache",
    "dpkg-deb",
    "lz4",
    "gzip",
    "mkfs.ext4",
    "debugfs",
];

fn debugfs(image: &Path, request: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("run debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds a real `tiny` image, with the static busybox standing in for the
/// agent, then reads it back, refuses a duplicate, and deletes it.
#[test]
fn builds_a_tiny_image() {
    if let Some(t) = BUILD_TOOLS.iter().find(|t| util::find_program(t).is_none()) {
        eprintln!(
            "SKIPPED builds_a_tiny_image: '{t}' is not installed (run scripts/setup-host.sh)"
        );
        return;
    }
    // Downloads are shared between runs; images are not.
    let cache = std::env::var_os("SMOLVM_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "smolvm-test-cache-{}",
                rustix::process::getuid().as_raw()
            ))
        });
    fs::create_dir_all(&cache).unwrap();
    let busybox = match packages::busybox(&cache, &mut |_| {}) {
        Err(ImageError::NoPackageLists { .. }) => {
            eprintln!("SKIPPED builds_a_tiny_image: apt has no package lists (run apt-get update)");
            return;
        }
        r => r.expect("fetch busybox-static"),
    };
    let data = tempfile::tempdir().unwrap();
    let store = ImageStore::new(data.path()).with_cache_dir(&cache);

    let started = std::time::Instant::now();
    let mut steps = Vec::new();
    let img = store
        .build("t1", Base::Tiny, &busybox, &mut |s| {
            steps.push(s.to_string())
        })
        .unwrap_or_else(|e| panic!("build failed: {e}"));
    eprintln!(
        "tiny build took {:?} ({} MB on disk): {steps:?}",
        started.elapsed(),
        img.size_bytes >> 20
    );

    assert_eq!(img.name, "t1");
    assert_eq!(img.base, Base::Tiny);
    assert!(
        img.kernel_version.contains("cloud-amd64"),
        "{}",
        img.kernel_version
    );
    assert!(img.size_bytes > 0);
    assert_eq!(store.get("t1").unwrap(), img);
    assert_eq!(store.list().unwrap(), vec![img.clone()]);
    let vmlinux = fs::read(img.vmlinux()).unwrap();
    assert!(elf::header(&vmlinux).unwrap().sections_end <= vmlinux.len() as u64);
    assert_eq!(fs::metadata(img.rootfs()).unwrap().len(), 1 << 30);

    // Root filesystem content, read without mounting.
    let bin = debugfs(&img.rootfs(), "ls -l /usr/local/bin");
    assert!(bin.contains("smolvm-agent"), "{bin}");
    let init = debugfs(&img.rootfs(), "stat /sbin/init");
    assert!(init.contains("/usr/local/bin/smolvm-agent"), "{init}");
    let sh = debugfs(&img.rootfs(), "stat /bin/sh");
    assert!(sh.contains("Type: symlink"), "{sh}");
    let passwd = debugfs(&img.rootfs(), "cat /etc/passwd");
    assert_eq!(passwd, "root:x:0:0:root:/root:/bin/sh\n");

    // The initramfs holds init, busybox and the modules in load order.
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | cpio -it --quiet")
        .arg("sh")
        .arg(img.initramfs())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "init",
        "bin/busybox",
        "lib/modules/virtio_blk.ko",
        "etc/smolvm-modules",
    ] {
        assert!(
            listing.lines().any(|l| l == f),
            "{f} missing from the initramfs"
        );
    }

    // Immutable: a second build of the same name is refused, leaving no temp dir.
    let err = store
        .build("t1", Base::Tiny, &busybox, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::AlreadyExists { .. }), "{err}");
    // A dynamically linked agent is refused before anything is built.
    let err = store
        .build("t2", Base::Tiny, Path::new("/bin/sh"), &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::Agent { .. }), "{err}");
    let leftovers: Vec<_> = fs::read_dir(store.images_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("t1")]);

    store.delete("t1").unwrap();
    assert!(matches!(store.get("t1"), Err(ImageError::NotFound { .. })));
    assert!(store.list().unwrap().is_empty());
}
