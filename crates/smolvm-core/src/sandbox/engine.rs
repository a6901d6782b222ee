//! The sandbox engine: every lifecycle operation, each under the
//! sandbox's lock, each reconciling the stored state with the real VMM
//! process first.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Machine, NetworkMode, PortForward, SandboxConfig, SandboxError, SandboxStatus};
use crate::agent::{self, AgentSession};
use crate::backend::accel::{self, Accel};
use crate::backend::{AnyBackend, Backend, BackendKind, LaunchSpec};
use crate::image::{Image, ImageStore};
use crate::layers::Layers;
use crate::lock::{lock_exclusive, LockGuard};
use crate::names;
use crate::paths::{create_private_dir, DataDir};
use crate::store::{SandboxRow, Store};

/// How long a command waits for another one holding the same sandbox.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Receives progress messages for a terminal display.
pub trait Progress {
    /// A new step begins.
    fn step(&self, message: &str);
    /// A one-line notice for the user (e.g. the TCG fallback).
    fn notice(&self, message: &str);
}

/// What `create` is asked for (already parsed, not yet validated).
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Name; generated when None.
    pub name: Option<String>,
    /// Image name.
    pub image: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Disk size in MiB (None: the image's size).
    pub disk_size_mib: Option<u64>,
    /// "auto", "qemu" or "firecracker".
    pub backend: String,
    /// "auto", "kvm" or "tcg".
    pub accel: String,
    /// QEMU machine type.
    pub machine: Machine,
    /// Networking.
    pub network: NetworkMode,
    /// Port forwards.
    pub ports: Vec<PortForward>,
    /// How long to wait for the agent.
    pub boot_timeout: Duration,
}

/// A sandbox as shown to users.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxInfo {
    /// Name.
    pub name: String,
    /// Status.
    pub status: SandboxStatus,
    /// Backend.
    pub backend: BackendKind,
    /// Image.
    pub image: String,
    /// VMM pid when running or paused.
    pub pid: Option<i32>,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory (MiB).
    pub memory: u32,
    /// Disk size (MiB).
    pub disk_size: u64,
    /// Acceleration.
    pub accel: Accel,
    /// Guest IP address.
    pub ip_address: Option<String>,
    /// The VMM that ran it last (e.g. its version string).
    pub vmm_version: Option<String>,
    /// Port forwards.
    pub ports: Vec<PortForward>,
    /// Sandbox directory.
    pub dir: PathBuf,
    /// Creation time.
    pub created_at: String,
    /// Notes, e.g. that the VMM died.
    pub warnings: Vec<String>,
}

/// The engine over one data directory.
pub struct Engine {
    data: DataDir,
    store: Store,
    images: ImageStore,
}

impl Engine {
    /// Opens the engine on `data`.
    pub fn open(data: DataDir) -> Result<Self, SandboxError> {
        let store = Store::open(&data.db())?;
        let images = ImageStore::new(data.root()).with_images_dir(data.images());
        Ok(Engine { data, store, images })
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }
    /// The state store.
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Takes the per-sandbox lock every mutating command holds.
    /// Taking it also repairs whatever a crashed command left behind.
    pub fn lock(&self, name: &str) -> Result<LockGuard, SandboxError> {
        names::validate("sandbox name", name)?;
        let guard = lock_exclusive(&self.lock_path(name), &format!("Sandbox '{name}'"), LOCK_WAIT)?;
        self.recover(name)?;
        Ok(guard)
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.data.locks().join(format!("sandbox-{name}.lock"))
    }

    /// Reads a sandbox row, reconciling it with reality: a running or
    /// paused sandbox whose VMM is gone becomes `error`.
    pub fn get(&self, name: &str) -> Result<SandboxRow, SandboxError> {
        names::validate("sandbox name", name)?;
        // Read-only commands repair too, when nobody is working on it.
        if self.data.sandbox(name).join(super::recover::JOURNAL).exists() {
            if let Ok(Some(_guard)) = crate::lock::try_lock_exclusive(&self.lock_path(name)) {
                self.recover(name)?;
            }
        }
        let row = self.store.get_sandbox(name)?.ok_or_else(|| SandboxError::NotFound { name: name.into() })?;
        self.reconcile(row)
    }

