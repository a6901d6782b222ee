//! The one error type of the image module. Every variant carries what a user
//! needs to act on it: the path or command involved, the captured stderr of a
//! failed program, and what to do next.

use std::io;
use std::path::PathBuf;

use super::Base;

/// Why building, reading or deleting a guest image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The name breaks the naming rule (it becomes a directory name and a CLI argument).
    #[error(
        "invalid image name '{name}': use 1-64 characters from a-z, 0-9, '-' and '_', \
         starting and ending with a letter or digit"
    )]
    InvalidName { name: String },

    /// An image of that name is already built; images are immutable.
    #[error(
        "Image '{name}' already exists; delete it with 'smolvm image delete {name}' \
         or pick another --name"
    )]
    AlreadyExists { name: String },

    /// No image of that name.
    #[error("Image '{name}' not found; build it with 'smolvm image build --name {name}'")]
    NotFound { name: String },

    /// A base name that is neither `tiny` nor `debian`.
    #[error("unknown image base '{0}': expected 'tiny' or 'debian'")]
    UnknownBase(String),

    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An external program could not be started at all (usually: not installed).
    #[error("cannot run '{program}': {source}; {hint}")]
    Spawn {
        program: String,
        hint: String,
        #[source]
        source: io::Error,
    },

    /// An external program ran and failed.
    #[error("'{command}' failed ({status}){}{}; {hint}",
        if .stderr.trim().is_empty() { "" } else { ": " }, .stderr.trim())]
    Command {
        command: String,
        status: String,
        stderr: String,
        hint: String,
    },

    /// apt knows no packages at all: its lists were never downloaded.
    #[error(
        "apt has no package lists, so '{package}' cannot be found; run 'apt-get update' \
         (scripts/setup-host.sh does) and try again"
    )]
    NoPackageLists { package: String },

    /// apt has lists but not this package.
    #[error(
        "apt cannot find package '{package}': {stderr}; check that a Debian 'main' source \
         for this release is configured and run 'apt-get update'"
    )]
    PackageUnavailable { package: String, stderr: String },

    /// The build needs root privileges and does not have them.
    #[error("building a '{base}' image must run as root ({why}); run it again with sudo")]
    NeedsRoot { base: Base, why: &'static str },

    /// The kernel package or its bzImage is not what we expect.
    #[error("kernel {path}: {reason}")]
    Kernel { path: PathBuf, reason: String },

    /// A kernel module the initramfs needs is neither built in nor shipped.
    #[error(
        "kernel module '{module}' is neither built into the kernel nor present under {dir}; \
         this kernel cannot run smolvm guests"
    )]
    ModuleMissing { module: String, dir: PathBuf },

    /// image.json of a built image is missing, too large or inconsistent.
    #[error(
        "image metadata {path} is invalid: {reason}; delete the image with \
         'smolvm image delete <name>' and build it again"
    )]
    Metadata { path: PathBuf, reason: String },

    /// No usable (static) agent binary was found.
    #[error(
        "no usable smolvm-agent binary: {detail}; build a static one with \
         \"RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p smolvm-agent \
         --target x86_64-unknown-linux-gnu\" or point SMOLVM_AGENT_BIN at one"
    )]
    Agent { detail: String },

    /// Something in a root filesystem tree is unsafe or malformed.
    #[error("root filesystem {path}: {reason}")]
    Rootfs { path: PathBuf, reason: String },
}

impl ImageError {
    /// Shorthand for [`ImageError::Io`], used with `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
