//! The Firecracker backend against a real `firecracker` binary (found
//! through SMOLVM_FIRECRACKER_BIN or PATH; these tests say SKIPPED and pass
//! without one). The guest is `counter_guest`: a few hundred bytes of our
//! own machine code that counts in memory and prints the count, because
//! ordinary kernels cannot boot under Firecracker on every host we run on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_until, Env};
use crate::counter_guest;

/// The firecracker binary, or None after saying why the test is skipped.
fn firecracker() -> Option<PathBuf> {
    let found = match std::env::var_os("SMOLVM_FIRECRACKER_BIN").filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("firecracker")).find(|p| p.is_file()),
    };
    let Some(bin) = found else {
        skipped("firecracker not found (set SMOLVM_FIRECRACKER_BIN or put it on PATH)");
        return None;
    };
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        skipped("firecracker needs a read-write /dev/kvm");
        return None;
    }
    Some(bin)
}

/// Says so on the terminal: written to the stderr descriptor directly,
/// which the test harness does not capture (it captures `eprintln!`).
fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// An `Env` whose commands use Firecracker and a private image directory.
struct Fc {
    env: Env,
    bin: PathBuf,
}

impl Fc {
    fn new(bin: PathBuf) -> Fc {
        let fc = Fc { env: Env::new(), bin };
        let elf = fc.env.data.path().join("counter.elf");
        // ~30 counts a second under PVM's instruction emulator.
        std::fs::write(&elf, counter_guest::elf(10_000)).unwrap();
        let (v, code) =
            fc.json(&["image", "import", "--name", "counter", "--kernel", elf.to_str().unwrap(), "--ready-console", counter_guest::READY_TEXT]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["data"]["image"]["ready"]["agent"], false, "{v}");
        fc
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.env.command(args);
        cmd.env("SMOLVM_FIRECRACKER_BIN", &self.bin)
            .env("SMOLVM_BACKEND", "firecracker")
            .env("SMOLVM_IMAGE_DIR", self.env.data.path().join("images"))
            .env("SMOLVM_IMAGE", "counter")
            .env_remove("SMOLVM_ACCEL");
        cmd
    }

