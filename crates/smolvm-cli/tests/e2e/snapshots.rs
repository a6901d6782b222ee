//! Snapshots against real guests: memory continuity, disk state, chains,
//! guards, and the five-cycle test other products fail.

use std::collections::HashSet;
use std::process::Command;

use serde_json::Value;

use crate::common::Env;

fn snap(env: &Env, args: &[&str]) -> Value {
    let mut all = vec!["sandbox", "snapshot"];
    all.extend_from_slice(args);
    let (v, code) = env.json(&all);
    assert_eq!(code, 0, "snapshot {args:?}: {v}");
    v
}

fn counter(env: &Env, name: &str) -> u64 {
    env.sh(name, "cat /tmp/count").trim().parse().unwrap()
}

/// Every layer and no process, socket or lock is left in a bad state.
fn assert_layers_clean(env: &Env) {
    let layers = env.data.path().join("layers");
    for entry in std::fs::read_dir(&layers).unwrap().flatten() {
        let out = Command::new("qemu-img").args(["check", "-U", "-q", "-f", "qcow2"]).arg(entry.path()).output().unwrap();
        assert!(out.status.success(), "qemu-img check {:?}: {}", entry.path(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn memory_continuity_and_disk_state_after_restore() {
    let env = Env::new();
    env.create("mem", &[]);
    env.sh("mem", "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done' </dev/null >/dev/null 2>&1 &");
    env.sh("mem", "echo before > /root/f; sync");
    assert!(crate::common::wait_until(std::time::Duration::from_secs(5), || counter(&env, "mem") > 3));
    let before = counter(&env, "mem");
    let pid = env.sh("mem", "pgrep -f 'i=0; while' | head -n1");

    let v = snap(&env, &["create", "mem", "--snapshot-id", "m1"]);
    let row = &v["data"]["snapshot"];
    assert_eq!(v["command"], "sandbox.snapshot.create");
    for field in ["snapshot_id", "vm_id", "backend", "snapshot_type", "restored", "restored_vm_id", "created_at", "artifacts", "size_bytes", "parent", "pause_ms"] {
        assert!(row.get(field).is_some(), "SnapshotRow lacks {field}: {row}");
    }
    assert_eq!(row["snapshot_type"], "full");
    assert_eq!(row["backend"], "qemu");
    assert!(row["size_bytes"].as_u64().unwrap() > 0);
    let mem_path = row["artifacts"]["memory_path"].as_str().unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(mem_path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "memory files hold guest secrets");
    // Without --resume-source the source stays paused.
    let (info, _) = env.json(&["sandbox", "info", "mem"]);
    assert_eq!(info["data"]["vm"]["status"], "paused");

    env.ok(&["sandbox", "resume", "mem"]);
    env.sh("mem", "echo after > /root/f; sync");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let later = counter(&env, "mem");
    assert!(later > before + 5, "the counter runs: {before} -> {later}");

    let v = snap(&env, &["restore", "m1", "--resume"]);
    assert_eq!(v["data"]["vm"]["status"], "running");
    assert_eq!(v["data"]["snapshot"]["restored"], true);
    assert_eq!(v["data"]["snapshot"]["restored_vm_id"], "mem");
    let restored = counter(&env, "mem");
    assert!(restored >= before && restored < later, "counter continues from the snapshot: before {before}, restored {restored}, later {later}");
    assert_eq!(env.sh("mem", "pgrep -f 'i=0; while' | head -n1"), pid, "the same process continues");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(counter(&env, "mem") > restored, "and keeps counting");
    assert_eq!(env.sh("mem", "cat /root/f").trim(), "before");
    // The guest clock is set from the host on restore.
    let guest: f64 = env.sh("mem", "date +%s").trim().parse().unwrap();
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((guest - host).abs() < 3.0, "guest clock {guest} vs host {host}");
    assert_layers_clean(&env);
}

#[test]
fn restore_after_delete_twice_with_force_and_guards() {
    let env = Env::new();
    env.create("gone", &[]);
    env.sh("gone", "echo keep > /root/k; sync");
    snap(&env, &["create", "gone", "--snapshot-id", "g1", "--resume-source"]);
    env.ok(&["sandbox", "delete", "gone"]);
    assert!(!env.sandbox_dir("gone").exists());

    let v = snap(&env, &["restore", "g1", "--resume"]);
    assert_eq!(v["data"]["vm"]["name"], "gone");
    assert_eq!(env.sh("gone", "cat /root/k").trim(), "keep");

    // Second restore: refused without --force, and refused while active.
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "g1"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("already restored"), "{v}");
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "g1", "--force"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("active restored VM"), "{v}");
    assert_eq!(env.sh("gone", "cat /root/k").trim(), "keep", "a refused restore changes nothing");

    env.ok(&["sandbox", "stop", "gone"]);
    snap(&env, &["restore", "g1", "--force", "--resume"]);
    assert_eq!(env.sh("gone", "cat /root/k").trim(), "keep");

    // Unknown and hostile ids.
    for bad in ["../x", "/tmp/x", "snap/001", "UP"] {
        let (v, code) = env.json(&["sandbox", "snapshot", "restore", bad]);
        assert_eq!((code, v["error"]["code"].as_str()), (1, Some("invalid_input")), "{bad}: {v}");
    }
    let (v, code) = env.json(&["sandbox", "snapshot", "delete", "nosuch"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "gone", "--snapshot-id", "g1"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("already exists"), "{v}");
    let (info, _) = env.json(&["sandbox", "info", "gone"]);
    assert_eq!(info["data"]["vm"]["status"], "running", "a refused create leaves the source running");
}

#[test]
fn diff_chain_of_three_restores_and_parent_delete_folds() {
    let env = Env::new();
    env.create("chain", &[]);
    env.sh("chain", "echo 1 > /root/f1; sync");
    snap(&env, &["create", "chain", "--snapshot-id", "d1", "--resume-source"]);
    env.sh("chain", "echo 2 > /root/f2; sync");
    let v = snap(&env, &["create", "chain", "--snapshot-id", "d2", "--snapshot-type", "diff", "--resume-source"]);
    assert_eq!(v["data"]["snapshot"]["parent"], "d1");
    env.sh("chain", "echo 3 > /root/f3; sync");
    let v = snap(&env, &["create", "chain", "--snapshot-id", "d3", "--snapshot-type", "diff", "--resume-source"]);
    assert_eq!(v["data"]["snapshot"]["parent"], "d2");
    // The diff stores only what changed: far less than the disk.
    let disk_bytes = v["data"]["snapshot"]["size_bytes"].as_u64().unwrap();
    assert!(disk_bytes < 512 << 20, "{disk_bytes}");

    for (id, present) in [("d1", "1"), ("d3", "1 2 3"), ("d2", "1 2")] {
        snap(&env, &["restore", id, "--resume", "--force"]);
        let files = env.sh("chain", "cd /root && cat f1 f2 f3 2>/dev/null | tr '\\n' ' '");
        assert_eq!(files.trim(), present, "after restoring {id}");
        env.ok(&["sandbox", "stop", "chain"]);
    }

    // Deleting d2 folds d3 onto d1; d3 still restores whole.
    let v = snap(&env, &["delete", "d2"]);
    assert_eq!(v["data"]["snapshot"]["snapshot_id"], "d2");
    let list = snap(&env, &["list", "--vm-id", "chain"]);
    let rows = list["data"]["snapshots"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["snapshot_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d1", "d3"]);
    assert_eq!(rows[1]["parent"], "d1");
    snap(&env, &["restore", "d3", "--resume", "--force"]);
    assert_eq!(env.sh("chain", "cd /root && cat f1 f2 f3 | tr '\\n' ' '").trim(), "1 2 3");
    assert_layers_clean(&env);
}

#[test]
fn disk_snapshot_contains_unsynced_write_and_five_cycles_keep_everything() {
    let env = Env::new();
    env.create("cyc", &[]);
    // Written without fsync: the agent flushes and freezes before the disk is sealed.
    env.sh("cyc", "echo unsynced > /root/nosync");
    let v = snap(&env, &["create", "cyc", "--snapshot-id", "k1", "--snapshot-type", "disk", "--resume-source"]);
    assert_eq!(v["data"]["snapshot"]["pause_ms"], 0, "a frozen guest needs no pause");
    assert!(v["data"]["snapshot"]["artifacts"]["memory_path"].is_null());
    env.ok(&["sandbox", "delete", "cyc"]);
    snap(&env, &["restore", "k1", "--resume"]);
    assert_eq!(env.sh("cyc", "cat /root/nosync").trim(), "unsynced");

    // Five cycles of: write a new file, snapshot, restore.
    let mut written = Vec::new();
    for i in 0..5 {
        env.sh("cyc", &format!("echo {i} > /root/cycle{i}"));
        written.push(i);
        let id = format!("c{i}");
        snap(&env, &["create", "cyc", "--snapshot-id", &id, "--resume-source"]);
        snap(&env, &["restore", &id, "--resume"]);
        let ls = env.sh("cyc", "ls /root");
        let names: HashSet<&str> = ls.split_whitespace().collect();
        for j in &written {
            assert!(names.contains(format!("cycle{j}").as_str()), "cycle {i}: cycle{j} missing from {names:?}");
        }
    }
    // Deleting snapshots and the sandbox leaves no layer behind.
    for i in 0..5 {
        snap(&env, &["delete", &format!("c{i}")]);
    }
    snap(&env, &["delete", "k1"]);
    env.ok(&["sandbox", "delete", "cyc"]);
    let left: Vec<_> = std::fs::read_dir(env.data.path().join("layers")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "layers left: {left:?}");
    let snaps: Vec<_> = std::fs::read_dir(env.data.path().join("snapshots")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(snaps.is_empty(), "snapshot dirs left: {snaps:?}");
}

#[test]
fn list_and_restore_survive_a_lost_row() {
    let env = Env::new();
    env.create("lost", &[]);
    env.sh("lost", "echo x > /root/x; sync");
    snap(&env, &["create", "lost", "--snapshot-id", "r1", "--resume-source"]);
    let db = env.data.path().join("smolvm.db");
    assert_eq!(delete_row(&db, "r1"), 1);
    let list = snap(&env, &["list"]);
    assert_eq!(list["data"]["snapshots"][0]["snapshot_id"], "r1");
    env.ok(&["sandbox", "delete", "lost"]);
    snap(&env, &["restore", "r1", "--resume"]);
    assert_eq!(env.sh("lost", "cat /root/x").trim(), "x");
}

/// Deletes a snapshot's row behind smolvm's back.
fn delete_row(db: &std::path::Path, id: &str) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute("DELETE FROM snapshots WHERE snapshot_id = ?1", [id]).unwrap()
}
