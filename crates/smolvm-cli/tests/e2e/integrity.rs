//! Damaged snapshots: verify and restore name the damage precisely, and a
//! refused restore stops or changes nothing. Hostile files are not followed.

use std::io::{Seek, SeekFrom, Write};

use crate::common::Env;

fn status(env: &Env, name: &str) -> String {
    let (v, _) = env.json(&["sandbox", "info", name]);
    v["data"]["vm"]["status"].as_str().unwrap_or("").to_string()
}

#[test]
fn corrupted_truncated_and_missing_artifacts_are_refused_before_anything_changes() {
    let env = Env::new();
    env.create("integ", &[]);
    env.sh("integ", "echo v1 > /root/v; sync");
    let (v, code) = env.json(&["sandbox", "snapshot", "create", "integ", "--snapshot-id", "i1", "--resume-source"]);
    assert_eq!(code, 0, "{v}");
    let memory = v["data"]["snapshot"]["artifacts"]["memory_path"].as_str().unwrap().to_string();
    let layer = v["data"]["snapshot"]["artifacts"]["disk_path"].as_str().unwrap().to_string();
    let (v, code) = env.json(&["sandbox", "snapshot", "verify", "i1"]);
    assert_eq!((code, v["data"]["intact"].as_bool()), (0, Some(true)), "{v}");
    env.sh("integ", "echo v2 > /root/v; sync");

    // One flipped byte in the memory file.
    let original = std::fs::read(&memory).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&memory).unwrap();
    let at = (original.len() / 2) as u64;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[original[at as usize] ^ 0xff]).unwrap();
    drop(f);
    let (v, code) = env.json(&["sandbox", "snapshot", "verify", "i1"]);
    assert_eq!(code, 1);
    assert_eq!(v["error"]["code"], "corrupted");
    assert!(v["error"]["message"].as_str().unwrap().contains("memory.bin: hash_mismatch"), "{v}");
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "i1", "--resume"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("hash mismatch"), "{v}");
    assert_eq!(status(&env, "integ"), "running", "a refused restore does not stop the sandbox");
    assert_eq!(env.sh("integ", "cat /root/v").trim(), "v2", "nor change it");
    std::fs::write(&memory, &original).unwrap();

    // A truncated disk layer.
    let layer_bytes = std::fs::read(&layer).unwrap();
    std::fs::write(&layer, &layer_bytes[..layer_bytes.len() / 2]).unwrap();
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "i1"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("size mismatch"), "{v}");
    assert_eq!(status(&env, "integ"), "running");
    std::fs::write(&layer, &layer_bytes).unwrap();

    // A memory file replaced by a symlink to an identical copy is not followed.
    let elsewhere = env.data.path().join("copy.bin");
    std::fs::copy(&memory, &elsewhere).unwrap();
    std::fs::remove_file(&memory).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &memory).unwrap();
    let (v, code) = env.json(&["sandbox", "snapshot", "verify", "i1"]);
    assert_eq!(code, 1, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("unreadable"), "{v}");
    std::fs::remove_file(&memory).unwrap();
    std::fs::rename(&elsewhere, &memory).unwrap();

    // A deleted manifest (and the row with it, by a second process's view):
    let dir = std::path::Path::new(&memory).parent().unwrap().to_path_buf();
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "i1"]);
    assert_eq!(code, 1);
    assert!(v["error"]["message"].as_str().unwrap().contains("metadata is unreadable"), "{v}");
    assert_eq!(status(&env, "integ"), "running");
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();

    // A manifest edited to point a layer outside the data dir is refused.
    let text = String::from_utf8(manifest.clone()).unwrap();
    let first_layer = std::path::Path::new(&layer).file_stem().unwrap().to_str().unwrap().to_string();
    std::fs::write(dir.join("manifest.json"), text.replace(&first_layer, "../../../../etc/passwd")).unwrap();
    let out = env.run(&["sandbox", "snapshot", "verify", "i1", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();

    // Repaired: restore works and brings v1 back.
    let (v, code) = env.json(&["sandbox", "snapshot", "restore", "i1", "--resume"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(env.sh("integ", "cat /root/v").trim(), "v1");
}
