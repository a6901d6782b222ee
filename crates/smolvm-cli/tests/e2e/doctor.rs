//! `smolvm doctor` finds leftovers a crash can leave and `--fix` removes them.

use crate::common::Env;

#[test]
fn doctor_reports_and_fixes_leftovers() {
    let env = Env::new();
    let (v, code) = env.json(&["doctor"]);
    assert_eq!(code, 0, "a fresh data dir is consistent: {v}");
    assert_eq!(v["data"]["checks"].as_array().unwrap().iter().find(|c| c["name"] == "qemu").unwrap()["status"], "ok");

    let root = env.data.path();
    std::fs::create_dir_all(root.join("sandboxes/ghost")).unwrap();
    std::fs::create_dir_all(root.join("snapshots/.tmp-half-l-0123456789abcdef")).unwrap();
    std::fs::write(root.join("layers/l-00000000000000aa.qcow2"), b"orphan").unwrap();
    let (v, code) = env.json(&["doctor"]);
    assert_eq!(code, 1, "{v}");
    let text = v["error"]["message"].as_str().unwrap();
    for needle in ["sandboxes/ghost", ".tmp-half", "l-00000000000000aa", "doctor --fix"] {
        assert!(text.contains(needle), "doctor does not mention {needle}: {text}");
    }
    let (v, code) = env.json(&["doctor", "--fix"]);
    assert_eq!(code, 0, "{v}");
    assert!(!root.join("sandboxes/ghost").exists());
    assert!(!root.join("snapshots/.tmp-half-l-0123456789abcdef").exists());
    assert!(!root.join("layers/l-00000000000000aa.qcow2").exists());
    let (v, code) = env.json(&["doctor"]);
    assert_eq!(code, 0, "{v}");
}
