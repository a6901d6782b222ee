//! Exec without a tty: output streaming, exit codes, stdin, timeouts and
//! signals.

use std::thread;
use std::time::{Duration, Instant};

use smolvm_proto::{write_frame, ExecRequest, FrameKind, Request, Response, SignalRequest};

use super::{assert_error, cmd, shell, Host};

#[test]
fn echo_prints_and_exits_zero() {
    let mut host = Host::connect();
    let out = host.exec(cmd(&["echo", "hello", "world"]));
    assert_eq!(out.stdout_text(), "hello world\n");
    assert!(out.stderr.is_empty());
    assert_eq!(out.exited(), (0, false, None));
    host.finish().expect("clean end");
}

#[test]
fn exit_codes_are_reported() {
    let mut host = Host::connect();
    assert_eq!(host.exec(cmd(&["sh", "-c", "exit 3"])).exited(), (3, false, None));
    // shell=true joins argv with spaces.
    assert_eq!(
        host.exec(ExecRequest {
            shell: true,
            ..cmd(&["exit", "7"])
        })
        .exited(),
        (7, false, None)
    );
    assert_eq!(host.exec(shell("kill -TERM $$")).exited(), (143, false, Some(15)));
    host.finish().expect("clean end");
}

#[test]
fn stderr_is_streamed_separately() {
    let mut host = Host::connect();
    let out = host.exec(shell("echo out; echo err >&2; echo out2"));
    assert_eq!(out.stdout_text(), "out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    host.finish().expect("clean end");
}

#[test]
fn ten_mebibytes_of_stdout_arrive_intact_and_in_order() {
    const SIZE: usize = 10 << 20;
    const LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
    let mut host = Host::connect();
    let out = host.exec(shell(&format!(
        "yes {} | head -c {SIZE}; echo done >&2",
        LINE.trim_end()
    )));
    assert_eq!(out.exited(), (0, false, None));
    assert_eq!(out.stdout.len(), SIZE);
    let expected: Vec<u8> = LINE.bytes().cycle().take(SIZE).collect();
    assert!(out.stdout == expected, "stdout content differs from the pattern");
    assert!(out.largest_chunk <= 64 * 1024, "chunk of {} bytes", out.largest_chunk);
    assert_eq!(out.stderr, b"done\n");
    host.finish().expect("clean end");
}

#[test]
fn stdin_frames_feed_the_command() {
    let mut host = Host::connect();
    host.request(&Request::Exec(ExecRequest {
        stdin: true,
        ..cmd(&["cat"])
    }));
    host.send(FrameKind::Stdin, b"hello ");
    host.send(FrameKind::Stdin, b"world\n");
    host.send(FrameKind::StdinEof, b"");
    let out = host.collect_exec();
    assert_eq!(out.stdout_text(), "hello world\n");
    assert_eq!(out.exited(), (0, false, None));
    // Without stdin=true the command reads /dev/null.
    assert_eq!(host.exec(cmd(&["cat"])).stdout, b"");
    host.finish().expect("clean end");
}

#[test]
fn large_stdin_round_trips_while_output_streams() {
    let mut host = Host::connect();
    let data = super::Rng::new().bytes(3 << 20);
    host.request(&Request::Exec(ExecRequest {
        stdin: true,
        ..cmd(&["cat"])
    }));
    // Send from another thread: the agent streams cat's output back while
    // stdin is still arriving, and a single-threaded host would deadlock.
    let mut writer = host.stream.try_clone().expect("clone");
    let sent = data.clone();
    let feeder = thread::spawn(move || {
        for chunk in sent.chunks(100_000) {
            write_frame(&mut writer, FrameKind::Stdin, chunk).expect("stdin");
        }
        write_frame(&mut writer, FrameKind::StdinEof, b"").expect("eof");
    });
    let out = host.collect_exec();
    feeder.join().expect("feeder");
    assert_eq!(out.exited(), (0, false, None));
    assert!(
        out.stdout == data,
        "cat output differs ({} of {} bytes)",
        out.stdout.len(),
        data.len()
    );
    host.finish().expect("clean end");
}

#[test]
fn timeout_kills_the_command_group() {
    let mut host = Host::connect();
    let started = Instant::now();
    let out = host.exec(ExecRequest {
        timeout_ms: Some(300),
        ..shell("sleep 30 & sleep 30")
    });
    assert_eq!(out.exited(), (137, true, Some(9)));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // A command that finishes in time is not marked.
    assert_eq!(
        host.exec(ExecRequest {
            timeout_ms: Some(10_000),
            ..cmd(&["true"])
        })
        .exited(),
        (0, false, None)
    );
    host.finish().expect("clean end");
}

#[test]
fn signal_frames_reach_the_command() {
    let mut host = Host::connect();
    host.request(&Request::Exec(shell("echo started; exec sleep 30")));
    assert_eq!(host.read_stdout_line(), "started\n");
    host.send_json(FrameKind::Signal, &SignalRequest { signal: 999 });
    host.send(FrameKind::Signal, b"not json");
    host.send_json(FrameKind::Signal, &SignalRequest { signal: libc::SIGTERM });
    let out = host.collect_exec();
    assert_eq!(out.exited(), (143, false, Some(15)));
    host.finish().expect("clean end");
}

#[test]
fn missing_program_is_a_spawn_failure_naming_it() {
    let mut host = Host::connect();
    host.request(&Request::Exec(cmd(&["smolvm-no-such-program", "x"])));
    let response = host.response();
    assert_error(&response, "spawn_failed");
    let Response::Error { message, .. } = response else {
        unreachable!()
    };
    assert!(message.contains("smolvm-no-such-program"), "{message}");
    host.request(&Request::Exec(ExecRequest {
        cwd: Some("/no/such/dir".into()),
        ..cmd(&["true"])
    }));
    assert_error(&host.response(), "spawn_failed");
    host.request(&Request::Exec(cmd(&[])));
    assert_error(&host.response(), "bad_request");
    host.finish().expect("clean end");
}

#[test]
fn cwd_and_env_are_applied() {
    let mut host = Host::connect();
    let mut req = shell("pwd; echo \"$SMOLVM_TEST_VAR\"; test -n \"$PATH\" && echo has-path");
    req.cwd = Some("/tmp".into());
    req.env.insert("SMOLVM_TEST_VAR".into(), "a b=c".into());
    let out = host.exec(req);
    assert_eq!(out.stdout_text(), "/tmp\na b=c\nhas-path\n");
    let mut bad = cmd(&["true"]);
    bad.env.insert("A=B".into(), "x".into());
    host.request(&Request::Exec(bad));
    assert_error(&host.response(), "bad_request");
    host.finish().expect("clean end");
}

#[test]
fn background_child_holding_stdout_does_not_delay_exited() {
    let mut host = Host::connect();
    let started = Instant::now();
    let out = host.exec(shell("sleep 20 & echo hi"));
    assert_eq!(out.stdout_text(), "hi\n");
    assert_eq!(out.exited(), (0, false, None));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    host.finish().expect("clean end");
}

#[test]
fn command_ignoring_stdin_cannot_wedge_the_session() {
    let mut host = Host::connect();
    host.request(&Request::Exec(ExecRequest {
        stdin: true,
        ..shell("echo $$; exec sleep 1000")
    }));
    let pid: i32 = host.read_stdout_line().trim().parse().expect("pid");
    // Far more than the stdin queue and pipe hold; sleep reads none of it.
    let mut writer = host.stream.try_clone().expect("clone");
    let (flooded_tx, flooded_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let chunk = vec![b'x'; 256 * 1024];
        for _ in 0..80 {
            if write_frame(&mut writer, FrameKind::Stdin, &chunk).is_err() {
                break;
            }
        }
        let _ = flooded_tx.send(());
    });
    // The agent must get through all of it: it gives up on the stdin of a
    // command that reads nothing, rather than wedging its request loop.
    let flooded = flooded_rx.recv_timeout(Duration::from_secs(15));
    // Then it must still notice the host leaving and kill the command.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    thread::spawn(move || done_tx.send(host.finish().is_ok()).expect("report"));
    let finished = done_rx.recv_timeout(Duration::from_secs(15));
    let dead = super::wait_until_dead(pid, Duration::from_secs(5));
    if !dead {
        // Do not leave the process behind when the test fails.
        crate::sys::kill_group(pid, libc::SIGKILL);
    }
    assert!(flooded.is_ok(), "stdin flood never drained: the session is wedged");
    assert_eq!(finished, Ok(true), "session did not end");
    assert!(dead, "command survived the session");
}
