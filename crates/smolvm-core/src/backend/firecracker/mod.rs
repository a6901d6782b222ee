//! The Firecracker backend: one `firecracker` process per sandbox, driven
//! through its API socket.
//!
//! Firecracker runs with the sandbox directory as its working directory
//! and every guest-visible path relative to it (`disk.raw`, `vsock.sock`),
//! so the paths its snapshot state records name files of whichever sandbox
//! loads the snapshot: a restored sandbox never opens another sandbox's
//! disk or socket. Its tap device is named from the sandbox directory and
//! passed again on load (`network_overrides`, and `vsock_override` where
//! the version has it).
//!
//! Boot:
//! 1. point `disk.raw` at the sandbox's top disk layer (a raw ext4 file in
//!    `<data>/layers/`), create the tap if the sandbox has a network;
//! 2. start `firecracker --api-sock api.sock` (serial console on stdout
//!    into `console.log`, its log in `vmm.log`) and wait for the socket;
//! 3. PUT `/machine-config` (dirty page tracking on, for Diff snapshots),
//!    `/boot-source` (the image's ELF vmlinux and initramfs),
//!    `/drives/rootfs`, `/network-interfaces/eth0`, `/vsock`;
//! 4. PUT `/actions` InstanceStart.
//!
//! Restore starts a fresh process the same way up to step 2, then
//! PUT `/snapshot/load` with a File memory backend.
//!
//! Disks are raw, so the layer operations of the trait are file clones:
//! by reflink where the filesystem shares extents, else a sparse copy of
//! the data extents (see `files`). Sealing the running VM's top layer
//! clones it and then swaps the two files' names atomically
//! (`RENAME_EXCHANGE`): the VM keeps writing to its open file, which now
//! carries the new top's name, and the clone, identical at that instant,
//! carries the sealed layer's name.

mod api;
mod files;
mod net;
mod requests;
mod version;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use self::api::Client;
use self::net::TapPlan;
use self::requests::*;
use self::version::Installed;
use super::accel::Accel;
use super::{find_program, log_tail, Backend, BackendError, BackendKind, LaunchSpec, MemoryFiles, SavedMemory};
use crate::agent::AgentEndpoint;
use crate::image::Image;
use crate::process::ProcessId;
use crate::sandbox::{Machine, NetworkMode, SandboxConfig};

/// API socket inside the sandbox directory.
pub const API_SOCKET: &str = "api.sock";
/// Vsock host socket inside the sandbox directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Symlink to the top disk layer; the drive's path as Firecracker sees it.
const DISK_LINK: &str = "disk.raw";
/// Serial console output.
const CONSOLE_LOG: &str = "console.log";
/// Firecracker's own log and stderr.
const VMM_LOG: &str = "vmm.log";
/// A merged memory file while it is being loaded.
const RESTORE_MEMORY: &str = "memory.restore";
/// What `launch` set up, for `load_memory` and `kill`.
const LAUNCH_RECORD: &str = "firecracker.json";
const DRIVE_ID: &str = "rootfs";
const IFACE_ID: &str = "eth0";
const GUEST_CID: u32 = 3;
/// Bound on ordinary API calls.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the API socket appearing after the process starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "get Firecracker v1.13 or newer from https://github.com/firecracker-microvm/firecracker/releases (or build it: 'cargo build --release' in its source tree) and put 'firecracker' on PATH or set SMOLVM_FIRECRACKER_BIN=/path/to/firecracker";

/// What one launch set up (kept in the sandbox directory while it runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LaunchRecord {
    /// The tap device, when the sandbox has a network.
    tap: Option<String>,
    /// Guest memory, for scaling timeouts.
    memory_mib: u32,
    /// The guest is one of our Linux images (it runs the smolvm agent), so
    /// it answers Ctrl-Alt-Del by resetting, which ends Firecracker.
    linux_guest: bool,
}

/// The Firecracker backend.
pub struct FirecrackerBackend {
    program: String,
}

/// Probe results per binary path, so one command probes once.
static PROBED: Mutex<Option<HashMap<PathBuf, Installed>>> = Mutex::new(None);

