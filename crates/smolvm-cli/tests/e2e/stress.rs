//! Concurrency and endurance: parallel smolvm processes on shared
//! sandboxes, and many snapshot/restore cycles on one.

use std::process::Stdio;

use crate::common::Env;

/// A tiny deterministic generator (no rand dependency for tests).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn four_processes_times_25_random_operations_leave_a_consistent_state() {
    let env = Env::new();
    env.create("s0", &[]);
    env.create("s1", &[]);
    for s in ["s0", "s1"] {
        let (v, code) = env.json(&["sandbox", "snapshot", "create", s, "--snapshot-id", &format!("{s}-base"), "--resume-source"]);
        assert_eq!(code, 0, "{v}");
    }
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let mut rng = Lcg(w * 7919 + 17);
            let mut ops = Vec::new();
            for i in 0..25 {
                let s = format!("s{}", rng.next(2));
                let op: Vec<String> = match rng.next(8) {
                    0 => vec!["sandbox", "snapshot", "create", &s, "--snapshot-id", &format!("w{w}-{i}"), "--resume-source"].into_iter().map(String::from).collect(),
                    1 => vec!["sandbox", "snapshot", "restore", &format!("{s}-base"), "--resume", "--force"].into_iter().map(String::from).collect(),
                    2 => vec!["sandbox", "snapshot", "delete", &format!("w{}-{}", rng.next(4), rng.next(25))].into_iter().map(String::from).collect(),
                    3 | 4 => vec!["sandbox", "exec", &s, "--start", "--", "echo", "hi"].into_iter().map(String::from).collect(),
                    5 => vec!["sandbox", "pause", &s].into_iter().map(String::from).collect(),
                    6 => vec!["sandbox", "resume", &s].into_iter().map(String::from).collect(),
                    _ => vec!["sandbox", "stop", &s, "--timeout", "3"].into_iter().map(String::from).collect(),
                };
                ops.push(op);
            }
            ops
        })
        .collect();
    let mut children = Vec::new();
    for ops in workers {
        let data = env.data.path().to_path_buf();
        let bin = crate::common::smolvm_bin();
        let images = env.command(&[]).get_envs().find(|(k, _)| *k == "SMOLVM_IMAGE_DIR").and_then(|(_, v)| v).unwrap().to_owned();
        children.push(std::thread::spawn(move || {
            let mut unclear = Vec::new();
            for op in ops {
                let mut cmd = std::process::Command::new(&bin);
                cmd.args(&op).arg("--json").env("SMOLVM_DATA_DIR", &data).env("SMOLVM_IMAGE_DIR", &images).env("SMOLVM_ACCEL", "tcg");
                if op[1] == "exec" {
                    // --json belongs before the guest command.
                    cmd = std::process::Command::new(&bin);
                    let at = op.iter().position(|a| a == "--").unwrap();
                    cmd.args(&op[..at]).arg("--json").args(&op[at..]);
                    cmd.env("SMOLVM_DATA_DIR", &data).env("SMOLVM_IMAGE_DIR", &images).env("SMOLVM_ACCEL", "tcg");
                }
                let out = cmd.stdin(Stdio::null()).output().unwrap();
                let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
                    Ok(v) => v,
                    Err(_) => {
                        unclear.push(format!("{op:?}: no JSON envelope: {}", String::from_utf8_lossy(&out.stderr)));
                        continue;
                    }
                };
                if v["ok"] != true {
                    // A failure is fine if it says what happened.
                    let msg = v["error"]["message"].as_str().unwrap_or("");
                    let code = v["error"]["code"].as_str().unwrap_or("");
                    if msg.len() < 10 || code.is_empty() || code == "runtime_error" && !msg.contains(' ') {
                        unclear.push(format!("{op:?}: unclear error {v}"));
                    }
                }
            }
            unclear
        }));
    }
    let unclear: Vec<String> = children.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(unclear.is_empty(), "{unclear:#?}");

    let (v, code) = env.json(&["doctor"]);
    assert_eq!(code, 0, "the final state passes doctor: {v}");
    let (list, _) = env.json(&["sandbox", "snapshot", "list"]);
    for s in list["data"]["snapshots"].as_array().unwrap() {
        let (v, code) = env.json(&["sandbox", "snapshot", "verify", s["snapshot_id"].as_str().unwrap()]);
        assert_eq!(code, 0, "{v}");
    }
    for s in ["s0", "s1"] {
        let out = env.run(&["sandbox", "exec", s, "--start", "--", "echo", "alive"]);
        assert!(out.status.success(), "{s} is usable: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn fd_count(pid: i64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du").args(["-sb"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn soak_50_snapshot_restore_cycles_return_to_baseline() {
    let env = Env::new();
    env.create("soak", &[]);
    let layers = env.data.path().join("layers");
    let base_bytes = dir_bytes(env.data.path());
    for i in 0..50 {
        let id = format!("k{i}");
        env.ok(&["sandbox", "snapshot", "create", "soak", "--snapshot-id", &id, "--resume-source"]);
        env.ok(&["sandbox", "snapshot", "restore", &id, "--resume"]);
        if i % 10 == 9 {
            assert_eq!(env.sh("soak", &format!("echo {i}")).trim(), i.to_string());
        }
    }
    for entry in std::fs::read_dir(&layers).unwrap().flatten() {
        let out = std::process::Command::new("qemu-img").args(["check", "-U", "-q", "-f", "qcow2"]).arg(entry.path()).output().unwrap();
        assert!(out.status.success(), "{:?}: {}", entry.path(), String::from_utf8_lossy(&out.stderr));
    }
    let (v, _) = env.json(&["sandbox", "info", "soak"]);
    let pid = v["data"]["vm"]["pid"].as_i64().unwrap();
    let fds_before_delete = fd_count(pid);
    for i in 0..50 {
        env.ok(&["sandbox", "snapshot", "delete", &format!("k{i}")]);
    }
    assert_eq!(env.vmm_pids().len(), 1, "one VMM, no leftovers");
    let (v, _) = env.json(&["sandbox", "info", "soak"]);
    let pid = v["data"]["vm"]["pid"].as_i64().unwrap();
    let fds = fd_count(pid);
    assert!(fds <= fds_before_delete, "QEMU fds grew: {fds_before_delete} -> {fds}");
    let snaps: Vec<_> = std::fs::read_dir(env.data.path().join("snapshots")).unwrap().flatten().collect();
    assert!(snaps.is_empty(), "{snaps:?}");
    let after = dir_bytes(env.data.path());
    // The guest's own writes (logs, ext4 journal) make up the slack.
    assert!(after < base_bytes + (32 << 20), "data dir grew from {base_bytes} to {after} bytes");
    assert_eq!(env.sh("soak", "echo done").trim(), "done");
}
