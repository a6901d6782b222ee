//! Exec under a pty.

use smolvm_proto::{ExecRequest, FrameKind, Request, TtySize};

use super::{cmd, shell, Host};

fn with_tty(req: ExecRequest, rows: u16, cols: u16) -> ExecRequest {
    ExecRequest {
        tty: Some(TtySize { rows, cols }),
        ..req
    }
}

#[test]
fn tty_command_sees_a_pty_of_the_requested_size() {
    let mut host = Host::connect();
    let out = host.exec(with_tty(cmd(&["tty"]), 24, 80));
    assert_eq!(out.exited(), (0, false, None));
    let text = out.stdout_text();
    assert!(text.starts_with("/dev/pts/"), "{text:?}");
    assert!(out.stderr.is_empty(), "a tty has no separate stderr");

    let out = host.exec(with_tty(shell("stty size; echo err >&2"), 33, 101));
    // The pty turns \n into \r\n, and stderr shares the terminal.
    assert_eq!(out.stdout_text(), "33 101\r\nerr\r\n");
    host.finish().expect("clean end");
}

#[test]
fn resize_and_input_reach_the_tty() {
    let mut host = Host::connect();
    host.request(&Request::Exec(with_tty(
        shell("echo ready; read line; stty size; echo \"got $line\""),
        24,
        80,
    )));
    assert!(host.read_stdout_line().contains("ready"));
    host.send_json(FrameKind::Resize, &TtySize { rows: 40, cols: 100 });
    host.send(FrameKind::Stdin, b"hi there\r");
    let out = host.collect_exec();
    assert_eq!(out.exited(), (0, false, None));
    let text = out.stdout_text();
    assert!(text.contains("40 100\r\n"), "{text:?}");
    assert!(text.contains("got hi there\r\n"), "{text:?}");
    host.finish().expect("clean end");
}

#[test]
fn stdin_eof_on_a_tty_ends_input() {
    let mut host = Host::connect();
    host.request(&Request::Exec(with_tty(
        ExecRequest {
            stdin: true,
            ..cmd(&["cat"])
        },
        24,
        80,
    )));
    host.send(FrameKind::Stdin, b"line\r");
    host.send(FrameKind::StdinEof, b"");
    let out = host.collect_exec();
    assert_eq!(out.exited(), (0, false, None));
    // Echo of the input plus cat's copy of it.
    assert_eq!(out.stdout_text(), "line\r\nline\r\n");
    host.finish().expect("clean end");
}