impl FirecrackerBackend {
    /// Uses `SMOLVM_FIRECRACKER_BIN` or `firecracker` from PATH.
    pub fn from_env() -> Self {
        let program = std::env::var("SMOLVM_FIRECRACKER_BIN").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "firecracker".into());
        FirecrackerBackend { program }
    }

    fn binary(&self) -> Result<PathBuf, BackendError> {
        find_program(&self.program)
            .ok_or_else(|| BackendError::NotInstalled { program: self.program.clone(), install_hint: INSTALL_HINT.into() })
    }

    fn installed(&self) -> Result<(PathBuf, Installed), BackendError> {
        let bin = self.binary()?;
        if let Some(found) = PROBED.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(&bin).cloned())) {
            return Ok((bin, found));
        }
        let found = version::probe(&bin)?;
        if let Ok(mut m) = PROBED.lock() {
            m.get_or_insert_with(HashMap::new).insert(bin.clone(), found.clone());
        }
        Ok((bin, found))
    }

    fn client(dir: &Path) -> Client {
        Client::new(dir.join(API_SOCKET))
    }

    fn read_record(dir: &Path) -> Option<LaunchRecord> {
        serde_json::from_slice(&std::fs::read(dir.join(LAUNCH_RECORD)).ok()?).ok()
    }

    /// Removes what a launch leaves in the sandbox directory and its tap.
    fn clean_runtime(&self, dir: &Path) {
        for f in self.runtime_files(dir) {
            let _ = std::fs::remove_file(f);
        }
        let _ = TapPlan::for_sandbox(dir).delete();
    }

    /// Waits until the API socket answers.
    fn wait_api(dir: &Path, child: &mut Child) -> Result<(), BackendError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = Self::client(dir);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(BackendError::ExitedEarly { log_tail: log_tail(&dir.join(VMM_LOG), 2000) });
            }
            match client.get("/version", Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(api_error("waiting for the API socket", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Configures the machine and boots it (steps 3 and 4 of the module docs).
    fn configure_and_start(&self, spec: &LaunchSpec<'_>, tap: Option<&TapPlan>) -> Result<(), BackendError> {
        let client = Self::client(spec.dir);
        let c = spec.config;
        let put = |path: &str, body: serde_json::Value, what: &str| -> Result<(), BackendError> {
            client.put(path, &body, API_TIMEOUT).map(drop).map_err(|e| api_error(what, e))
        };
        let kernel = spec.image.vmlinux();
        if !kernel.is_file() {
            return Err(BackendError::Unsupported(format!(
                "Image '{}' has no ELF kernel (vmlinux), which Firecracker needs; rebuild the image or use '--backend qemu'",
                spec.image.name
            )));
        }
        let initrd = spec.image.initramfs();
        put(
            "/machine-config",
            json(&MachineConfiguration { vcpu_count: c.vcpus, mem_size_mib: c.memory_mib, smt: false, track_dirty_pages: true }),
            "configuring the machine",
        )?;
        put(
            "/boot-source",
            json(&BootSource {
                kernel_image_path: kernel.display().to_string(),
                initrd_path: initrd.is_file().then(|| initrd.display().to_string()),
                boot_args: kernel_cmdline(spec, tap),
            }),
            "setting the boot source",
        )?;
        put(&format!("/drives/{DRIVE_ID}"), json(&root_drive()), "attaching the root disk")?;
        if let Some(tap) = tap {
            put(
                &format!("/network-interfaces/{IFACE_ID}"),
                json(&NetworkInterface { iface_id: IFACE_ID.into(), host_dev_name: tap.name.clone(), guest_mac: c.mac.clone() }),
                "attaching the network interface",
            )?;
        }
        put("/vsock", json(&Vsock { guest_cid: GUEST_CID, uds_path: VSOCK_SOCKET.into() }), "attaching the vsock device")?;
        let start_timeout = API_TIMEOUT + Duration::from_secs(u64::from(c.memory_mib) / 128);
        client
            .put("/actions", &InstanceActionInfo { action_type: ActionType::InstanceStart }, start_timeout)
            .map_err(|e| api_error("starting the guest", e))?;
        if spec.paused {
            self.pause(spec.dir)?;
        }
        Ok(())
    }

    fn set_state(dir: &Path, state: VmState) -> Result<(), BackendError> {
        let what = match state {
            VmState::Paused => "pausing the guest",
            VmState::Resumed => "resuming the guest",
        };
        Self::client(dir).patch("/vm", &Vm { state }, API_TIMEOUT).map(drop).map_err(|e| api_error(what, e))
    }
}

/// A request body as JSON (our request types always serialize).
fn json(body: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(body).unwrap_or_default()
}

fn root_drive() -> Drive {
    Drive {
        drive_id: DRIVE_ID.into(),
        path_on_host: DISK_LINK.into(),
        is_root_device: true,
        is_read_only: false,
        cache_type: CacheType::Writeback,
    }
}

fn api_error(what: &str, source: api::ApiError) -> BackendError {
    BackendError::ControlApi { vmm: "Firecracker", what: what.to_string(), source: Box::new(source) }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io { path: path.to_path_buf(), source }
}

/// The guest kernel command line: the image's needs plus our identity and
/// network parameters (read by the guest init). No gateway is given: the
/// guest's link reaches the host and nothing else.
fn kernel_cmdline(spec: &LaunchSpec<'_>, tap: Option<&TapPlan>) -> String {
    let mut base = crate::image::KERNEL_CMDLINE_BASE.to_string();
    if std::env::var_os("SMOLVM_VERBOSE_BOOT").is_some_and(|v| !v.is_empty() && v != "0") {
        base = base.replace(" quiet", "");
    }
    // reboot=k: a guest reboot resets through the keyboard controller,
    // which makes Firecracker exit.
    let mut parts = vec![base, "reboot=k".into(), format!("smolvm.hostname={}", spec.name)];
    if let Some(tap) = tap {
        parts.push(format!("smolvm.ip={}/30", tap.guest_ip));
    }
    parts.join(" ")
}

/// The raw disk layer the sandbox's Firecracker (per its pid file) has
/// open, found through /proc/<pid>/fd.
fn open_layer(dir: &Path) -> Option<PathBuf> {
    let pid: i32 = std::fs::read_to_string(dir.join(crate::sandbox::PIDFILE)).ok()?.trim().parse().ok()?;
    let ext = format!(".{}", BackendKind::Firecracker.layer_extension());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .find(|p| p.to_string_lossy().ends_with(&ext) && p.parent().and_then(Path::file_name).is_some_and(|d| d == "layers"))
}

/// Makes `dir/disk.raw` point at `target`, atomically.
fn point_disk(dir: &Path, target: &Path) -> Result<(), BackendError> {
    let tmp = dir.join(format!(".{DISK_LINK}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, dir.join(DISK_LINK)).map_err(io_error(&tmp))
}

/// Swaps the names of two files atomically (falling back to three renames
/// on filesystems without RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
            let tmp = a.with_extension("swap");
            std::fs::rename(a, &tmp)?;
            std::fs::rename(b, a)?;
            std::fs::rename(&tmp, b)
        }
        Err(e) => Err(e.into()),
    }
}

fn create_private(path: &Path) -> Result<File, BackendError> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io_error(path))
}

