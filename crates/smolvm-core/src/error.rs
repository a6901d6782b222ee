//! The error vocabulary shared by every library boundary: each typed error
//! enum maps to one stable [`ErrorCode`], which the CLI turns into the JSON
//! envelope's `error.code` and an exit status.

/// Stable machine-readable classes of failure (the JSON `error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The caller passed something malformed (a bad name, a value out of range).
    InvalidInput,
    /// The named sandbox, snapshot or image does not exist.
    NotFound,
    /// The sandbox is not in a state that allows the operation.
    NotRunning,
    /// Another smolvm process holds the lock for too long.
    Busy,
    /// A host program smolvm needs is missing.
    MissingDependency,
    /// The operation is refused by a guard (e.g. deleting a parent snapshot).
    Refused,
    /// Anything else that went wrong at run time.
    RuntimeError,
}

impl ErrorCode {
    /// The string used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotRunning => "not_running",
            ErrorCode::Busy => "busy",
            ErrorCode::MissingDependency => "missing_dependency",
            ErrorCode::Refused => "refused",
            ErrorCode::RuntimeError => "runtime_error",
        }
    }
}

/// Implemented by every library error enum.
pub trait Coded {
    /// The class of this failure.
    fn code(&self) -> ErrorCode;
}

impl Coded for crate::image::ImageError {
    fn code(&self) -> ErrorCode {
        use crate::image::ImageError::*;
        match self {
            InvalidName { .. } | AlreadyExists { .. } | UnknownBase(_) => ErrorCode::InvalidInput,
            NotFound { .. } => ErrorCode::NotFound,
            Spawn { .. } | Agent { .. } => ErrorCode::MissingDependency,
            _ => ErrorCode::RuntimeError,
        }
    }
}
