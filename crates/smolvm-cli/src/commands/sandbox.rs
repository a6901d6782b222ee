//! `smolvm sandbox create|start|stop|pause|resume|list|info|logs|delete`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use serde_json::json;
use smolvm_core::sandbox::{CreateOptions, Machine, NetworkMode, PortForward, SandboxInfo, SandboxStatus};

use super::{engine, seconds};
use crate::cli::{CreateArgs, MachineArg, NetworkArg, SandboxCmd, StatusArg};
use crate::output::{CliError, Done};
use crate::progress::Spinner;

pub(crate) fn run(cmd: SandboxCmd) -> Result<Done, CliError> {
    match cmd {
        SandboxCmd::Create(args) => create(args),
        SandboxCmd::Start { sandbox, boot_timeout, out } => {
            let spinner = Spinner::new(out.json);
            let info = engine()?.start(&sandbox, seconds(boot_timeout, "--boot-timeout")?, &spinner)?;
            Ok(vm_done(&info, format!("Sandbox '{}' is {}.", info.name, info.status.as_str())))
        }
        SandboxCmd::Stop { sandbox, timeout, out: _ } => {
            let info = engine()?.stop(&sandbox, seconds(timeout, "--timeout")?)?;
            Ok(vm_done(&info, format!("Sandbox '{}' is {}.", info.name, info.status.as_str())))
        }
        SandboxCmd::Pause { sandbox, .. } => {
            let info = engine()?.pause(&sandbox)?;
            Ok(vm_done(&info, format!("Sandbox '{}' is paused.", info.name)))
        }
        SandboxCmd::Resume { sandbox, .. } => {
            let info = engine()?.resume(&sandbox)?;
            Ok(vm_done(&info, format!("Sandbox '{}' is running.", info.name)))
        }
        SandboxCmd::List { all, status, .. } => list(all, status),
        SandboxCmd::Info { sandbox, .. } => {
            let info = engine()?.info(&sandbox)?;
            let human = render_info(&info);
            Ok(Done::new(json!({ "vm": info }), human))
        }
        SandboxCmd::Logs { sandbox, tail, follow, out } => logs(&sandbox, tail, follow, out.json),
        SandboxCmd::Delete { sandboxes, all, force, out } => delete(sandboxes, all, force, out.json),
        SandboxCmd::Exec(_) | SandboxCmd::Shell { .. } | SandboxCmd::File(_) | SandboxCmd::Snapshot(_) | SandboxCmd::Fork { .. } => unreachable!("routed in commands::run"),
    }
}

fn vm_done(info: &SandboxInfo, human: String) -> Done {
    Done::new(json!({ "vm": { "name": info.name, "status": info.status } }), human)
}

fn create(args: CreateArgs) -> Result<Done, CliError> {
    let ports = args.ports.iter().map(|p| parse_port(p)).collect::<Result<Vec<_>, _>>()?;
    let opts = CreateOptions {
        name: args.name,
        image: args.image,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        disk_size_mib: args.disk_size,
        backend: args.backend,
        accel: args.accel,
        machine: match args.machine {
            MachineArg::Microvm => Machine::Microvm,
            MachineArg::Q35 => Machine::Q35,
        },
        network: match args.network {
            NetworkArg::User => NetworkMode::User,
            NetworkArg::None => NetworkMode::None,
        },
        ports,
        boot_timeout: seconds(args.boot_timeout, "--boot-timeout")?,
    };
    let spinner = Spinner::new(args.out.json);
    let info = engine()?.create(&opts, &spinner)?;
    let took = spinner.elapsed();
    drop(spinner);
    let human = format!(
        "Created sandbox '{0}' ({1} MiB, {2} vCPU, {3}) in {4:.1}s.\nRun a command: smolvm sandbox exec {0} -- uname -a\nOpen a shell:  smolvm sandbox shell {0}",
        info.name,
        info.memory,
        info.vcpus,
        info.accel.as_str(),
        took.as_secs_f64()
    );
    Ok(Done::new(
        json!({
            "vm": { "name": info.name, "status": info.status, "backend": info.backend, "image": info.image, "started_at": info.created_at },
            "boot_seconds": took.as_secs_f64(),
            "next": {
                "exec_command": format!("smolvm sandbox exec {} -- uname -a", info.name),
                "shell_command": format!("smolvm sandbox shell {}", info.name),
                "info_command": format!("smolvm sandbox info {}", info.name),
            },
            "warnings": info.warnings,
        }),
        human,
    ))
}

pub(crate) fn parse_port(s: &str) -> Result<PortForward, CliError> {
    let bad = || CliError::new("invalid_input", format!("--port '{s}' is not HOST:GUEST with ports 1-65535, e.g. --port 8080:80"));
    let (h, g) = s.split_once(':').ok_or_else(bad)?;
    let host: u16 = h.parse().map_err(|_| bad())?;
    let guest: u16 = g.parse().map_err(|_| bad())?;
    if host == 0 || guest == 0 {
        return Err(bad());
    }
    Ok(PortForward { host, guest })
}