    fn reconcile(&self, mut row: SandboxRow) -> Result<SandboxRow, SandboxError> {
        if row.status.has_vmm() && !row.process.is_some_and(|p| p.is_alive()) {
            tracing::warn!(sandbox = %row.name, "VMM process is gone; marking the sandbox as error");
            let dir = self.data.sandbox(&row.name);
            for f in AnyBackend::new(row.config.backend).runtime_files(&dir) {
                let _ = std::fs::remove_file(f);
            }
            self.store.set_status(&row.name, SandboxStatus::Error, None)?;
            row.status = SandboxStatus::Error;
            row.process = None;
        }
        Ok(row)
    }

    /// Creates and boots a sandbox; returns once its agent answers.
    pub fn create(&self, opts: &CreateOptions, progress: &dyn Progress) -> Result<SandboxInfo, SandboxError> {
        let name = match &opts.name {
            Some(n) => n.clone(),
            None => generated_name(),
        };
        names::validate("sandbox name", &name)?;
        if !(128..=16384).contains(&opts.memory_mib) {
            return Err(SandboxError::InvalidInput(format!(
                "--memory {} MiB is out of range; use 128 to 16384",
                opts.memory_mib
            )));
        }
        if !(1..=32).contains(&opts.vcpus) {
            return Err(SandboxError::InvalidInput(format!("--vcpus {} is out of range; use 1 to 32", opts.vcpus)));
        }
        let backend_kind = resolve_backend(&opts.backend)?;
        let backend = AnyBackend::new(backend_kind);
        let vmm_version = backend.check_installed()?;
        let accel = match backend.fixed_accel() {
            Some(only) if opts.accel == "auto" || opts.accel == only.as_str() => only,
            Some(only) => {
                return Err(SandboxError::InvalidInput(format!(
                    "the {} backend always uses {}; drop '--accel {}' (or SMOLVM_ACCEL)",
                    backend_kind.as_str(),
                    only.as_str(),
                    opts.accel
                )))
            }
            None => resolve_accel(&opts.accel, progress)?,
        };
        let image = self.images.get(&opts.image)?;
        let image_mib = image_size_mib(&image);
        let disk_size_mib = opts.disk_size_mib.unwrap_or(image_mib);
        if disk_size_mib < image_mib || disk_size_mib > 2 * 1024 * 1024 {
            return Err(SandboxError::InvalidInput(format!(
                "--disk-size {disk_size_mib} MiB is out of range; use {image_mib} (the image's size) to 2097152"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &opts.ports {
            if p.host == 0 || p.guest == 0 || !seen.insert(p.host) {
                return Err(SandboxError::InvalidInput(format!(
                    "--port {}:{} is not valid; ports are 1-65535 and each host port is used once",
                    p.host, p.guest
                )));
            }
        }
        let config = SandboxConfig {
            image: image.name.clone(),
            backend: backend_kind,
            accel,
            machine: opts.machine,
            memory_mib: opts.memory_mib,
            vcpus: opts.vcpus,
            disk_size_mib,
            network: opts.network,
            ports: opts.ports.clone(),
            mac: super::random_mac(),
            vmm_version: Some(vmm_version),
        };
        backend.validate_config(&config)?;

        let _lock = self.lock(&name)?;
        let now = crate::now_rfc3339();
        let layer = Layers::new_id();
        let row = SandboxRow {
            name: name.clone(),
            status: SandboxStatus::Created,
            config,
            disk_chain: vec![layer.clone()],
            process: None,
            created_at: now.clone(),
            updated_at: now,
        };
        self.store.insert_sandbox(&row).map_err(|e| match e {
            crate::store::StoreError::Exists { .. } => SandboxError::Exists { name: name.clone() },
            other => other.into(),
        })?;
        let dir = self.data.sandbox(&name);
        let result = (|| {
            // A directory without a row is what a crashed create left.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|source| SandboxError::Io { path: dir.clone(), source })?;
            }
            create_private_dir(&dir).map_err(|source| SandboxError::Io { path: dir.clone(), source })?;
            progress.step("Creating the copy-on-write disk");
            backend.create_disk(&image, &self.layers_for(backend_kind).path(&layer), disk_size_mib)?;
            self.boot(&row, &image, &backend, opts.boot_timeout, progress)
        })();
        match result {
            Ok(()) => self.info(&name),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = self.store.delete_sandbox(&name);
                let _ = std::fs::remove_file(self.layers().path(&layer));
                Err(e)
            }
        }
    }

    /// Launches the VMM for `row` and waits for the agent; records the
    /// process. On failure the VMM is killed and nothing is recorded.
    fn boot(
        &self,
        row: &SandboxRow,
        image: &Image,
        backend: &AnyBackend,
        timeout: Duration,
        progress: &dyn Progress,
    ) -> Result<(), SandboxError> {
        let dir = self.data.sandbox(&row.name);
        progress.step(&format!("Booting '{}' ({}, {})", row.name, backend.kind().as_str(), row.config.accel.as_str()));
        let disk = self.top_layer(row)?;
        let disk_id = row.disk_chain.last().map(String::as_str).unwrap_or_default();
        let spec = LaunchSpec { name: &row.name, dir: &dir, config: &row.config, image, disk: &disk, disk_id, paused: false, incoming: None };
        let console_from = super::console_offset(&dir);
        let process = backend.launch(&spec)?;
        if let Some(e) = super::wait_guest_ready(&row.name, &dir, image, backend, &process, console_from, timeout, progress).err() {
            let _ = backend.kill(&dir, &process, Duration::from_secs(2));
            return Err(e);
        }
        self.store.set_status(&row.name, SandboxStatus::Running, Some(process))?;
        Ok(())
    }

    /// Boots a created, stopped or error sandbox; resumes a paused one;
    /// no-op for a running one.
    pub fn start(&self, name: &str, timeout: Duration, progress: &dyn Progress) -> Result<SandboxInfo, SandboxError> {
        let _lock = self.lock(name)?;
        let row = self.get(name)?;
        match row.status {
            SandboxStatus::Running => {}
            SandboxStatus::Paused => self.resume_locked(&row)?,
            SandboxStatus::Created | SandboxStatus::Stopped | SandboxStatus::Error => {
                let image = self.images.get(&row.config.image)?;
                let backend = AnyBackend::new(row.config.backend);
                backend.check_installed()?;
                self.boot(&row, &image, &backend, timeout, progress)?;
            }
        }
        self.info(name)
    }

    /// Stops the vCPUs of a running sandbox.
    pub fn pause(&self, name: &str) -> Result<SandboxInfo, SandboxError> {
        let _lock = self.lock(name)?;
        let row = self.get(name)?;
        if row.status != SandboxStatus::Running {
            return Err(wrong_state(&row, "pause", &format!("start it with 'smolvm sandbox start {name}'")));
        }
        AnyBackend::new(row.config.backend).pause(&self.data.sandbox(name))?;
        self.store.set_status(name, SandboxStatus::Paused, row.process)?;
        self.info(name)
    }

    /// Restarts the vCPUs of a paused sandbox.
    pub fn resume(&self, name: &str) -> Result<SandboxInfo, SandboxError> {
        let _lock = self.lock(name)?;
        let row = self.get(name)?;
        if row.status != SandboxStatus::Paused {
            return Err(wrong_state(&row, "resume", "only a paused sandbox can be resumed"));
        }
        self.resume_locked(&row)?;
        self.info(name)
    }

    fn resume_locked(&self, row: &SandboxRow) -> Result<(), SandboxError> {
        let backend = AnyBackend::new(row.config.backend);
        backend.resume(&self.data.sandbox(&row.name))?;
        self.store.set_status(&row.name, SandboxStatus::Running, row.process)?;
        // The wall clock stood still while paused. A guest that was never
        // booted (restored from a disk snapshot, paused) has no agent yet.
        if !self.has_agent(&row.config.image) {
            return Ok(());
        }
        if let Err(e) = self.refresh_guest(&row.name, &backend) {
            tracing::debug!(sandbox = %row.name, error = %e, "could not refresh the guest after resume");
        }
        Ok(())
    }

    /// After a memory restore or a pause the guest's wall clock is stale
    /// and its random state may be shared with another copy: set the clock
    /// from the host and mix fresh host entropy into its pool.
    pub fn refresh_guest(&self, name: &str, backend: &AnyBackend) -> Result<(), SandboxError> {
        let mut session = agent::connect(&backend.agent_endpoint(&self.data.sandbox(name)), Duration::from_secs(10))?;
        session.set_clock_now()?;
        session.add_entropy(64)?;
        Ok(())
    }

    /// Powers the guest off cleanly (agent shutdown), waiting up to
    /// `timeout`, then ends the VMM. No-op when it is not running.
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<SandboxInfo, SandboxError> {
        let _lock = self.lock(name)?;
        let row = self.get(name)?;
        self.stop_locked(&row, timeout)?;
        self.info(name)
    }

    pub(crate) fn stop_locked(&self, row: &SandboxRow, timeout: Duration) -> Result<(), SandboxError> {
        let dir = self.data.sandbox(&row.name);
        let backend = AnyBackend::new(row.config.backend);
        if let (true, Some(process)) = (row.status.has_vmm(), row.process) {
            if row.status == SandboxStatus::Paused {
                let _ = backend.resume(&dir);
            }
            // A clean power-off flushes the guest's page cache to the disk.
            let asked = self.has_agent(&row.config.image)
                && agent::connect(&backend.agent_endpoint(&dir), Duration::from_secs(2)).and_then(|mut s| s.shutdown()).is_ok();
            if !(asked && process.wait_gone(timeout)) {
                backend.kill(&dir, &process, Duration::from_secs(2))?;
            }
            backend.kill(&dir, &process, Duration::from_secs(1))?;
        }
        if row.status != SandboxStatus::Created {
            self.store.set_status(&row.name, SandboxStatus::Stopped, None)?;
        }
        Ok(())
    }

    /// Stops (if needed) and removes a sandbox: its VMM, directory and row.
    /// Snapshots of it are kept.
    pub fn delete(&self, name: &str) -> Result<(), SandboxError> {
        let _lock = self.lock(name)?;
        let row = self.get(name)?;
        if let Some(process) = row.process {
            let backend = AnyBackend::new(row.config.backend);
            backend.kill(&self.data.sandbox(name), &process, Duration::from_secs(3))?;
        }
        let dir = self.data.sandbox(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SandboxError::Io { path: dir, source }),
        }
        self.store.delete_sandbox(name)?;
        self.collect_layer_garbage()?;
        Ok(())
    }

    /// The layer store (finds layers of every format; new ones are qcow2).
    pub fn layers(&self) -> Layers {
        Layers::new(self.data.layers())
    }

    /// The layer store, creating layers in `kind`'s format.
    pub fn layers_for(&self, kind: BackendKind) -> Layers {
        Layers::with_extension(self.data.layers(), kind.layer_extension())
    }

    /// Whether guests of image `image` run the smolvm agent (true when the
    /// image is unreadable: the agent is the norm).
    pub(crate) fn has_agent(&self, image: &str) -> bool {
        self.images.get(image).map(|i| i.ready.has_agent()).unwrap_or(true)
    }

    /// The writable top layer of a sandbox's disk chain.
    pub(crate) fn top_layer(&self, row: &SandboxRow) -> Result<PathBuf, SandboxError> {
        match row.disk_chain.last() {
            Some(id) if Layers::is_valid_id(id) => Ok(self.layers_for(row.config.backend).path(id)),
            _ => Err(SandboxError::InvalidInput(format!(
                "Sandbox '{0}' has no usable disk record; delete it with 'smolvm sandbox delete {0}'",
                row.name
            ))),
        }
    }

    /// Deletes disk layers no sandbox or snapshot uses any more.
    pub fn collect_layer_garbage(&self) -> Result<Vec<String>, SandboxError> {
        let path = self.data.locks().join("layers.lock");
        let _lock = lock_exclusive(&path, "The disk layer store", LOCK_WAIT)?;
        let mut referenced: HashSet<String> = HashSet::new();
        for row in self.store.list_sandboxes()? {
            referenced.extend(row.disk_chain);
        }
        referenced.extend(crate::snapshot::referenced_layers(self)?);
        Ok(self.layers().collect_garbage(&referenced))
    }

    /// Sandboxes, reconciled; `all` includes stopped ones.
    pub fn list(&self, all: bool, status: Option<SandboxStatus>) -> Result<Vec<SandboxInfo>, SandboxError> {
        let mut out = Vec::new();
        for row in self.store.list_sandboxes()? {
            let row = self.reconcile(row)?;
            let keep = match status {
                Some(s) => row.status == s,
                None => all || row.status == SandboxStatus::Running,
            };
            if keep {
                out.push(self.describe(&row));
            }
        }
        Ok(out)
    }

    /// One sandbox, reconciled.
    pub fn info(&self, name: &str) -> Result<SandboxInfo, SandboxError> {
        let row = self.get(name)?;
        Ok(self.describe(&row))
    }

    fn describe(&self, row: &SandboxRow) -> SandboxInfo {
        let c = &row.config;
        let mut warnings = Vec::new();
        if row.status == SandboxStatus::Error {
            warnings.push(format!(
                "its VMM is not running; start it again with 'smolvm sandbox start {0}' or remove it with 'smolvm sandbox delete {0}'",
                row.name
            ));
        }
        SandboxInfo {
            name: row.name.clone(),
            status: row.status,
            backend: c.backend,
            image: c.image.clone(),
            pid: row.process.map(|p| p.pid),
            vcpus: c.vcpus,
            memory: c.memory_mib,
            disk_size: c.disk_size_mib,
            accel: c.accel,
            ip_address: AnyBackend::new(c.backend).guest_ip(&self.data.sandbox(&row.name), c),
            vmm_version: c.vmm_version.clone(),
            ports: c.ports.clone(),
            dir: self.data.sandbox(&row.name),
            created_at: row.created_at.clone(),
            warnings,
        }
    }

    /// Opens an agent session with a running sandbox. With `start`, a
    /// stopped sandbox is booted and a paused one resumed first.
    pub fn session(&self, name: &str, start: bool, boot_timeout: Duration, progress: &dyn Progress) -> Result<AgentSession, SandboxError> {
        let row = self.get(name)?;
        if row.status != SandboxStatus::Running {
            if !start {
                let hint = match row.status {
                    SandboxStatus::Paused => format!("resume it with 'smolvm sandbox resume {name}' or pass --start"),
                    _ => format!("start it with 'smolvm sandbox start {name}' or pass --start"),
                };
                return Err(wrong_state(&row, "use", &hint));
            }
            self.start(name, boot_timeout, progress)?;
        }
        let backend = AnyBackend::new(row.config.backend);
        Ok(agent::connect(&backend.agent_endpoint(&self.data.sandbox(name)), Duration::from_secs(30))?)
    }

    /// The console log of a sandbox.
    pub fn console_log(&self, name: &str) -> Result<PathBuf, SandboxError> {
        let row = self.get(name)?;
        Ok(self.data.sandbox(&row.name).join("console.log"))
    }

    /// The sandbox directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.data.sandbox(name)
    }
}

