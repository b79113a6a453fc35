//! One error type for the whole library.
//!
//! Every error carries a human-readable message with its context (file, key
//! or tensor, expected vs found) and a [`ErrorKind`] that the CLI maps to a
//! documented exit code. The library never exits or panics on bad input.

use std::fmt;

/// What class of failure this is; decides the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad command-line usage or arguments.
    Usage,
    /// A configuration file or value is wrong.
    Config,
    /// The model file is malformed, truncated or unsupported.
    Model,
    /// Reading or writing failed (file system, pipes).
    Io,
    /// The run was interrupted by a signal.
    Interrupted,
    /// Whoever reads our standard output went away (EPIPE, e.g. `| head`).
    /// As with any Unix filter that is not a failure: what was written
    /// stands, the run ends quietly with exit 0.
    OutputClosed,
}

impl ErrorKind {
    /// The process exit code documented in the README.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::Config => 3,
            ErrorKind::Model => 4,
            ErrorKind::Io => 5,
            ErrorKind::Interrupted => 130,
            ErrorKind::OutputClosed => 0,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn model(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Model, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    /// A failed write to standard output: a closed pipe is
    /// [`ErrorKind::OutputClosed`], anything else an I/O error.
    pub fn stdout(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Self::new(
                ErrorKind::OutputClosed,
                "stdout: the reader closed the pipe",
            )
        } else {
            Self::io(format!("stdout: {e}"))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
