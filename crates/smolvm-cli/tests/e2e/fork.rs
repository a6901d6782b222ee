//! Restored sandboxes behave like live ones (clock, randomness, agent), and
//! forks are independent copies with their own identity.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::Env;

fn host_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn random_hex(env: &Env, name: &str) -> String {
    env.sh(name, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
}

#[test]
fn fork_children_are_independent_with_their_own_identity() {
    let env = Env::new();
    env.create("src", &[]);
    env.sh("src", "echo shared > /root/shared; sync");
    let (v, code) = env.json(&["sandbox", "fork", "src", "--name", "kid", "--count", "3"]);
    assert_eq!(code, 0, "{v}");
    let kids: Vec<String> = (1..=3).map(|i| format!("kid-{i}")).collect();
    assert_eq!(v["data"]["children"].as_array().unwrap().len(), 3);
    let (info, _) = env.json(&["sandbox", "info", "src"]);
    assert_eq!(info["data"]["vm"]["status"], "running", "the source keeps running");

    for k in &kids {
        env.sh(k, &format!("echo {k} > /root/only-{k}; sync"));
    }
    let mut machine_ids = HashSet::new();
    for k in &kids {
        let ls = env.sh(k, "ls /root");
        let files: HashSet<&str> = ls.split_whitespace().collect();
        assert!(files.contains("shared"), "{k} inherits the source's files");
        assert!(files.contains(format!("only-{k}").as_str()));
        for other in kids.iter().filter(|o| *o != k) {
            assert!(!files.contains(format!("only-{other}").as_str()), "{k} sees {other}'s write");
        }
        assert_eq!(env.sh(k, "hostname").trim(), k.as_str());
        machine_ids.insert(env.sh(k, "cat /etc/machine-id").trim().to_string());
    }
    assert_eq!(machine_ids.len(), 3, "each child has its own machine-id: {machine_ids:?}");
    let src_ls = env.sh("src", "ls /root");
    assert!(!src_ls.contains("only-"), "the source sees none of the children's writes: {src_ls}");
    // The implicit snapshot is gone; the children keep working without it.
    let (list, _) = env.json(&["sandbox", "snapshot", "list"]);
    assert_eq!(list["data"]["snapshots"].as_array().unwrap().len(), 0, "{list}");
}

#[test]
fn restored_twice_and_forked_twice_guests_draw_different_randomness() {
    let env = Env::new();
    env.create("rng", &[]);
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "rng", "--snapshot-id", "r", "--resume-source"]);
    assert_eq!(code, 0, "{v}");
    let mut draws = Vec::new();
    env.ok(&["sandbox", "snapshot", "restore", "r", "--resume"]);
    draws.push(random_hex(&env, "rng"));
    env.ok(&["sandbox", "stop", "rng"]);
    env.ok(&["sandbox", "snapshot", "restore", "r", "--resume", "--force"]);
    draws.push(random_hex(&env, "rng"));
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "r", "--as", "twin-a", "--resume"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["data"]["snapshot"]["restored_vm_id"], "rng", "--as never marks the snapshot restored into its source");
    draws.push(random_hex(&env, "twin-a"));
    env.ok(&["sandbox", "snapshot", "restore", "r", "--as", "twin-b", "--resume"]);
    draws.push(random_hex(&env, "twin-b"));
    let unique: HashSet<&String> = draws.iter().collect();
    assert_eq!(unique.len(), 4, "draws repeat: {draws:?}");
    let a = env.sh("twin-a", "cat /etc/machine-id");
    let b = env.sh("twin-b", "cat /etc/machine-id");
    assert_ne!(a, b);
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "r", "--as", "twin-a"]);
    assert_eq!(code, 1, "--as never overwrites an existing sandbox: {v}");
}

#[test]
fn agent_survives_a_snapshot_taken_during_an_exec() {
    let env = Env::new();
    env.create("busy", &[]);
    let mut long = env
        .command(&["sandbox", "exec", "busy", "--", "sh", "-c", "sleep 3; echo finished"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "busy", "--snapshot-id", "mid", "--resume-source"]);
    assert_eq!(code, 0, "{v}");
    let out = long.wait().unwrap();
    assert!(out.success(), "the running exec completes across the snapshot");
    env.ok(&["sandbox", "snapshot", "restore", "mid", "--resume"]);
    let started = std::time::Instant::now();
    assert_eq!(env.sh("busy", "echo alive").trim(), "alive");
    assert!(started.elapsed() < Duration::from_secs(5));
    for i in 0..3 {
        assert_eq!(env.sh("busy", &format!("echo {i}")).trim(), i.to_string());
    }
}

/// Slow: really waits five minutes between snapshot and restore.
#[test]
fn slow_clock_is_right_after_restoring_a_five_minute_old_snapshot() {
    let env = Env::new();
    env.create("clock", &[]);
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "clock", "--snapshot-id", "old"]);
    assert_eq!(code, 0, "{v}");
    env.ok(&["sandbox", "stop", "clock"]);
    std::thread::sleep(Duration::from_secs(300));
    env.ok(&["sandbox", "snapshot", "restore", "old", "--resume"]);
    let guest: f64 = env.sh("clock", "date +%s").trim().parse().unwrap();
    let host = host_now();
    assert!((guest - host).abs() <= 2.0, "guest clock {guest} vs host {host}");
    // And after a long pause, resume sets it again.
    env.ok(&["sandbox", "pause", "clock"]);
    std::thread::sleep(Duration::from_secs(5));
    env.ok(&["sandbox", "resume", "clock"]);
    let guest: f64 = env.sh("clock", "date +%s").trim().parse().unwrap();
    assert!((guest - host_now()).abs() <= 2.0, "after resume: {guest}");
}
