//! Handshake, framing errors and session lifetime.

use std::time::Duration;

use smolvm_proto::{parse_hello, FrameKind, Request, Response, MAX_FRAME_PAYLOAD, PROTOCOL_VERSION};

use super::{assert_error, cmd, wait_until_dead, Host};

#[test]
fn handshake_echoes_the_nonce_and_health_answers() {
    let mut host = Host::connect();
    match host.call(&Request::Health) {
        Response::Health {
            protocol_version,
            capabilities,
            agent_version,
            ..
        } => {
            assert_eq!(protocol_version, PROTOCOL_VERSION);
            assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
            for cap in [
                "exec", "tty", "files", "sync", "freeze", "clock", "entropy", "identity", "shutdown",
            ] {
                assert!(capabilities.iter().any(|c| c == cap), "missing {cap}");
            }
        }
        other => panic!("expected Health, got {other:?}"),
    }
    host.finish().expect("clean end");
}

#[test]
fn frames_before_hello_are_ignored() {
    let mut host = Host::start();
    host.request(&Request::Health);
    host.send(FrameKind::Stdin, b"leftover");
    host.send(FrameKind::Data, b"leftover");
    // The very next frame from the agent must be the HelloAck.
    host.handshake();
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}

#[test]
fn garbage_before_hello_is_skipped() {
    let mut host = Host::start();
    // Unknown kind 0xee breaks the framing; the agent must resynchronise
    // on the Hello that follows.
    host.send_raw(&[0xee, 1, 2, 3, 4, 5, 6, 0, 0, 0, 9, 1]);
    host.handshake();
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}

#[test]
fn other_protocol_version_is_refused_and_the_session_ends() {
    let mut host = Host::start();
    host.send_hello(PROTOCOL_VERSION + 1);
    assert_error(&host.response(), "unsupported_version");
    assert!(host.recv().is_none(), "session should end");
    host.join().expect("refusal is a clean end");
}

#[test]
fn malformed_requests_get_bad_request_and_the_session_goes_on() {
    let mut host = Host::connect();
    host.send(FrameKind::Request, b"{not json");
    assert_error(&host.response(), "bad_request");
    host.send(FrameKind::Request, br#"{"op":"format_disk"}"#);
    assert_error(&host.response(), "bad_request");
    host.send(FrameKind::Request, br#"{"op":"download","path":"/x","extra":1}"#);
    assert_error(&host.response(), "bad_request");
    host.send(FrameKind::Hello, b"short");
    assert_error(&host.response(), "bad_request");
    host.send_json(FrameKind::Request, &Request::AddEntropy { hex: "xyz".into() });
    assert_error(&host.response(), "bad_request");
    host.send_json(
        FrameKind::Request,
        &Request::SetClock {
            unix_secs: 1,
            nanos: 2_000_000_000,
        },
    );
    assert_error(&host.response(), "bad_request");
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}

#[test]
fn oversized_frame_ends_the_session_without_panic() {
    let mut host = Host::connect();
    let mut header = vec![FrameKind::Request as u8];
    header.extend_from_slice(&((MAX_FRAME_PAYLOAD as u32) + 1).to_be_bytes());
    host.send_raw(&header);
    assert!(host.recv().is_none(), "session should end");
    let err = host.join().expect_err("a framing error is reported");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn unknown_frame_kind_after_handshake_ends_the_session() {
    let mut host = Host::connect();
    host.send_raw(&[0x7f, 0, 0, 0, 1, 0]);
    assert!(host.recv().is_none(), "session should end");
    assert!(host.join().is_err());
}

#[test]
fn truncated_frame_ends_the_session() {
    let mut host = Host::connect();
    host.send_raw(&[FrameKind::Request as u8, 0, 0, 0, 50, b'{']);
    let _ = host.stream.shutdown(std::net::Shutdown::Write);
    assert!(host.recv().is_none());
    assert!(host.join().is_err());
}

#[test]
fn sync_without_freeze_and_thaw_answer_ok() {
    // Never freeze in tests: it would freeze this machine's filesystems.
    let mut host = Host::connect();
    assert_eq!(
        host.call(&Request::Sync {
            freeze: false,
            freeze_timeout_ms: None
        }),
        Response::Ok
    );
    assert_eq!(host.call(&Request::Thaw), Response::Ok);
    host.finish().expect("clean end");
}

#[test]
fn new_hello_resets_the_session_and_kills_its_command() {
    let mut host = Host::connect();
    host.request(&Request::Exec(super::shell("echo $$; exec sleep 1000")));
    let pid: i32 = host.read_stdout_line().trim().parse().expect("pid");
    let nonce = host.send_hello(PROTOCOL_VERSION);
    // Whatever the old request still sent comes first; then the HelloAck.
    loop {
        let frame = host.recv().expect("frames until HelloAck");
        if frame.kind == FrameKind::HelloAck {
            assert_eq!(parse_hello(&frame.payload), Some((nonce, PROTOCOL_VERSION)));
            break;
        }
    }
    assert!(
        wait_until_dead(pid, Duration::from_secs(5)),
        "command survived the reset"
    );
    assert!(matches!(host.call(&Request::Health), Response::Health { .. }));
    host.finish().expect("clean end");
}

#[test]
fn closing_the_stream_kills_what_the_session_started() {
    let mut host = Host::connect();
    // A background child in the command's process group, one in a process
    // group of its own (bash job control) but still in the command's
    // session, and the command itself.
    let script = "sleep 1000 & a=$!; set -m; sleep 1000 & echo $a $! $$; wait";
    host.request(&Request::Exec(cmd(&["bash", "-c", script])));
    let line = host.read_stdout_line();
    let pids: Vec<i32> = line.split_whitespace().map(|p| p.parse().expect("pid")).collect();
    assert_eq!(pids.len(), 3, "{line}");
    host.finish().expect("clean end");
    for pid in pids {
        assert!(
            wait_until_dead(pid, Duration::from_secs(5)),
            "pid {pid} survived the session"
        );
    }
}

#[test]
fn request_during_exec_kills_the_command_first() {
    let mut host = Host::connect();
    host.request(&Request::Exec(cmd(&["sleep", "1000"])));
    host.request(&Request::Health);
    let exited = host.collect_exec();
    assert_eq!(exited.exited(), (137, false, Some(9)));
    assert!(matches!(host.response(), Response::Health { .. }));
    host.finish().expect("clean end");
}
