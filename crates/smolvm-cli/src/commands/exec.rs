//! `smolvm sandbox exec`, `shell` and `file upload|download`: the commands
//! that talk to the guest agent.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::json;
use smolvm_core::agent::OutputStream;
use smolvm_proto::{ExecRequest, TtySize};

use super::{engine, seconds};
use crate::cli::{ExecArgs, FileCmd};
use crate::output::{exit, CliError, Done};
use crate::progress::Spinner;

/// Cap on output kept in memory for `--json` (the envelope holds it whole).
const JSON_OUTPUT_CAP: usize = 64 << 20;

pub(crate) fn exec(args: ExecArgs) -> Result<Done, CliError> {
    let env = parse_env(&args.env)?;
    let timeout_ms = args.timeout.map(|t| seconds(t, "--timeout")).transpose()?.map(|d| d.as_millis() as u64);
    // One word with spaces is a shell command line, as in the reference tool.
    let shell = args.shell || (args.command.len() == 1 && args.command[0].contains(char::is_whitespace));
    let req = ExecRequest {
        argv: args.command,
        shell,
        env,
        cwd: args.cwd,
        timeout_ms,
        tty: None,
        stdin: false,
    };
    let spinner = Spinner::new(true);
    let mut session = engine()?.session(&args.sandbox, args.start, seconds(args.boot_timeout, "--boot-timeout")?, &spinner)?;
    let stdin: Option<Box<dyn std::io::Read + Send>> = args.interactive.then(|| Box::new(std::io::stdin()) as _);

    if args.out.json {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = session.exec(req, stdin, &mut |stream, bytes| {
            let buf = if stream == OutputStream::Stdout { &mut out } else { &mut err };
            if buf.len() + bytes.len() > JSON_OUTPUT_CAP {
                return Err(std::io::Error::other("output exceeds the 64 MiB --json limit; run without --json to stream it"));
            }
            buf.extend_from_slice(bytes);
            Ok(())
        })?;
        let data = json!({
            "exit_code": outcome.exit_code,
            "stdout": String::from_utf8_lossy(&out),
            "stderr": String::from_utf8_lossy(&err),
            "timed_out": outcome.timed_out,
        });
        return exec_result(outcome.exit_code, outcome.timed_out, data);
    }

    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let outcome = session.exec(req, stdin, &mut |stream, bytes| match stream {
        OutputStream::Stdout => stdout.write_all(bytes).and_then(|_| stdout.flush()),
        OutputStream::Stderr => stderr.write_all(bytes),
    });
    let outcome = match outcome {
        Ok(o) => o,
        // Our stdout was closed by its reader (e.g. `| head`): not a failure.
        Err(smolvm_core::agent::AgentError::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            return Ok(Done::new(json!(null), ""));
        }
        Err(e) => return Err(e.into()),
    };
    match exec_result(outcome.exit_code, outcome.timed_out, json!({ "exit_code": outcome.exit_code })) {
        Ok(done) => Ok(done),
        Err(mut e) => {
            if !outcome.timed_out {
                // The command's own stderr already told the story.
                e.message.clear();
            }
            Err(e)
        }
    }
}

fn exec_result(code: i32, timed_out: bool, data: serde_json::Value) -> Result<Done, CliError> {
    let exit_code = code.clamp(0, 255) as u8;
    if timed_out {
        return Err(CliError { exit_code, data: Some(data), ..CliError::new("timeout", "The command timed out and was killed") });
    }
    if code != 0 {
        return Err(CliError {
            exit_code: if exit_code == 0 { exit::FAILURE } else { exit_code },
            data: Some(data),
            ..CliError::new("command_failed", format!("The command exited with status {code}"))
        });
    }
    Ok(Done::new(data, ""))
}

fn parse_env(items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::new("invalid_input", format!("--env '{kv}' is not KEY=VALUE"))),
        })
        .collect()
}

