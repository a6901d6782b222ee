//! A full disk: snapshot create checks free space first, and survives
//! ENOSPC in the middle of writing memory (partial files removed, source
//! resumed, a clear error). Also: the permissions of what smolvm creates.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::common::Env;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// A data dir on its own small tmpfs; None (test skipped) without root.
fn small_data_dir(env: &Env, mib: u64) -> Option<std::path::PathBuf> {
    let dir = env.data.path().join("small");
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"]).arg(&dir).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return None;
    }
    Some(dir)
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_refused_up_front_and_enospc_mid_write_leaves_nothing() {
    let env = Env::new();
    env.create("full", &[]);
    // Permissions: private data dir and sandbox dir, sockets and memory 0600.
    assert_eq!(mode(env.data.path()), 0o700);
    assert_eq!(mode(&env.sandbox_dir("full")), 0o700);
    for sock in ["qmp.sock", "agent-0.sock"] {
        assert_eq!(mode(&env.sandbox_dir("full").join(sock)) & 0o077, 0, "{sock} is private");
    }
    for layer in std::fs::read_dir(env.data.path().join("layers")).unwrap().flatten() {
        assert_eq!(mode(&layer.path()) & 0o077, 0, "disk layers are private");
    }

    let Some(small) = small_data_dir(&env, 400) else { return };
    let _unmount = Unmount(small.clone());
    // Snapshots live on the small filesystem (bind-mounted over snapshots/:
    // smolvm refuses a symlinked one).
    let target = env.data.path().join("snapshots");
    let ok = Command::new("mount").args(["--bind"]).arg(&small).arg(&target).status().unwrap();
    assert!(ok.success());
    let _unbind = Unmount(target.clone());

    // 1. Not enough space for the memory: refused before the guest is paused.
    let filler = target.join("filler");
    Command::new("fallocate").args(["-l", "150M"]).arg(&filler).status().unwrap();
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "full", "--snapshot-id", "big", "--resume-source"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Not enough free space"), "{v}");
    let (info, _) = env.json(&["sandbox", "info", "full"]);
    assert_eq!(info["data"]["vm"]["status"], "running");
    std::fs::remove_file(&filler).unwrap();

    // 2. Space runs out while memory is written: another writer fills the
    //    disk right after the free-space check.
    let mut saw_enospc = false;
    for (attempt, delay) in [150u64, 300, 60].into_iter().enumerate() {
        env.sh("full", "head -c 60000000 /dev/urandom > /dev/shm/fill"); // make memory worth writing
        let id = format!("mid{attempt}");
        let child = env.command(&["sandbox", "snapshot", "create", "full", "--snapshot-id", &id, "--resume-source", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = Command::new("fallocate").args(["-l", "330M"]).arg(&filler).status();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&filler);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&target).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with('.')).collect();
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
        let (info, _) = env.json(&["sandbox", "info", "full"]);
        assert_eq!(info["data"]["vm"]["status"], "running", "the source is resumed: {v}");
        assert_eq!(env.sh("full", "echo ok").trim(), "ok");
        if v["ok"] == false {
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains("space") || msg.contains("No space"), "a clear error: {msg}");
            let (list, _) = env.json(&["sandbox", "snapshot", "list"]);
            assert!(list["data"]["snapshots"].as_array().unwrap().iter().all(|s| s["snapshot_id"] != id.as_str()));
            saw_enospc = true;
            break;
        }
        env.ok(&["sandbox", "snapshot", "delete", &id]);
    }
    assert!(saw_enospc, "the filler never won the race; ENOSPC mid-write was not exercised");
}