fn wrong_state(row: &SandboxRow, op: &'static str, hint: &str) -> SandboxError {
    SandboxError::InvalidState { name: row.name.clone(), op, state: row.status.as_str(), hint: hint.to_string() }
}

fn resolve_backend(choice: &str) -> Result<BackendKind, SandboxError> {
    match choice {
        "auto" => Ok(crate::backend::resolve_auto()),
        "qemu" => Ok(BackendKind::Qemu),
        "firecracker" => Ok(BackendKind::Firecracker),
        other => Err(SandboxError::InvalidInput(format!("unknown backend '{other}'; use auto, qemu or firecracker"))),
    }
}

fn resolve_accel(choice: &str, progress: &dyn Progress) -> Result<Accel, SandboxError> {
    match choice {
        "kvm" => Ok(Accel::Kvm),
        "tcg" => Ok(Accel::Tcg),
        "auto" => {
            let (accel, notice) = accel::resolve_auto();
            if let Some(n) = notice {
                progress.notice(n);
            }
            Ok(accel)
        }
        other => Err(SandboxError::InvalidInput(format!("unknown acceleration '{other}'; use auto, kvm or tcg"))),
    }
}

fn image_size_mib(image: &Image) -> u64 {
    let bytes = std::fs::metadata(image.rootfs()).map(|m| m.len()).unwrap_or(0);
    bytes.div_ceil(1024 * 1024)
}

fn generated_name() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("sbx-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}