/// An interactive shell over a guest pty, with the local terminal in raw
/// mode and window size changes forwarded.
pub(crate) fn shell(name: &str, start: bool, boot_timeout: Duration, program: &str) -> Result<Done, CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::new(
            "invalid_input",
            format!("'smolvm sandbox shell' needs a terminal; for scripts use 'smolvm sandbox exec {name} -- CMD'"),
        ));
    }
    let spinner = Spinner::new(false);
    let mut session = engine()?.session(name, start, boot_timeout, &spinner)?;
    drop(spinner);
    let size = terminal_size();
    let req = ExecRequest {
        argv: vec![program.to_string()],
        shell: false,
        env: [("TERM".to_string(), std::env::var("TERM").unwrap_or_else(|_| "xterm".into()))].into(),
        cwd: None,
        timeout_ms: None,
        tty: Some(size),
        stdin: true,
    };
    let mut control = session.control_writer()?;
    let raw = RawTerminal::enable()?;
    // Forward window size changes (polled: no signal handler needed).
    std::thread::spawn(move || {
        let mut last = size;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = terminal_size();
            if now != last {
                if control.resize(now).is_err() {
                    return;
                }
                last = now;
            }
        }
    });
    let mut stdout = std::io::stdout().lock();
    let outcome = session.exec(req, Some(Box::new(std::io::stdin())), &mut |_, bytes| {
        stdout.write_all(bytes).and_then(|_| stdout.flush())
    });
    drop(raw);
    let outcome = outcome?;
    let code = outcome.exit_code.clamp(0, 255) as u8;
    Ok(Done { exit_code: code, ..Done::new(json!(null), "") })
}

fn terminal_size() -> TtySize {
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(ws) if ws.ws_row > 0 && ws.ws_col > 0 => TtySize { rows: ws.ws_row, cols: ws.ws_col },
        _ => TtySize { rows: 24, cols: 80 },
    }
}

/// Puts the local terminal in raw mode; restores it when dropped.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enable() -> Result<Self, CliError> {
        let fd = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&fd).map_err(std::io::Error::from)?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &raw).map_err(std::io::Error::from)?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(std::io::stdin(), rustix::termios::OptionalActions::Now, &self.saved);
    }
}

pub(crate) fn file(cmd: FileCmd) -> Result<Done, CliError> {
    let spinner = Spinner::new(true);
    match cmd {
        FileCmd::Upload { sandbox, local, guest, mode, no_create_dirs, .. } => {
            let mode = mode
                .map(|m| u32::from_str_radix(&m, 8).map_err(|_| CliError::new("invalid_input", format!("--mode '{m}' is not an octal mode like 644"))))
                .transpose()?;
            let mut session = engine()?.session(&sandbox, false, Duration::from_secs(60), &spinner)?;
            let bytes = session.upload(&local, &guest, mode, !no_create_dirs)?;
            Ok(Done::new(
                json!({ "vm_id": sandbox, "local_path": local, "guest_path": guest, "bytes": bytes }),
                format!("Uploaded {bytes} bytes to {sandbox}:{guest}"),
            ))
        }
        FileCmd::Download { sandbox, guest, local, .. } => {
            let mut session = engine()?.session(&sandbox, false, Duration::from_secs(60), &spinner)?;
            // Write to a temporary file beside the target, then rename, so a
            // failed download never leaves a truncated file under the name.
            let dir = local.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile_in(dir)?;
            let (size, mode) = session.download(&guest, &mut tmp.1)?;
            tmp.1.sync_all()?;
            std::fs::set_permissions(&tmp.0, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777))?;
            std::fs::rename(&tmp.0, &local)?;
            Ok(Done::new(
                json!({ "vm_id": sandbox, "local_path": local, "guest_path": guest, "bytes": size }),
                format!("Downloaded {size} bytes to {}", local.display()),
            ))
        }
    }
}

/// Creates a new private file in `dir`; removed on drop unless renamed.
fn tempfile_in(dir: &std::path::Path) -> Result<TempFile, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    for _ in 0..16 {
        let mut r = [0u8; 6];
        let _ = getrandom_fill(&mut r);
        let name = format!(".smolvm-download-{}", r.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let path = dir.join(name);
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => return Ok(TempFile(path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CliError::new("invalid_input", format!("Cannot write into {}: {e}", dir.display()))),
        }
    }
    Err(CliError::new("runtime_error", "Cannot create a temporary file"))
}

struct TempFile(std::path::PathBuf, std::fs::File);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}
