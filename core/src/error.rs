//! The one error type of lbmkv, with a stable [`ErrorKind`] that every binding maps.

use std::fmt;

/// What went wrong, stable across releases: bindings map it to status codes,
/// exception classes and error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A write could not reach or be acknowledged by the nodes it needs.
    Unavailable,
    /// The operation did not finish within the request timeout.
    Timeout,
    /// Bad input: invalid name, oversize key or value, bad pattern, bad address.
    InvalidArgument,
    /// The node (or the table's node) has been closed.
    Closed,
    /// No table of that name exists on this node.
    NoSuchTable,
    /// A blocking call was made from a thread that runs lbmkv's own tasks
    /// (for example from inside a conflict handler), which would deadlock.
    WouldDeadlock,
    /// A user function (update fn) failed; the operation was not applied.
    Aborted,
    /// Network or operating-system failure (bind, resolve, connect).
    Io,
    /// A peer broke the protocol or authentication failed.
    Protocol,
    /// A bug in lbmkv; the message says where.
    Internal,
}

impl ErrorKind {
    /// The stable upper-case code used by the CLI, Node.js and logs (`UNAVAILABLE`, ...).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::Closed => "CLOSED",
            ErrorKind::NoSuchTable => "NO_SUCH_TABLE",
            ErrorKind::WouldDeadlock => "WOULD_DEADLOCK",
            ErrorKind::Aborted => "ABORTED",
            ErrorKind::Io => "IO",
            ErrorKind::Protocol => "PROTOCOL",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An lbmkv error: a kind plus a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Result alias used across lbmkv.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }
    pub(crate) fn closed() -> Self {
        Error::new(ErrorKind::Closed, "the node is closed")
    }
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unavailable, message)
    }
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }
    pub(crate) fn io(context: &str, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{context}: {err}"))
    }
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Protocol, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.message)
    }
}

impl std::error::Error for Error {}
