//! The command-line grammar (clap derive types, private to the binary).

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "smolvm", version, about = "Disposable Linux microVM sandboxes with fast snapshots", arg_required_else_help = true)]
pub(crate) struct Cli {
    /// Log what smolvm does (to stderr).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create, run and manage sandboxes.
    #[command(subcommand, arg_required_else_help = true)]
    Sandbox(SandboxCmd),
    /// Build and manage guest images.
    #[command(subcommand, arg_required_else_help = true)]
    Image(ImageCmd),
    /// Check host prerequisites and the consistency of smolvm's state.
    Doctor {
        /// Repair what is safe to repair, and say what was done.
        #[arg(long)]
        fix: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

impl Command {
    pub fn json(&self) -> bool {
        match self {
            Command::Sandbox(c) => c.json(),
            Command::Image(c) => c.json(),
            Command::Doctor { out, .. } => out.json,
        }
    }

    /// Dotted command name for the JSON envelope.
    pub fn name(&self) -> String {
        match self {
            Command::Sandbox(c) => format!("sandbox.{}", c.name()),
            Command::Image(c) => format!("image.{}", c.name()),
            Command::Doctor { .. } => "doctor".into(),
        }
    }
}

#[derive(Args, Clone, Copy)]
pub(crate) struct JsonFlag {
    /// Output a JSON envelope.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub(crate) enum SandboxCmd {
    /// Create and boot a sandbox.
    Create(CreateArgs),
    /// Boot a stopped sandbox (or resume a paused one).
    Start {
        sandbox: String,
        /// Seconds to wait for the guest agent.
        #[arg(long, default_value_t = 60.0)]
        boot_timeout: f64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Power a sandbox off (clean shutdown, then kill after --timeout).
    Stop {
        sandbox: String,
        /// Seconds to wait for a clean shutdown.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Freeze a running sandbox's vCPUs.
    Pause {
        sandbox: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Continue a paused sandbox.
    Resume {
        sandbox: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List sandboxes (running ones unless --all or --status).
    List {
        /// Include sandboxes in every state.
        #[arg(long, conflicts_with = "status")]
        all: bool,
        /// Only sandboxes in this state.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one sandbox.
    Info {
        sandbox: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec(ExecArgs),
    /// Open an interactive shell in a sandbox.
    Shell {
        sandbox: String,
        /// Boot or resume the sandbox first if needed.
        #[arg(long)]
        start: bool,
        /// Seconds to wait for the guest agent when starting.
        #[arg(long, default_value_t = 60.0)]
        boot_timeout: f64,
        /// Program to run instead of /bin/sh.
        #[arg(long, default_value = "/bin/sh")]
        program: String,
    },
    /// Show a sandbox's console log.
    Logs {
        sandbox: String,
        /// Lines from the end.
        #[arg(long, default_value_t = 200)]
        tail: usize,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete sandboxes (stopping them first). Their snapshots are kept.
    Delete {
        sandboxes: Vec<String>,
        /// Delete every sandbox.
        #[arg(long)]
        all: bool,
        /// Confirm --all without asking.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Copy files into and out of a sandbox.
    #[command(subcommand)]
    File(FileCmd),
    /// Start new sandboxes from a running sandbox's current state.
    Fork {
        /// The sandbox to copy.
        source: String,
        /// Name of the new sandbox (with --count N: NAME-1 .. NAME-N).
        #[arg(long, short)]
        name: String,
        /// How many sandboxes to start.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        count: u32,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Save and restore sandbox state.
    #[command(subcommand, arg_required_else_help = true, long_about = SNAPSHOT_HELP)]
    Snapshot(SnapshotCmd),
}

const SNAPSHOT_HELP: &str = "Save and restore sandbox state.

Snapshot types and what they cost:
  full  memory, device state and disk of one instant. Restores to a running
        guest in about a second. Costs the guest's touched memory plus the
        disk blocks written since the sandbox's previous snapshot; the guest
        is paused only while its memory is written.
  diff  like full, and records the previous snapshot of the sandbox as its
        parent (the disk part only ever holds what changed).
  disk  disk only: the guest's filesystems are flushed and frozen through
        the agent first (see --flush-policy), so the guest is not paused at
        all with --resume-source. Costs the disk blocks written since the
        previous snapshot; restore boots the guest from it.

No snapshot ever copies a whole disk: disks are chains of copy-on-write
layers shared between a sandbox and its snapshots.";

#[derive(Subcommand)]
pub(crate) enum SnapshotCmd {
    /// Save a sandbox snapshot.
    Create {
        /// Name of the sandbox to snapshot.
        sandbox: String,
        /// Snapshot ID (default: snap-<sandbox>-<time>-<random>).
        #[arg(long)]
        snapshot_id: Option<String>,
        /// What to store (see 'smolvm sandbox snapshot --help').
        #[arg(long, value_enum, default_value = "full")]
        snapshot_type: SnapshotTypeArg,
        /// Resume a running sandbox as soon as its state is captured (default: leave it paused).
        #[arg(long)]
        resume_source: bool,
        /// For disk snapshots: whether a failed guest flush aborts the snapshot.
        #[arg(long, value_enum, default_value = "required")]
        flush_policy: FlushPolicyArg,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Restore a sandbox from a snapshot.
    Restore {
        /// Snapshot ID to restore.
        snapshot: String,
        /// Leave the restored sandbox running (default: paused).
        #[arg(long)]
        resume: bool,
        /// Restore a snapshot that was already restored once.
        #[arg(long)]
        force: bool,
        /// Restore into a new sandbox of this name, with its own identity (MAC, hostname, machine-id, entropy).
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
        /// With --as: forward 127.0.0.1:HOST to guest port GUEST (repeatable).
        #[arg(long = "port", value_name = "HOST:GUEST", requires = "as_name")]
        ports: Vec<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List saved snapshots.
    List {
        /// Only snapshots of this sandbox.
        #[arg(long)]
        vm_id: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete a snapshot.
    Delete {
        /// Snapshot ID to delete.
        snapshot: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Check a snapshot's files against the sizes and hashes it recorded.
    Verify {
        /// Snapshot ID to check.
        snapshot: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

impl SnapshotCmd {
    fn json(&self) -> bool {
        match self {
            SnapshotCmd::Create { out, .. }
            | SnapshotCmd::Restore { out, .. }
            | SnapshotCmd::List { out, .. }
            | SnapshotCmd::Delete { out, .. }
            | SnapshotCmd::Verify { out, .. } => out.json,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            SnapshotCmd::Create { .. } => "create",
            SnapshotCmd::Restore { .. } => "restore",
            SnapshotCmd::List { .. } => "list",
            SnapshotCmd::Delete { .. } => "delete",
            SnapshotCmd::Verify { .. } => "verify",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SnapshotTypeArg {
    Full,
    Diff,
    Disk,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum FlushPolicyArg {
    Required,
    BestEffort,
    Skip,
}

impl SandboxCmd {
    fn json(&self) -> bool {
        match self {
            SandboxCmd::Create(a) => a.out.json,
            SandboxCmd::Exec(a) => a.out.json,
            SandboxCmd::Shell { .. } => false,
            SandboxCmd::Start { out, .. }
            | SandboxCmd::Stop { out, .. }
            | SandboxCmd::Pause { out, .. }
            | SandboxCmd::Resume { out, .. }
            | SandboxCmd::List { out, .. }
            | SandboxCmd::Info { out, .. }
            | SandboxCmd::Logs { out, .. }
            | SandboxCmd::Delete { out, .. }
            | SandboxCmd::Fork { out, .. } => out.json,
            SandboxCmd::File(FileCmd::Upload { out, .. } | FileCmd::Download { out, .. }) => out.json,
            SandboxCmd::Snapshot(c) => c.json(),
        }
    }

    fn name(&self) -> String {
        match self {
            SandboxCmd::Create(_) => "create",
            SandboxCmd::Start { .. } => "start",
            SandboxCmd::Stop { .. } => "stop",
            SandboxCmd::Pause { .. } => "pause",
            SandboxCmd::Resume { .. } => "resume",
            SandboxCmd::List { .. } => "list",
            SandboxCmd::Info { .. } => "info",
            SandboxCmd::Exec(_) => "exec",
            SandboxCmd::Shell { .. } => "shell",
            SandboxCmd::Logs { .. } => "logs",
            SandboxCmd::Delete { .. } => "delete",
            SandboxCmd::Fork { .. } => "fork",
            SandboxCmd::File(FileCmd::Upload { .. }) => "file.upload",
            SandboxCmd::File(FileCmd::Download { .. }) => "file.download",
            SandboxCmd::Snapshot(c) => return format!("snapshot.{}", c.name()),
        }
        .to_string()
    }
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    /// Sandbox name (default: generated).
    #[arg(long, short)]
    pub name: Option<String>,
    /// Guest image (build one with 'smolvm image build').
    #[arg(long, env = "SMOLVM_IMAGE", default_value = "default")]
    pub image: String,
    /// Guest memory in MiB (128-16384).
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// Virtual CPUs (1-32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Root disk size in MiB (default: the image's size).
    #[arg(long)]
    pub disk_size: Option<u64>,
    /// Which VMM runs the sandbox.
    #[arg(long, env = "SMOLVM_BACKEND", default_value = "auto", value_parser = ["auto", "qemu", "firecracker"])]
    pub backend: String,
    /// Hardware acceleration (auto: KVM where it really works, else TCG).
    #[arg(long, env = "SMOLVM_ACCEL", default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// QEMU machine type.
    #[arg(long, value_enum, default_value = "microvm")]
    pub machine: MachineArg,
    /// Guest network.
    #[arg(long, value_enum, default_value = "user")]
    pub network: NetworkArg,
    /// Forward 127.0.0.1:HOST on the host to guest port GUEST (repeatable).
    #[arg(long = "port", value_name = "HOST:GUEST")]
    pub ports: Vec<String>,
    /// Seconds to wait for the guest agent.
    #[arg(long, default_value_t = 60.0)]
    pub boot_timeout: f64,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    pub sandbox: String,
    /// Kill the command after this many seconds (default: no limit).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Boot or resume the sandbox first if needed.
    #[arg(long)]
    pub start: bool,
    /// Seconds to wait for the guest agent when starting.
    #[arg(long, default_value_t = 60.0)]
    pub boot_timeout: f64,
    /// Run the words through /bin/sh -c (also implied by a single word with spaces).
    #[arg(long)]
    pub shell: bool,
    /// Pass this process's stdin to the command.
    #[arg(long, short)]
    pub interactive: bool,
    /// Set an environment variable (KEY=VALUE, repeatable).
    #[arg(long = "env", short, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    pub cwd: Option<String>,
    #[command(flatten)]
    pub out: JsonFlag,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand)]
pub(crate) enum FileCmd {
    /// Copy a local file into the sandbox.
    Upload {
        sandbox: String,
        local: std::path::PathBuf,
        guest: String,
        /// File mode in octal (default: the local file's).
        #[arg(long)]
        mode: Option<String>,
        /// Do not create missing guest directories.
        #[arg(long)]
        no_create_dirs: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Copy a file out of the sandbox.
    Download {
        sandbox: String,
        guest: String,
        local: std::path::PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Subcommand)]
pub(crate) enum ImageCmd {
    /// Build a guest image (kernel + initramfs + root filesystem).
    Build {
        /// Image name.
        #[arg(long, default_value = "default")]
        name: String,
        /// tiny: busybox + agent, built in seconds; debian: a minimal Debian with real tools.
        #[arg(long, value_parser = ["tiny", "debian"], default_value = "debian")]
        base: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Bring in a kernel of your own (an ELF vmlinux) as an image, with an
    /// optional initramfs and root filesystem.
    Import {
        /// Image name.
        #[arg(long)]
        name: String,
        /// The ELF kernel (vmlinux).
        #[arg(long)]
        kernel: std::path::PathBuf,
        /// An initramfs for it.
        #[arg(long)]
        initramfs: Option<std::path::PathBuf>,
        /// A raw root filesystem image (default: an empty 16 MiB disk).
        #[arg(long)]
        rootfs: Option<std::path::PathBuf>,
        /// The guest runs no smolvm agent: it is up once its serial console
        /// prints this text (without it, sandboxes wait for the agent).
        #[arg(long, value_name = "TEXT")]
        ready_console: Option<String>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// List built images.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Delete an image (refused while a sandbox or snapshot uses it).
    Delete {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

impl ImageCmd {
    fn json(&self) -> bool {
        match self {
            ImageCmd::Build { out, .. } | ImageCmd::Import { out, .. } | ImageCmd::List { out } | ImageCmd::Delete { out, .. } => {
                out.json
            }
        }
    }
    fn name(&self) -> &'static str {
        match self {
            ImageCmd::Build { .. } => "build",
            ImageCmd::Import { .. } => "import",
            ImageCmd::List { .. } => "list",
            ImageCmd::Delete { .. } => "delete",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum StatusArg {
    Created,
    Running,
    Paused,
    Stopped,
    Error,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum MachineArg {
    Microvm,
    Q35,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum NetworkArg {
    User,
    None,
}
