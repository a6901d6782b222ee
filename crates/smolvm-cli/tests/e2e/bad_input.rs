//! Bad input and faults: a clear error, and nothing created or changed.

use crate::common::Env;

fn assert_nothing_created(env: &Env) {
    let dirs: Vec<_> = std::fs::read_dir(env.data.path().join("sandboxes")).unwrap().collect();
    assert!(dirs.is_empty(), "{dirs:?}");
    let (v, _) = env.json(&["sandbox", "list", "--all"]);
    assert_eq!(v["data"]["vms"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn bad_names_values_and_missing_things_are_refused_cleanly() {
    let env = Env::new();
    let long = "a".repeat(65);
    for name in ["../x", "A", long.as_str(), "a/b", "-x"] {
        let (v, code) = env.json(&["sandbox", "create", &format!("--name={name}")]);
        assert_eq!(code, 1, "{name}: {v}");
        assert_eq!(v["error"]["code"], "invalid_input", "{name}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("lowercase"), "{v}");
    }
    let (v, code) = env.json(&["sandbox", "create", "--name", "m", "--memory", "64"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("invalid_input")));
    assert!(v["error"]["message"].as_str().unwrap().contains("128 to 16384"), "{v}");
    let (v, code) = env.json(&["sandbox", "create", "--name", "m", "--image", "nosuch"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("smolvm image build --name nosuch"), "{v}");
    let (v, code) = env.json(&["sandbox", "create", "--name", "m", "--port", "99999:80"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("invalid_input")), "{v}");
    let (v, code) = env.json(&["sandbox", "exec", "ghost", "--", "true"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");
    let (v, code) = env.json(&["sandbox", "stop", "ghost"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");

    // Usage errors: exit 2, JSON envelope when --json is present.
    let (v, code) = env.json(&["sandbox", "create", "--memory", "lots"]);
    assert_eq!(code, 2);
    assert_eq!(v["error"]["code"], "usage_error");
    let out = env.run(&["sandbox"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));

    // QEMU missing: the message says how to install it.
    let out = env.command(&["sandbox", "create", "--name", "noqemu", "--json"]).env("SMOLVM_QEMU_BIN", "/nonexistent/qemu").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["error"]["code"], "missing_dependency");
    assert!(v["error"]["message"].as_str().unwrap().contains("apt-get install"), "{v}");
    assert_nothing_created(&env);
}

#[test]
fn duplicate_create_leaves_the_first_sandbox_intact() {
    let env = Env::new();
    env.create("dup", &[]);
    env.sh("dup", "echo original > /root/id");
    let (v, code) = env.json(&["sandbox", "create", "--name", "dup"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("already exists"), "{v}");
    assert_eq!(env.sh("dup", "cat /root/id").trim(), "original");
    let (v, _) = env.json(&["sandbox", "info", "dup"]);
    assert_eq!(v["data"]["vm"]["status"], "running");
}

#[test]
fn image_delete_is_refused_while_a_sandbox_or_snapshot_uses_it() {
    let env = Env::new();
    let images = env.data.path().join("own-images");
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.push("--json");
        let out = env.command(&all).env("SMOLVM_IMAGE_DIR", &images).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, out.status.code().unwrap())
    };
    let mut build = env.command(&["image", "build", "--name", "mine", "--base", "tiny"]);
    build.env("SMOLVM_IMAGE_DIR", &images);
    if let Ok(agent) = std::env::var("SMOLVM_TEST_AGENT_BIN") {
        build.env("SMOLVM_AGENT_BIN", agent);
    }
    assert!(build.status().unwrap().success());
    let (v, code) = run(&["sandbox", "create", "--name", "user", "--image", "mine"]);
    assert_eq!(code, 0, "{v}");
    let (v, code) = run(&["sandbox", "snapshot", "create", "user", "--snapshot-id", "keep", "--resume-source"]);
    assert_eq!(code, 0, "{v}");
    let (v, code) = run(&["image", "delete", "mine"]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("refused")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("user"), "{v}");
    run(&["sandbox", "delete", "user"]);
    let (v, code) = run(&["image", "delete", "mine"]);
    assert_eq!(code, 1, "the snapshot still needs it: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("keep"), "{v}");
    run(&["sandbox", "snapshot", "delete", "keep"]);
    let (v, code) = run(&["image", "delete", "mine"]);
    assert_eq!(code, 0, "{v}");
    let (v, _) = run(&["image", "list"]);
    assert_eq!(v["data"]["images"].as_array().unwrap().len(), 0);
}
