//! The whole sandbox lifecycle against a real guest, with the state on
//! disk checked after each step.

use crate::common::Env;

fn status(env: &Env, name: &str) -> String {
    let (v, code) = env.json(&["sandbox", "info", name]);
    assert_eq!(code, 0, "{v}");
    v["data"]["vm"]["status"].as_str().unwrap().to_string()
}

fn pid(env: &Env, name: &str) -> Option<i64> {
    let (v, _) = env.json(&["sandbox", "info", name]);
    v["data"]["vm"]["pid"].as_i64()
}

#[test]
fn lifecycle_create_exec_pause_resume_stop_start_delete() {
    let env = Env::new();
    let (v, code) = env.json(&["sandbox", "create", "--name", "life", "--memory", "256"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["command"], "sandbox.create");
    assert_eq!(v["data"]["vm"]["status"], "running");
    let dir = env.sandbox_dir("life");
    assert!(dir.join("qmp.sock").exists());
    let qemu = pid(&env, "life").expect("a running sandbox has a pid");
    assert!(std::path::Path::new(&format!("/proc/{qemu}")).exists());

    // The root disk is one thin copy-on-write layer over the image, not a copy.
    let layers: Vec<_> = std::fs::read_dir(env.data.path().join("layers")).unwrap().flatten().collect();
    assert_eq!(layers.len(), 1);
    let disk_bytes = layers[0].metadata().unwrap().len();
    assert!(disk_bytes < 16 << 20, "overlay is {disk_bytes} bytes");
    let info = std::process::Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(layers[0].path()).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info["backing-filename"].as_str().unwrap().ends_with("rootfs.ext4"), "{info}");

    let uname = env.ok(&["sandbox", "exec", "life", "--", "uname", "-r"]);
    assert!(uname.contains("cloud-amd64"), "{uname}");
    let host = env.sh("life", "hostname");
    assert_eq!(host.trim(), "life");

    env.ok(&["sandbox", "pause", "life"]);
    assert_eq!(status(&env, "life"), "paused");
    let (v, code) = env.json(&["sandbox", "exec", "life", "--", "true"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], "not_running");
    assert!(v["error"]["message"].as_str().unwrap().contains("smolvm sandbox resume life"), "{v}");

    env.ok(&["sandbox", "resume", "life"]);
    assert_eq!(status(&env, "life"), "running");
    assert_eq!(env.sh("life", "echo back").trim(), "back");

    // Data written before a clean stop survives it.
    env.sh("life", "echo persisted > /root/marker");
    env.ok(&["sandbox", "stop", "life"]);
    assert_eq!(status(&env, "life"), "stopped");
    assert_eq!(pid(&env, "life"), None);
    assert!(!std::path::Path::new(&format!("/proc/{qemu}/stat")).exists() || env.vmm_pids().is_empty());
    assert!(!dir.join("qmp.sock").exists(), "sockets are removed on stop");

    let (v, code) = env.json(&["sandbox", "exec", "life", "--", "true"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_running")));

    env.ok(&["sandbox", "start", "life"]);
    assert_eq!(status(&env, "life"), "running");
    assert_eq!(env.sh("life", "cat /root/marker").trim(), "persisted");

    // exec --start boots a stopped sandbox by itself.
    env.ok(&["sandbox", "stop", "life"]);
    let out = env.ok(&["sandbox", "exec", "life", "--start", "--", "cat", "/root/marker"]);
    assert_eq!(out.trim(), "persisted");

    let (v, code) = env.json(&["sandbox", "list"]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["vms"][0]["name"], "life");

    let (v, code) = env.json(&["sandbox", "delete", "life"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["data"]["deleted"][0], "life");
    assert!(!dir.exists(), "the sandbox directory is removed");
    let layers: Vec<_> = std::fs::read_dir(env.data.path().join("layers")).unwrap().flatten().collect();
    assert!(layers.is_empty(), "its disk layer is removed: {layers:?}");
    assert!(env.vmm_pids().is_empty(), "no QEMU is left");
    let (v, code) = env.json(&["sandbox", "info", "life"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")));
}

#[test]
fn killed_vmm_is_reconciled_and_delete_cleans_up() {
    let env = Env::new();
    env.create("victim", &[]);
    let qemu = pid(&env, "victim").unwrap();
    let _ = std::process::Command::new("kill").args(["-9", &qemu.to_string()]).status();
    assert!(crate::common::wait_until(std::time::Duration::from_secs(10), || env.vmm_pids().is_empty()));

    let (v, code) = env.json(&["sandbox", "info", "victim"]);
    assert_eq!(code, 0);
    assert_eq!(v["data"]["vm"]["status"], "error");
    assert!(v["data"]["vm"]["warnings"][0].as_str().unwrap().contains("smolvm sandbox delete victim"));
    let (v, code) = env.json(&["sandbox", "exec", "victim", "--", "true"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_running")), "{v}");

    env.ok(&["sandbox", "delete", "victim"]);
    assert!(!env.sandbox_dir("victim").exists());
    let leftovers: Vec<_> = std::fs::read_dir(env.data.path().join("sandboxes")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
