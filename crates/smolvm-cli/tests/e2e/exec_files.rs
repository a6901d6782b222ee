//! exec, file transfer, parallel use and port forwarding on a real guest.

use std::io::{Read, Write};
use std::process::Command;

use crate::common::Env;

#[test]
fn exec_exit_codes_large_output_and_parallel_callers() {
    let env = Env::new();
    env.create("ex", &[]);

    let out = env.run(&["sandbox", "exec", "ex", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let (v, code) = env.json(&["sandbox", "exec", "ex", "--", "sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!(code, 4);
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "command_failed");
    assert_eq!(v["data"]["stdout"], "out\n");
    assert_eq!(v["data"]["stderr"], "err\n");

    // 10 MiB of output arrives whole and in order.
    let out = env.run(&["sandbox", "exec", "ex", "--", "sh", "-c", "seq 1 2000000 | head -c 10485760"]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 10 << 20);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(*line, (i + 1).to_string(), "line {i}");
    }

    // Ten execs from parallel processes each get their own answer.
    let children: Vec<_> = (0..10)
        .map(|i| {
            env.command(&["sandbox", "exec", "ex", "--", "sh", "-c", &format!("sleep 0.$((RANDOM % 5)); echo job-{i}")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "job {i}");
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), format!("job-{i}"));
    }

    // stdin passes through with -i.
    let mut child = env
        .command(&["sandbox", "exec", "ex", "-i", "--", "tr", "a-z", "A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "SHOUT\n");

    // A timeout kills the command and says so.
    let (v, code) = env.json(&["sandbox", "exec", "ex", "--timeout", "1", "--", "sleep", "30"]);
    assert_ne!(code, 0);
    assert_eq!(v["data"]["timed_out"], true, "{v}");
}

#[test]
fn upload_and_download_50_mib_byte_identical() {
    let env = Env::new();
    env.create("files", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("blob.bin");
    let mut data = vec![0u8; 50 << 20];
    let mut seed = 0x9e3779b97f4a7c15u64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    env.ok(&["sandbox", "file", "upload", "files", src.to_str().unwrap(), "/root/in/blob.bin", "--mode", "640"]);
    let stat = env.sh("files", "stat -c '%s %a' /root/in/blob.bin");
    assert_eq!(stat.trim(), format!("{} 640", 50 << 20));

    let back = work.path().join("back.bin");
    env.ok(&["sandbox", "file", "download", "files", "/root/in/blob.bin", back.to_str().unwrap()]);
    let got = std::fs::read(&back).unwrap();
    assert!(got == data, "downloaded bytes differ");

    let (v, code) = env.json(&["sandbox", "file", "download", "files", "/nope", back.to_str().unwrap()]);
    assert_eq!((code, v["error"]["code"].as_str()), (1, Some("not_found")), "{v}");
    assert_eq!(std::fs::read(&back).unwrap().len(), 50 << 20, "a failed download leaves the old file alone");
}

#[test]
fn port_forward_reaches_a_guest_server() {
    let env = Env::new();
    let port = free_port();
    env.create("web", &["--port", &format!("{port}:8080")]);
    env.sh("web", "mkdir -p /www && echo hello-from-guest > /www/index.html && httpd -p 8080 -h /www");
    let mut body = String::new();
    let ok = crate::common::wait_until(std::time::Duration::from_secs(10), || {
        body.clear();
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
        let _ = s.read_to_string(&mut body);
        body.contains("hello-from-guest")
    });
    assert!(ok, "no answer through the forward: {body}");
    // The forward listens on loopback only.
    let ss = Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]).output();
    if let Ok(ss) = ss {
        let text = String::from_utf8_lossy(&ss.stdout);
        assert!(text.contains("127.0.0.1"), "{text}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
