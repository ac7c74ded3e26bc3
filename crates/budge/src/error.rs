//! The one public error type.
//!
//! Every error names the operation, the file (once it is known), the byte range
//! and the reason, e.g.
//! `insert 64 KiB at 1 GiB in data.bin: fallocate(INSERT_RANGE): Operation not
//! supported (btrfs has no insert-range; use --allow-copy or the reflink strategy)`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::range::fmt_size;

/// What went wrong, for callers that branch on it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An I/O error from the kernel that none of the other kinds describes.
    Io,
    /// The filesystem (or kernel) cannot do this, or cannot do it under the
    /// chosen policy (e.g. metadata-only where only a copy would work).
    Unsupported,
    /// Offset or length is not a multiple of the required alignment.
    Alignment,
    /// The arguments make no sense: past EOF, overflow, absurd sizes,
    /// overlapping same-file ranges, a read-only descriptor, not a regular file.
    InvalidArgument,
    /// The filesystem ran out of space.
    NoSpace,
    /// On-disk data failed validation.
    Corrupted,
    /// Another process holds the lock.
    Locked,
    /// A path does not exist.
    NotFound,
    /// A previous write/fsync failed; the object refuses further writes.
    Poisoned,
    /// The operation failed part-way and could not be rolled back: the message
    /// states exactly what the file holds now.
    PartiallyApplied,
    /// A structural change was interrupted and must be completed by opening
    /// the store read-write before read-only openers can use it.
    NeedsRecovery,
    /// The file changed under the operation: since a snapshot was taken (a
    /// commit that refuses to overwrite someone else's change), or while it
    /// was being copied.
    Conflict,
}

/// An operation on a file failed. See the module docs for the message format.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    op: String,
    path: Option<PathBuf>,
    call: Option<&'static str>,
    source: Option<io::Error>,
    hint: Option<String>,
}

/// `Result` with budge's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` during `op` (e.g. "insert 64 KiB at 1 GiB").
    pub fn new(kind: ErrorKind, op: impl Into<String>) -> Self {
        Error {
            kind,
            op: op.into(),
            path: None,
            call: None,
            source: None,
            hint: None,
        }
    }

    /// An error from the kernel call `call` during `op`; the kind follows the errno.
    pub fn os(op: impl Into<String>, call: &'static str, err: io::Error) -> Self {
        let kind = kind_of(&err);
        Error {
            kind,
            op: op.into(),
            path: None,
            call: Some(call),
            source: Some(err),
            hint: None,
        }
    }

    /// Adds the file's path (done once, where the path is known).
    #[must_use]
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Adds an explanation shown in parentheses at the end of the message.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Replaces the operation (when a lower layer's error is reported as
    /// part of a bigger one).
    #[must_use]
    pub fn with_op(mut self, op: impl Into<String>) -> Self {
        self.op = op.into();
        self
    }

    /// Overrides the kind.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The operation that failed, e.g. "insert 64 KiB at 1 GiB".
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The file, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The kernel's errno, if the error came from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }

    /// The explanation, if any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

/// Maps an OS error to an [`ErrorKind`].
pub(crate) fn kind_of(err: &io::Error) -> ErrorKind {
    use rustix::io::Errno;
    let Some(errno) = Errno::from_io_error(err) else {
        return ErrorKind::Io;
    };
    if [Errno::OPNOTSUPP, Errno::NOSYS, Errno::NOTTY, Errno::XDEV].contains(&errno) {
        ErrorKind::Unsupported
    } else if [Errno::NOSPC, Errno::DQUOT].contains(&errno) {
        ErrorKind::NoSpace
    } else if errno == Errno::NOENT {
        ErrorKind::NotFound
    } else if [Errno::FBIG, Errno::INVAL, Errno::BADF, Errno::ISDIR].contains(&errno) {
        ErrorKind::InvalidArgument
    } else if errno == Errno::WOULDBLOCK {
        ErrorKind::Locked
    } else {
        ErrorKind::Io
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.op)?;
        if let Some(path) = &self.path {
            write!(f, " in {}", path.display())?;
        }
        match (&self.call, &self.source) {
            (Some(call), Some(err)) => write!(f, ": {call}: {err}")?,
            (None, Some(err)) => write!(f, ": {err}")?,
            (Some(call), None) => write!(f, ": {call}")?,
            (None, None) => {}
        }
        if let Some(hint) = &self.hint {
            if self.source.is_some() || self.call.is_some() {
                write!(f, " ({hint})")?;
            } else {
                write!(f, ": {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::Unsupported => io::ErrorKind::Unsupported,
            ErrorKind::InvalidArgument | ErrorKind::Alignment => io::ErrorKind::InvalidInput,
            ErrorKind::Corrupted => io::ErrorKind::InvalidData,
            ErrorKind::Locked => io::ErrorKind::WouldBlock,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Describes an operation on a byte range for error messages: "insert 64 KiB at 1 GiB".
pub(crate) fn op_range(verb: &str, offset: u64, len: u64) -> String {
    format!("{verb} {} at {}", fmt_size(len), fmt_size(offset))
}