    fn json(&self, args: &[&str]) -> (Value, i32) {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = self.command(&all).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("smolvm {all:?}: stdout is not JSON ({e}): {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        });
        (v, out.status.code().unwrap_or(-1))
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (v, code) = self.json(args);
        assert_eq!(code, 0, "smolvm {args:?}: {v}");
        v
    }

    fn console(&self, name: &str) -> PathBuf {
        self.env.sandbox_dir(name).join("console.log")
    }

    /// Console bytes so far (output after this is newer).
    fn offset(&self, name: &str) -> usize {
        std::fs::metadata(self.console(name)).map(|m| m.len() as usize).unwrap_or(0)
    }

    /// Counts printed after `from`, skipping a line the guest may have
    /// been in the middle of.
    fn counts_since(&self, name: &str, from: usize) -> Vec<u64> {
        let text = std::fs::read(self.console(name)).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
        let whole = new.find('\n').map_or("", |i| &new[i + 1..]);
        counter_guest::counts(whole)
    }

    fn last_count(&self, name: &str) -> u64 {
        *counter_guest::counts(&String::from_utf8_lossy(&std::fs::read(self.console(name)).unwrap())).last().expect("the guest printed a count")
    }

    /// Pauses `name` and returns the last count it printed.
    fn pause(&self, name: &str) -> u64 {
        self.ok(&["sandbox", "pause", name]);
        self.last_count(name)
    }

    /// Waits until the guest printed `more` counts after `from`.
    fn wait_counts(&self, name: &str, from: usize, more: usize) -> Vec<u64> {
        let ok = wait_until(Duration::from_secs(20), || self.counts_since(name, from).len() >= more);
        let counts = self.counts_since(name, from);
        assert!(ok, "{name} printed only {counts:?} after byte {from}; console: {:?}; vmm.log: {}", String::from_utf8_lossy(&std::fs::read(self.console(name)).unwrap_or_default()), std::fs::read_to_string(self.env.sandbox_dir(name).join("vmm.log")).unwrap_or_default());
        counts
    }

    /// Restores `id` (running), checking the guest continues from `at`.
    fn restore_continues(&self, id: &str, name: &str, at: u64, extra: &[&str]) -> Value {
        let from = self.offset(name);
        let mut args = vec!["sandbox", "snapshot", "restore", id, "--resume"];
        args.extend_from_slice(extra);
        let v = self.ok(&args);
        let counts = self.wait_counts(name, from, 5);
        assert!(
            (at..=at + 2).contains(&counts[0]),
            "after restoring {id} the count went on from {} but the snapshot was taken at {at}: {counts:?}",
            counts[0]
        );
        assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{counts:?}");
        v
    }

    fn firecracker_pids(&self) -> Vec<i32> {
        self.env.vmm_pids()
    }
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

#[test]
fn counter_guest_full_and_diff_snapshots_restore_where_they_were() {
    let Some(bin) = firecracker() else { return };
    let fc = Fc::new(bin);
    let v = fc.ok(&["sandbox", "create", "--name", "c", "--memory", "128", "--network", "none"]);
    assert_eq!(v["data"]["vm"]["backend"], "firecracker", "{v}");
    let info = fc.ok(&["sandbox", "info", "c"]);
    assert!(info["data"]["vm"]["vmm_version"].as_str().unwrap().starts_with("Firecracker v"), "{info}");
    fc.wait_counts("c", 0, 3);

    // Full snapshot of the paused guest.
    let full_at = fc.pause("c");
    let full = fc.ok(&["sandbox", "snapshot", "create", "c", "--snapshot-id", "f1"]);
    let s = &full["data"]["snapshot"];
    assert_eq!((s["snapshot_type"].as_str(), s["parent"].as_str()), (Some("full"), None), "{full}");
    let mem = PathBuf::from(s["artifacts"]["memory_path"].as_str().unwrap());
    assert!(PathBuf::from(s["artifacts"]["state_path"].as_str().unwrap()).is_file(), "{full}");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 << 20);
    assert!(allocated(&mem) < 8 << 20, "zero pages of a Full memory file become holes: {} bytes", allocated(&mem));
    assert_eq!(fc.last_count("c"), full_at, "a snapshot of a paused guest leaves it paused");

    // Diff snapshots: only the pages dirtied since the previous one.
    fc.ok(&["sandbox", "resume", "c"]);
    let from = fc.offset("c");
    fc.wait_counts("c", from, 5);
    let diff_at = fc.pause("c");
    let diff = fc.ok(&["sandbox", "snapshot", "create", "c", "--snapshot-id", "d1", "--snapshot-type", "diff"]);
    let s = &diff["data"]["snapshot"];
    assert_eq!((s["snapshot_type"].as_str(), s["parent"].as_str()), (Some("diff"), Some("f1")), "{diff}");
    let dmem = PathBuf::from(s["artifacts"]["memory_path"].as_str().unwrap());
    assert!(allocated(&dmem) < 1 << 20, "a diff holds the dirtied pages only: {} bytes", allocated(&dmem));
    fc.ok(&["sandbox", "resume", "c"]);
    let from = fc.offset("c");
    fc.wait_counts("c", from, 3);
    let diff2_at = fc.pause("c");
    let diff2 = fc.ok(&["sandbox", "snapshot", "create", "c", "--snapshot-id", "d2", "--snapshot-type", "diff"]);
    assert_eq!(diff2["data"]["snapshot"]["parent"], "d1", "{diff2}");
    let manifest: Value = serde_json::from_slice(&std::fs::read(fc.env.data.path().join("snapshots/d2/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["memory_base"], "d1", "{manifest}");

    // Restore each: the count goes on from the snapshot's value.
    fc.restore_continues("f1", "c", full_at, &[]);
    fc.pause("c");
    fc.restore_continues("d1", "c", diff_at, &[]);
    fc.pause("c");
    fc.restore_continues("d2", "c", diff2_at, &[]);

    // A restored snapshot needs --force, and never while its guest runs.
    let (v, code) = fc.json(&["sandbox", "snapshot", "restore", "d2", "--force"]);
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["error"]["code"], "refused", "{v}");

    // The source deleted: the snapshots restore on their own files.
    fc.ok(&["sandbox", "delete", "c"]);
    assert!(fc.firecracker_pids().is_empty());
    fc.restore_continues("d1", "c", diff_at, &["--force"]);
    // And twice with --force (the guard wants the sandbox stopped first).
    fc.ok(&["sandbox", "stop", "c"]);
    fc.restore_continues("f1", "c", full_at, &["--force"]);
    fc.ok(&["sandbox", "stop", "c"]);
    fc.restore_continues("f1", "c", full_at, &["--force"]);

    // A diff after a restore builds on the restored snapshot.
    let from = fc.offset("c");
    fc.wait_counts("c", from, 3);
    let d3_at = fc.pause("c");
    let d3 = fc.ok(&["sandbox", "snapshot", "create", "c", "--snapshot-id", "d3", "--snapshot-type", "diff"]);
    assert_eq!(d3["data"]["snapshot"]["parent"], "f1", "{d3}");
    fc.ok(&["sandbox", "delete", "c"]);
    fc.restore_continues("d3", "c", d3_at, &[]);

    // Deleting a base folds its memory into the diffs built on it.
    fc.ok(&["sandbox", "stop", "c"]);
    fc.ok(&["sandbox", "snapshot", "delete", "d1"]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(fc.env.data.path().join("snapshots/d2/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["memory_base"], "f1", "{manifest}");
    fc.restore_continues("d2", "c", diff2_at, &["--force"]);
    let (v, code) = fc.json(&["sandbox", "snapshot", "verify", "d2"]);
    assert_eq!(code, 0, "{v}");

    fc.ok(&["sandbox", "delete", "c"]);
    assert!(fc.firecracker_pids().is_empty());
    assert!(!fc.env.sandbox_dir("c").exists());
}

#[test]
fn counter_guest_disk_snapshot_boots_again_and_lifecycle_cleans_up() {
    let Some(bin) = firecracker() else { return };
    let fc = Fc::new(bin);
    fc.ok(&["sandbox", "create", "--name", "d", "--memory", "128", "--network", "none"]);
    fc.wait_counts("d", 0, 5);
    // No agent to flush through: a crash-consistent disk is all there is.
    let v = fc.ok(&["sandbox", "snapshot", "create", "d", "--snapshot-id", "disk1", "--snapshot-type", "disk", "--flush-policy", "skip", "--resume-source"]);
    assert_eq!(v["data"]["snapshot"]["artifacts"]["memory_path"], Value::Null, "{v}");
    // Paused, so nothing the source prints lands after the offset.
    fc.pause("d");
    let from = fc.offset("d");
    fc.ok(&["sandbox", "snapshot", "restore", "disk1", "--resume"]);
    let counts = fc.wait_counts("d", from, 3);
    assert!(counts[0] <= 2, "a disk snapshot boots afresh: {counts:?}");

    // stop, start, pause, resume, and nothing left behind.
    let dir = fc.env.sandbox_dir("d");
    fc.ok(&["sandbox", "stop", "d"]);
    assert!(fc.firecracker_pids().is_empty());
    for f in ["api.sock", "vsock.sock", "firecracker.json"] {
        assert!(!dir.join(f).exists(), "{f} is left after stop");
    }
    let from = fc.offset("d");
    fc.ok(&["sandbox", "start", "d"]);
    fc.wait_counts("d", from, 2);
    let at = fc.pause("d");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fc.last_count("d"), at, "a paused guest does not run");
    fc.ok(&["sandbox", "resume", "d"]);
    let from = fc.offset("d");
    fc.wait_counts("d", from, 2);
    fc.ok(&["sandbox", "delete", "d"]);
    assert!(fc.firecracker_pids().is_empty());
    let layers: Vec<_> = std::fs::read_dir(fc.env.data.path().join("layers")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(layers.iter().all(|n| n.to_string_lossy().ends_with(".raw")), "{layers:?}");
}

#[test]
fn missing_firecracker_says_where_to_get_it() {
    let env = Env::new();
    let out = env
        .command(&["sandbox", "create", "--name", "x", "--backend", "firecracker", "--json"])
        .env("SMOLVM_FIRECRACKER_BIN", "/nonexistent/firecracker")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "missing_dependency", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("github.com/firecracker-microvm/firecracker") && msg.contains("SMOLVM_FIRECRACKER_BIN"), "{msg}");
}

#[test]
fn firecracker_refuses_what_it_cannot_run() {
    let Some(bin) = firecracker() else { return };
    let fc = Fc::new(bin);
    let (v, code) = fc.json(&["sandbox", "create", "--name", "p", "--network", "none", "--port", "8080:80"]);
    assert_ne!(code, 0, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--backend qemu"), "{v}");
    let (v, code) = fc.json(&["sandbox", "create", "--name", "t", "--network", "none", "--accel", "tcg"]);
    assert_ne!(code, 0, "{v}");
    assert!(fc.firecracker_pids().is_empty());
}

#[test]
fn counter_guest_on_a_tap_network_keeps_its_own_tap_across_restores() {
    let Some(bin) = firecracker() else { return };
    if !rustix::process::geteuid().is_root() {
        skipped("tap devices need root");
        return;
    }
    let fc = Fc::new(bin);
    let v = fc.ok(&["sandbox", "create", "--name", "net", "--memory", "128", "--network", "user"]);
    assert_eq!(v["ok"], true);
    let info = fc.ok(&["sandbox", "info", "net"]);
    let ip = info["data"]["vm"]["ip_address"].as_str().unwrap().to_string();
    let record: Value = serde_json::from_slice(&std::fs::read(fc.env.sandbox_dir("net").join("firecracker.json")).unwrap()).unwrap();
    let tap = record["tap"].as_str().unwrap().to_string();
    assert!(tap.len() <= 15, "{tap}");
    let tap_dir = Path::new("/sys/class/net").join(&tap);
    assert!(tap_dir.exists(), "tap {tap} exists while the sandbox runs");
    let at = fc.pause("net");
    fc.ok(&["sandbox", "snapshot", "create", "net", "--snapshot-id", "n1"]);
    // The restored guest gets its own sandbox's tap again (network_overrides).
    fc.restore_continues("n1", "net", at, &[]);
    assert!(tap_dir.exists());
    assert_eq!(fc.ok(&["sandbox", "info", "net"])["data"]["vm"]["ip_address"], ip.as_str());
    fc.ok(&["sandbox", "stop", "net"]);
    assert!(!tap_dir.exists(), "stop removes the tap");
    fc.ok(&["sandbox", "start", "net"]);
    assert!(tap_dir.exists());
    fc.ok(&["sandbox", "delete", "net"]);
    assert!(!tap_dir.exists(), "delete removes the tap");
}

#[test]
fn a_snapshot_this_firecracker_cannot_load_is_refused_before_anything_changes() {
    let Some(bin) = firecracker() else { return };
    let fc = Fc::new(bin.clone());
    fc.ok(&["sandbox", "create", "--name", "v", "--memory", "128", "--network", "none"]);
    fc.wait_counts("v", 0, 2);
    fc.ok(&["sandbox", "snapshot", "create", "v", "--snapshot-id", "v1", "--resume-source"]);
    // The same binary, claiming a snapshot format from the future.
    let wrapper = fc.env.data.path().join("firecracker-next");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\n[ \"$1\" = --snapshot-version ] && {{ echo v99.0.0; exit 0; }}\n[ \"$1\" = --version ] && {{ echo 'Firecracker v9.9.9'; exit 0; }}\nexec '{}' \"$@\"\n", bin.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fc.command(&["sandbox", "snapshot", "restore", "v1", "--json"]).env("SMOLVM_FIRECRACKER_BIN", &wrapper).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], "refused", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot load") && msg.contains("snapshot format v10"), "{msg}");
    // Nothing changed: the sandbox still runs its guest.
    assert_eq!(fc.ok(&["sandbox", "info", "v"])["data"]["vm"]["status"], "running");
    let from = fc.offset("v");
    fc.wait_counts("v", from, 2);
    let manifest: Value = serde_json::from_slice(&std::fs::read(fc.env.data.path().join("snapshots/v1/manifest.json")).unwrap()).unwrap();
    assert!(manifest["vmm_version"].as_str().unwrap().starts_with("Firecracker v"), "{manifest}");
    fc.ok(&["sandbox", "delete", "v"]);
}

#[test]
fn crashes_during_firecracker_snapshots_leave_a_running_guest_and_restorable_snapshots() {
    let Some(bin) = firecracker() else { return };
    let fc = Fc::new(bin);
    fc.ok(&["sandbox", "create", "--name", "cr", "--memory", "128", "--network", "none"]);
    fc.wait_counts("cr", 0, 2);
    fc.ok(&["sandbox", "snapshot", "create", "cr", "--snapshot-id", "base", "--resume-source"]);
    let steps = ["snapshot.paused", "snapshot.sealed", "snapshot.memory_saved", "snapshot.resumed", "snapshot.published"];
    for (i, step) in steps.iter().enumerate() {
        let id = format!("c{i}");
        let out = fc.command(&["sandbox", "snapshot", "create", "cr", "--snapshot-id", &id, "--snapshot-type", "diff", "--resume-source"])
            .env("SMOLVM_CRASH_AT", step)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), None, "{step}: smolvm should have aborted: {}", String::from_utf8_lossy(&out.stderr));
        // The next command recovers: the guest runs on, one VMM, and the
        // next diff snapshot restores where it was taken.
        let info = fc.ok(&["sandbox", "info", "cr"]);
        assert_eq!(info["data"]["vm"]["status"], "running", "{step}: {info}");
        assert_eq!(fc.firecracker_pids().len(), 1, "{step}");
        let from = fc.offset("cr");
        fc.wait_counts("cr", from, 2);
        let at = fc.pause("cr");
        let after = format!("after{i}");
        fc.ok(&["sandbox", "snapshot", "create", "cr", "--snapshot-id", &after, "--snapshot-type", "diff"]);
        fc.restore_continues(&after, "cr", at, &[]);
        let list = fc.ok(&["sandbox", "snapshot", "list"]);
        for s in list["data"]["snapshots"].as_array().unwrap() {
            let id = s["snapshot_id"].as_str().unwrap();
            let (v, code) = fc.json(&["sandbox", "snapshot", "verify", id]);
            assert_eq!(code, 0, "{step}: {id} is listed but not intact: {v}");
        }
    }
    fc.ok(&["sandbox", "delete", "cr"]);
}