fn list(all: bool, status: Option<StatusArg>) -> Result<Done, CliError> {
    let status = status.map(|s| match s {
        StatusArg::Created => SandboxStatus::Created,
        StatusArg::Running => SandboxStatus::Running,
        StatusArg::Paused => SandboxStatus::Paused,
        StatusArg::Stopped => SandboxStatus::Stopped,
        StatusArg::Error => SandboxStatus::Error,
    });
    let vms = engine()?.list(all, status)?;
    let mut human = String::new();
    if vms.is_empty() {
        human.push_str(if all || status.is_some() { "No sandboxes found." } else { "No running sandboxes (use --all to see every sandbox)." });
    } else {
        human.push_str(&format!("{:<24} {:<8} {:<8} {:>8} {:>6}  {}\n", "NAME", "STATUS", "BACKEND", "MEMORY", "PID", "IMAGE"));
        for v in &vms {
            let pid = v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            human.push_str(&format!(
                "{:<24} {:<8} {:<8} {:>5}MiB {:>6}  {}\n",
                v.name,
                v.status.as_str(),
                v.backend.as_str(),
                v.memory,
                pid,
                v.image
            ));
        }
    }
    let rows: Vec<_> = vms
        .iter()
        .map(|v| json!({ "name": v.name, "status": v.status, "pid": v.pid, "ip_address": v.ip_address, "backend": v.backend, "image": v.image, "warnings": v.warnings }))
        .collect();
    let filters = json!({ "all": all, "status": status.map(|s| s.as_str()) });
    Ok(Done::new(json!({ "filters": filters, "vms": rows }), human))
}

fn render_info(v: &SandboxInfo) -> String {
    let ports: Vec<String> = v.ports.iter().map(|p| format!("127.0.0.1:{}->{}", p.host, p.guest)).collect();
    let mut s = format!(
        "Name:     {}\nStatus:   {}\nBackend:  {} ({})\nImage:    {}\nMemory:   {} MiB\nvCPUs:    {}\nDisk:     {} MiB\nIP:       {}\nPorts:    {}\nPID:      {}\nCreated:  {}\nDir:      {}\n",
        v.name,
        v.status.as_str(),
        v.backend.as_str(),
        v.accel.as_str(),
        v.image,
        v.memory,
        v.vcpus,
        v.disk_size,
        v.ip_address.as_deref().unwrap_or("-"),
        if ports.is_empty() { "-".into() } else { ports.join(", ") },
        v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        v.created_at,
        v.dir.display()
    );
    for w in &v.warnings {
        s.push_str(&format!("Warning:  {w}\n"));
    }
    s
}

fn logs(name: &str, tail: usize, follow: bool, json_mode: bool) -> Result<Done, CliError> {
    if follow && json_mode {
        return Err(CliError::new("invalid_input", "--follow cannot be combined with --json"));
    }
    let path = engine()?.console_log(name)?;
    let text = std::fs::read(&path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(tail);
    let shown = &lines[start..];
    if !follow {
        return Ok(Done::new(json!({ "path": path, "lines": shown }), shown.join("\n")));
    }
    let mut out = std::io::stdout().lock();
    for l in shown {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    let mut file = std::fs::File::open(&path)?;
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut buf = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = file.metadata()?.len();
        if len < pos {
            pos = 0; // the log was truncated by a restart
        }
        if len > pos {
            file.seek(SeekFrom::Start(pos))?;
            buf.clear();
            Read::by_ref(&mut file).take(len - pos).read_to_end(&mut buf)?;
            pos = len;
            if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                return Ok(Done::new(json!(null), ""));
            }
        }
    }
}

fn delete(names: Vec<String>, all: bool, force: bool, json_mode: bool) -> Result<Done, CliError> {
    let engine = engine()?;
    if all && !names.is_empty() {
        return Err(CliError::new("invalid_input", "Give sandbox names or --all, not both"));
    }
    if !all && names.is_empty() {
        return Err(CliError::new("invalid_input", "Name the sandboxes to delete, or pass --all"));
    }
    let targets: Vec<String> = if all {
        if !force {
            let msg = "Deleting every sandbox needs confirmation; run 'smolvm sandbox delete --all --force'";
            if json_mode || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                return Err(CliError::new("refused", msg));
            }
            eprint!("Delete every sandbox? [y/N] ");
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !answer.trim().eq_ignore_ascii_case("y") {
                return Err(CliError { exit_code: crate::output::exit::INTERRUPTED, ..CliError::new("refused", "Aborted") });
            }
        }
        engine.list(true, None)?.into_iter().map(|v| v.name).collect()
    } else {
        names
    };
    let mut deleted = Vec::new();
    let mut failed: Vec<(String, CliError)> = Vec::new();
    for name in &targets {
        match engine.delete(name) {
            Ok(()) => deleted.push(name.clone()),
            Err(e) => failed.push((name.clone(), CliError::from_lib(e))),
        }
    }
    let failed_json: Vec<_> = failed.iter().map(|(n, e)| json!({ "vm_id": n, "error": e.message })).collect();
    let data = json!({
        "targets": targets,
        "deleted": deleted,
        "failed": failed_json,
        "summary": { "target_count": targets.len(), "deleted_count": deleted.len(), "failed_count": failed.len() },
    });
    if !failed.is_empty() {
        // One failure keeps its own code; several are a runtime error.
        let code = if failed.len() == 1 { failed[0].1.code.clone() } else { "runtime_error".into() };
        let message = failed.iter().map(|(_, e)| e.message.as_str()).collect::<Vec<_>>().join("; ");
        return Err(CliError { data: Some(data), ..CliError::new(&code, message) });
    }
    let human = if deleted.is_empty() { "Nothing to delete.".to_string() } else { format!("Deleted: {}", deleted.join(", ")) };
    Ok(Done::new(data, human))
}