/// Kills a half-launched Firecracker and undoes its setup unless disarmed.
struct LaunchGuard<'a> {
    backend: &'a FirecrackerBackend,
    dir: &'a Path,
    child: Option<Child>,
}

impl LaunchGuard<'_> {
    fn disarm(mut self) {
        self.child = None;
    }
}

impl Drop for LaunchGuard<'_> {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.child.is_some() {
            self.backend.clean_runtime(self.dir);
        }
    }
}

impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn check_installed(&self) -> Result<String, BackendError> {
        Ok(self.installed()?.1.describe())
    }

    fn usable_for_auto(&self) -> bool {
        super::accel::kvm_usable() && self.installed().is_ok()
    }

    fn fixed_accel(&self) -> Option<Accel> {
        Some(Accel::Kvm)
    }

    fn validate_config(&self, config: &SandboxConfig) -> Result<(), BackendError> {
        if !config.ports.is_empty() {
            return Err(BackendError::Unsupported(
                "Port forwards (--port) need '--backend qemu'; a Firecracker guest is reached on its own link address instead (see 'smolvm sandbox info')".into(),
            ));
        }
        if config.machine != Machine::Microvm {
            return Err(BackendError::Unsupported("Firecracker has one machine type; drop '--machine' or use '--backend qemu'".into()));
        }
        if config.accel != Accel::Kvm {
            return Err(BackendError::Unsupported("Firecracker always runs guests with KVM; drop '--accel tcg' or use '--backend qemu'".into()));
        }
        Ok(())
    }

    fn create_disk(&self, image: &Image, dest: &Path, size_mib: u64) -> Result<(), BackendError> {
        files::clone_file(&image.rootfs(), dest).map_err(io_error(dest))?;
        let f = OpenOptions::new().write(true).open(dest).map_err(io_error(dest))?;
        let want = size_mib << 20;
        if f.metadata().map_err(io_error(dest))?.len() < want {
            f.set_len(want).map_err(io_error(dest))?;
        }
        Ok(())
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<ProcessId, BackendError> {
        let (bin, _) = self.installed()?;
        if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            return Err(BackendError::Unsupported(format!(
                "Firecracker needs read-write access to /dev/kvm ({e}); use '--backend qemu' where KVM is not available"
            )));
        }
        self.clean_runtime(spec.dir);
        point_disk(spec.dir, spec.disk)?;
        let tap = match spec.config.network {
            NetworkMode::User => {
                let plan = TapPlan::for_sandbox(spec.dir);
                plan.create().map_err(|e| {
                    BackendError::Unsupported(format!(
                        "Cannot create tap device {} for the guest's network ({e}); Firecracker networking needs root (CAP_NET_ADMIN) and /dev/net/tun. Run as root or pass '--network none'",
                        plan.name
                    ))
                })?;
                Some(plan)
            }
            NetworkMode::None => None,
        };
        let record = LaunchRecord {
            tap: tap.as_ref().map(|t| t.name.clone()),
            memory_mib: spec.config.memory_mib,
            linux_guest: spec.image.ready.has_agent(),
        };
        let mut guard = LaunchGuard { backend: self, dir: spec.dir, child: None };
        let record_path = spec.dir.join(LAUNCH_RECORD);
        std::fs::write(&record_path, serde_json::to_vec(&record).unwrap_or_default()).map_err(io_error(&record_path))?;

        let console_path = spec.dir.join(CONSOLE_LOG);
        let console = OpenOptions::new().create(true).append(true).open(&console_path).map_err(io_error(&console_path))?;
        let log_path = spec.dir.join(VMM_LOG);
        let log = OpenOptions::new().create(true).write(true).truncate(true).open(&log_path).map_err(io_error(&log_path))?;
        let log2 = log.try_clone().map_err(io_error(&log_path))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--api-sock", API_SOCKET, "--log-path", VMM_LOG, "--level", "Warning"]);
        if let Ok(extra) = std::env::var("SMOLVM_FIRECRACKER_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let child = cmd
            .current_dir(spec.dir)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log2)
            // Own process group: a Ctrl-C at the terminal that ran smolvm
            // must not kill the sandbox.
            .process_group(0)
            .spawn()
            .map_err(|source| BackendError::Spawn { program: bin.display().to_string(), source })?;
        drop(log);
        let pid = child.id() as i32;
        guard.child = Some(child);
        // Lets a later command find (and kill) a Firecracker whose
        // launcher crashed.
        let pidfile = spec.dir.join(crate::sandbox::PIDFILE);
        std::fs::write(&pidfile, format!("{pid}\n")).map_err(io_error(&pidfile))?;
        let process =
            ProcessId::of(pid).ok_or_else(|| BackendError::ExitedEarly { log_tail: log_tail(&spec.dir.join(VMM_LOG), 2000) })?;
        Self::wait_api(spec.dir, guard.child.as_mut().expect("set above"))?;
        if spec.incoming.is_none() {
            self.configure_and_start(spec, tap.as_ref()).map_err(|e| match e {
                // A fault may be Firecracker dying: show its last words.
                BackendError::ControlApi { .. } if !process.is_alive() => {
                    BackendError::ExitedEarly { log_tail: log_tail(&spec.dir.join(VMM_LOG), 2000) }
                }
                other => other,
            })?;
        }
        guard.disarm();
        Ok(process)
    }

    fn pause(&self, dir: &Path) -> Result<(), BackendError> {
        Self::set_state(dir, VmState::Paused)
    }

    fn resume(&self, dir: &Path) -> Result<(), BackendError> {
        Self::set_state(dir, VmState::Resumed)
    }

    fn kill(&self, dir: &Path, process: &ProcessId, grace: Duration) -> Result<(), BackendError> {
        if process.is_alive() {
            // Firecracker has no quit call: a Linux guest asked to reboot
            // resets, and Firecracker then exits by itself. A guest that
            // ignores it (or is paused) is ended with SIGTERM, then SIGKILL;
            // one not known to react gets no grace time.
            let grace = match Self::read_record(dir) {
                Some(r) if r.linux_guest => grace,
                _ => Duration::ZERO,
            };
            let asked = !grace.is_zero()
                && Self::client(dir)
                    .put("/actions", &InstanceActionInfo { action_type: ActionType::SendCtrlAltDel }, Duration::from_secs(1))
                    .is_ok();
            if !(asked && process.wait_gone(grace)) {
                process.terminate(Duration::from_secs(2));
            }
        }
        self.clean_runtime(dir);
        Ok(())
    }

    fn seal_disk(&self, dir: &Path, top_id: &str, new_top: &Path, _new_top_id: &str) -> Result<(), BackendError> {
        let live = new_top.with_file_name(format!("{top_id}.{}", BackendKind::Firecracker.layer_extension()));
        let linked = std::fs::read_link(dir.join(DISK_LINK)).map_err(io_error(&dir.join(DISK_LINK)))?;
        if linked != live {
            return Err(BackendError::Unsupported(format!(
                "The running VM's disk is {} but the sandbox's top layer is {}; stop and start the sandbox",
                linked.display(),
                live.display()
            )));
        }
        files::clone_file(&live, new_top).map_err(io_error(new_top))?;
        if let Err(e) = exchange(&live, new_top) {
            let _ = std::fs::remove_file(new_top);
            return Err(BackendError::Io { path: live, source: e });
        }
        if let Err(e) = point_disk(dir, new_top) {
            // Not fatal: every launch points the link at the top layer.
            tracing::warn!(error = %e, "could not re-point disk.raw after sealing");
        }
        Ok(())
    }

    fn save_memory(&self, dir: &Path, dest: &MemoryFiles<'_>, want_delta: bool, timeout: Duration) -> Result<SavedMemory, BackendError> {
        // Created here so guest memory is never readable by others.
        create_private(dest.memory)?;
        create_private(dest.state)?;
        let params = SnapshotCreateParams {
            snapshot_path: dest.state.display().to_string(),
            mem_file_path: dest.memory.display().to_string(),
            snapshot_type: if want_delta { SnapshotKind::Diff } else { SnapshotKind::Full },
        };
        Self::client(dir).put("/snapshot/create", &params, timeout).map_err(|e| api_error("writing the snapshot", e))?;
        Ok(SavedMemory { delta: want_delta, state_file: true })
    }

    fn compact_memory(&self, memory: &Path, delta: bool) -> Result<u64, BackendError> {
        // A Diff file's zero pages are pages the guest zeroed: they must
        // stay. A Full file is written whole; its zero pages can be holes.
        if delta {
            return Ok(0);
        }
        files::punch_zero_pages(memory).map_err(io_error(memory))
    }

    fn load_memory(&self, dir: &Path, chain: &[&Path], state: Option<&Path>, resume: bool, timeout: Duration) -> Result<(), BackendError> {
        let state = state.ok_or_else(|| BackendError::Unsupported("The snapshot has no Firecracker state file".into()))?;
        let (_, installed) = self.installed()?;
        let record = Self::read_record(dir);
        let merged = dir.join(RESTORE_MEMORY);
        let memory: PathBuf = match chain {
            [] => return Err(BackendError::Unsupported("The snapshot has no memory file".into())),
            [only] => only.to_path_buf(),
            layers => {
                let _ = std::fs::remove_file(&merged);
                self.merge_memory(layers, &merged)?;
                merged.clone()
            }
        };
        let params = SnapshotLoadParams {
            snapshot_path: state.display().to_string(),
            mem_backend: MemoryBackend { backend_type: MemoryBackendType::File, backend_path: memory.display().to_string() },
            track_dirty_pages: true,
            resume_vm: resume,
            network_overrides: record
                .as_ref()
                .and_then(|r| r.tap.clone())
                .map(|tap| vec![NetworkOverride { iface_id: IFACE_ID.into(), host_dev_name: tap }])
                .unwrap_or_default(),
            vsock_override: (installed.release >= version::VSOCK_OVERRIDE_SINCE)
                .then(|| VsockOverride { uds_path: VSOCK_SOCKET.into() }),
        };
        let result = Self::client(dir).put("/snapshot/load", &params, timeout).map_err(|e| api_error("loading the snapshot", e));
        // Firecracker maps the file privately: the mapping keeps it alive.
        let _ = std::fs::remove_file(&merged);
        result.map(drop)
    }

    fn merge_memory(&self, chain: &[&Path], dest: &Path) -> Result<(), BackendError> {
        files::merge_layers(chain, dest).map_err(io_error(dest))?;
        if let Err(e) = files::verify_merge(chain, dest) {
            let _ = std::fs::remove_file(dest);
            return Err(BackendError::Io { path: dest.to_path_buf(), source: e });
        }
        Ok(())
    }

    fn check_restorable(&self, recorded_version: &str, state: Option<&Path>) -> Result<(), BackendError> {
        let (bin, installed) = self.installed()?;
        let Some(state) = state else { return Ok(()) };
        let format = version::state_file_format(&bin, state)?;
        if installed.can_load(format) {
            return Ok(());
        }
        Err(BackendError::Incompatible(format!(
            "The snapshot was written by {recorded_version} in snapshot format v{format}, which {} cannot load (it loads v{}.0 to v{}.{}); restore it with a matching Firecracker (SMOLVM_FIRECRACKER_BIN)",
            installed.describe(),
            installed.snapshot_format.0,
            installed.snapshot_format.0,
            installed.snapshot_format.1
        )))
    }

    fn branch_disk(&self, parent: &Path, dest: &Path) -> Result<(), BackendError> {
        files::clone_file(parent, dest).map(drop).map_err(io_error(dest))
    }

    fn settle(&self, dir: &Path, resume: bool) -> Result<Option<String>, BackendError> {
        // A snapshot interrupted midway leaves Firecracker paused at most
        // (its API calls are synchronous); resuming a running VM is a no-op.
        if resume {
            self.resume(dir)?;
        }
        // The layer Firecracker really writes to is the raw file it holds
        // open (a seal renames files under it); the link follows it.
        let open = open_layer(dir);
        if let Some(path) = &open {
            let _ = point_disk(dir, path);
        }
        let top = open
            .or_else(|| std::fs::read_link(dir.join(DISK_LINK)).ok())
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
        Ok(top)
    }

    fn agent_endpoint(&self, dir: &Path) -> AgentEndpoint {
        AgentEndpoint::VsockUds { path: dir.join(VSOCK_SOCKET), port: smolvm_proto::AGENT_VSOCK_PORT }
    }

    fn guest_ip(&self, dir: &Path, config: &SandboxConfig) -> Option<String> {
        (config.network == NetworkMode::User).then(|| TapPlan::for_sandbox(dir).guest_ip.to_string())
    }

    fn runtime_files(&self, dir: &Path) -> Vec<PathBuf> {
        [API_SOCKET, VSOCK_SOCKET, RESTORE_MEMORY, LAUNCH_RECORD, crate::sandbox::PIDFILE].iter().map(|f| dir.join(f)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::requests::tests::check_request;
    use super::*;

    fn config(network: NetworkMode) -> SandboxConfig {
        SandboxConfig {
            image: "guest".into(),
            backend: BackendKind::Firecracker,
            accel: Accel::Kvm,
            machine: Machine::Microvm,
            memory_mib: 512,
            vcpus: 2,
            disk_size_mib: 64,
            network,
            ports: vec![],
            mac: "52:54:00:12:34:56".into(),
            vmm_version: None,
        }
    }

    fn assert_fits(method: &str, path: &str, body: &impl Serialize) {
        let v = serde_json::to_value(body).unwrap();
        let problems = check_request(method, path, Some(&v));
        assert!(problems.is_empty(), "{method} {path} {v}: {problems:#?}");
    }

    /// Every request body this backend sends, built the way it builds
    /// them, matches Firecracker's API definition.
    #[test]
    fn every_request_matches_the_api_definition() {
        let dir = Path::new("/var/lib/smolvm/sandboxes/demo");
        let tap = TapPlan::for_sandbox(dir);
        let c = config(NetworkMode::User);
        assert_fits("PUT", "/machine-config", &MachineConfiguration { vcpu_count: c.vcpus, mem_size_mib: c.memory_mib, smt: false, track_dirty_pages: true });
        for initrd in [None, Some("/images/x/initramfs.cpio.gz".to_string())] {
            assert_fits("PUT", "/boot-source", &BootSource { kernel_image_path: "/images/x/vmlinux".into(), initrd_path: initrd, boot_args: "console=ttyS0".into() });
        }
        assert_fits("PUT", &format!("/drives/{DRIVE_ID}"), &root_drive());
        assert_fits(
            "PUT",
            &format!("/network-interfaces/{IFACE_ID}"),
            &NetworkInterface { iface_id: IFACE_ID.into(), host_dev_name: tap.name.clone(), guest_mac: c.mac.clone() },
        );
        assert_fits("PUT", "/vsock", &Vsock { guest_cid: GUEST_CID, uds_path: VSOCK_SOCKET.into() });
        for action_type in [ActionType::InstanceStart, ActionType::SendCtrlAltDel] {
            assert_fits("PUT", "/actions", &InstanceActionInfo { action_type });
        }
        for state in [VmState::Paused, VmState::Resumed] {
            assert_fits("PATCH", "/vm", &Vm { state });
        }
        for snapshot_type in [SnapshotKind::Full, SnapshotKind::Diff] {
            assert_fits("PUT", "/snapshot/create", &SnapshotCreateParams { snapshot_path: "/s/vmstate.bin".into(), mem_file_path: "/s/memory.bin".into(), snapshot_type });
        }
        for (net, vsock) in [(false, false), (true, true)] {
            assert_fits(
                "PUT",
                "/snapshot/load",
                &SnapshotLoadParams {
                    snapshot_path: "/s/vmstate.bin".into(),
                    mem_backend: MemoryBackend { backend_type: MemoryBackendType::File, backend_path: "/s/memory.bin".into() },
                    track_dirty_pages: true,
                    resume_vm: net,
                    network_overrides: if net { vec![NetworkOverride { iface_id: IFACE_ID.into(), host_dev_name: tap.name.clone() }] } else { vec![] },
                    vsock_override: vsock.then(|| VsockOverride { uds_path: VSOCK_SOCKET.into() }),
                },
            );
        }
        assert!(check_request("GET", "/version", None).is_empty());
    }

    /// Against a real Firecracker (SMOLVM_FIRECRACKER_BIN): its faults
    /// reach us with its own fault_message, and it rejects unknown fields.
    #[test]
    fn real_firecracker_faults_carry_its_fault_message() {
        let Some(bin) = std::env::var_os("SMOLVM_FIRECRACKER_BIN").map(PathBuf::from).filter(|p| p.is_file()) else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: set SMOLVM_FIRECRACKER_BIN to check faults against a real firecracker");
            return;
        };
        let t = tempfile::tempdir().unwrap();
        let mut child = Command::new(&bin)
            .args(["--api-sock", API_SOCKET, "--level", "Off"])
            .current_dir(t.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let result = std::panic::catch_unwind(|| {
            let client = Client::new(t.path().join(API_SOCKET));
            assert!(wait(|| client.get("/version", Duration::from_secs(1)).is_ok()));
            let bad = serde_json::json!({ "vcpu_count": 0, "mem_size_mib": 128 });
            match client.put("/machine-config", &bad, API_TIMEOUT) {
                Err(api::ApiError::Fault { status: 400, fault_message, .. }) => assert!(!fault_message.is_empty()),
                other => panic!("{other:?}"),
            }
            let unknown = serde_json::json!({ "vcpu_count": 1, "mem_size_mib": 128, "dirty_tracking": true });
            let e = client.put("/machine-config", &unknown, API_TIMEOUT).unwrap_err();
            assert!(e.to_string().contains("dirty_tracking"), "{e}");
            // What the backend reports carries it too.
            let e = api_error("writing the snapshot", client.put("/snapshot/create", &serde_json::json!({}), API_TIMEOUT).unwrap_err());
            let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(chain.starts_with("Firecracker failed while writing the snapshot: Firecracker refused PUT /snapshot/create"), "{chain}");
        });
        let _ = child.kill();
        let _ = child.wait();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn configs_firecracker_cannot_run_are_refused() {
        let fc = FirecrackerBackend { program: "firecracker".into() };
        assert!(fc.validate_config(&config(NetworkMode::None)).is_ok());
        let mut c = config(NetworkMode::User);
        c.ports = vec![crate::sandbox::PortForward { host: 8080, guest: 80 }];
        assert!(fc.validate_config(&c).unwrap_err().to_string().contains("--backend qemu"));
        let mut c = config(NetworkMode::None);
        c.accel = Accel::Tcg;
        assert!(fc.validate_config(&c).is_err());
    }

    #[test]
    fn a_missing_binary_says_where_to_get_it() {
        let fc = FirecrackerBackend { program: "/nonexistent/firecracker".into() };
        let e = fc.check_installed().unwrap_err().to_string();
        assert!(e.contains("SMOLVM_FIRECRACKER_BIN") && e.contains("github.com/firecracker-microvm"), "{e}");
    }

    #[test]
    fn sealing_swaps_the_live_file_and_its_clone() {
        let t = tempfile::tempdir().unwrap();
        let (dir, layers) = (t.path().join("sbx"), t.path().join("layers"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&layers).unwrap();
        let live = layers.join("l-0000000000000001.raw");
        std::fs::write(&live, b"before").unwrap();
        point_disk(&dir, &live).unwrap();
        // The "VM" holds the file open across the seal.
        let mut vm = OpenOptions::new().write(true).open(dir.join(DISK_LINK)).unwrap();
        let new_top = layers.join("l-0000000000000002.raw");
        let fc = FirecrackerBackend { program: "firecracker".into() };
        fc.seal_disk(&dir, "l-0000000000000001", &new_top, "l-0000000000000002").unwrap();
        use std::io::Write;
        vm.write_all(b"AFTER!").unwrap();
        drop(vm);
        assert_eq!(std::fs::read(&live).unwrap(), b"before", "the sealed layer never changes");
        assert_eq!(std::fs::read(&new_top).unwrap(), b"AFTER!", "the VM went on writing to the new top");
        assert_eq!(std::fs::read_link(dir.join(DISK_LINK)).unwrap(), new_top);
        // Sealing a layer the VM is not on is refused.
        assert!(fc.seal_disk(&dir, "l-0000000000000001", &layers.join("l-0000000000000003.raw"), "x").is_err());
    }
}
