//! Crash injection: `smolvm` dies (abort at named steps, and real SIGKILL
//! at random moments) in the middle of snapshot create and restore; the
//! next command must find a usable sandbox, no half snapshot, no stray VMM.

use std::process::Stdio;
use std::time::Duration;

use crate::common::Env;

const CREATE_STEPS: &[&str] =
    &["snapshot.journaled", "snapshot.paused", "snapshot.sealed", "snapshot.memory_saved", "snapshot.resumed", "snapshot.published"];
const RESTORE_STEPS: &[&str] = &["restore.journaled", "restore.stopped", "restore.launched"];

fn crashed(env: &Env, step: &str, args: &[&str]) {
    let out = env.command(args).env("SMOLVM_CRASH_AT", step).output().unwrap();
    assert_eq!(out.status.code(), None, "{step}: smolvm should have aborted: {}", String::from_utf8_lossy(&out.stderr));
}

/// The invariants after any crash: one VMM at most, no temp dirs or
/// journals, every listed snapshot intact.
fn check_invariants(env: &Env, name: &str, context: &str) {
    let (info, code) = env.json(&["sandbox", "info", name]);
    let snaps = env.data.path().join("snapshots");
    let tmp: Vec<_> = std::fs::read_dir(&snaps).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with('.')).collect();
    assert!(tmp.is_empty(), "{context}: temporary snapshot dirs left: {tmp:?}");
    assert!(!env.sandbox_dir(name).join("operation.json").exists(), "{context}: journal left");
    let vmms = env.vmm_pids();
    assert!(vmms.len() <= 1, "{context}: stray VMMs {vmms:?}");
    if code == 0 {
        if let Some(pid) = info["data"]["vm"]["pid"].as_i64() {
            assert_eq!(vmms, vec![pid as i32], "{context}: the recorded VMM is the only one");
        }
    }
    let (list, _) = env.json(&["sandbox", "snapshot", "list"]);
    for s in list["data"]["snapshots"].as_array().unwrap() {
        let id = s["snapshot_id"].as_str().unwrap();
        let (v, code) = env.json(&["sandbox", "snapshot", "verify", id]);
        assert_eq!(code, 0, "{context}: snapshot {id} is listed but not intact: {v}");
    }
}

#[test]
fn crashes_during_snapshot_create_leave_a_usable_sandbox_and_no_half_snapshot() {
    let env = Env::new();
    env.create("cr", &[]);
    for (i, step) in CREATE_STEPS.iter().enumerate() {
        let id = format!("c{i}");
        crashed(&env, step, &["sandbox", "snapshot", "create", "cr", "--snapshot-id", &id, "--resume-source"]);
        check_invariants(&env, "cr", step);
        let (info, _) = env.json(&["sandbox", "info", "cr"]);
        assert_eq!(info["data"]["vm"]["status"], "running", "{step}: the source is running again: {info}");
        assert_eq!(env.sh("cr", "echo ok").trim(), "ok", "{step}: the agent answers");
        // The next snapshot works, whatever the crash left.
        let (v, code) = env.json(&["sandbox", "snapshot", "create", "cr", "--snapshot-id", &format!("after{i}"), "--resume-source"]);
        assert_eq!(code, 0, "{step}: {v}");
    }
    // A snapshot published just before the crash is kept and indexed.
    let (v, code) = env.json(&["sandbox", "snapshot", "verify", "c5"]);
    assert_eq!(code, 0, "{v}");

    // Real SIGKILL at random moments of a create.
    for (i, delay_ms) in [150u64, 400, 700].into_iter().enumerate() {
        let mut child = env
            .command(&["sandbox", "snapshot", "create", "cr", "--snapshot-id", &format!("k{i}"), "--resume-source"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        check_invariants(&env, "cr", &format!("SIGKILL after {delay_ms} ms"));
        assert_eq!(env.sh("cr", "echo ok").trim(), "ok");
    }
}

#[test]
fn crashes_during_restore_leave_the_sandbox_restorable() {
    let env = Env::new();
    env.create("rs", &[]);
    env.sh("rs", "echo base > /root/b; sync");
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "rs", "--snapshot-id", "base", "--resume-source"]);
    assert_eq!(code, 0, "{v}");
    for step in RESTORE_STEPS {
        // The first restore needs no stop; later ones run from "base" and
        // must be stopped before --force may restore it again.
        env.ok(&["sandbox", "stop", "rs"]);
        crashed(&env, step, &["sandbox", "snapshot", "restore", "base", "--resume", "--force"]);
        check_invariants(&env, "rs", step);
        let (v, code) = env.json(&["sandbox", "snapshot", "restore", "base", "--resume", "--force"]);
        assert_eq!(code, 0, "{step}: {v}");
        assert_eq!(env.sh("rs", "cat /root/b").trim(), "base");
    }
    // A crashed restore of a deleted sandbox leaves no half sandbox.
    env.ok(&["sandbox", "delete", "rs"]);
    let layers_before = std::fs::read_dir(env.data.path().join("layers")).unwrap().count();
    crashed(&env, "restore.stopped", &["sandbox", "snapshot", "restore", "base", "--resume", "--force"]);
    let (v, code) = env.json(&["sandbox", "info", "rs"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");
    assert!(env.vmm_pids().is_empty());
    assert_eq!(std::fs::read_dir(env.data.path().join("layers")).unwrap().count(), layers_before, "no layer is left behind");
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "base", "--resume", "--force"]);
    assert_eq!(code, 0, "{v}");
}
