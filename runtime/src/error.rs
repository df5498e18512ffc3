//! Error classes shared by every weir error type, and the runtime's own error.
//!
//! An I/O error's class comes from [`IO_CLASSIFICATION`], a table tested row by row
//! (ARCHITECTURE.md, "Errors and retries"):
//! - `Transient`: the condition passes by itself (an interrupted call, a busy resource, a
//!   network hiccup, memory pressure): retried with backoff under the retry budget.
//! - `Fatal`: the environment must be fixed first (a full disk, a quota, a read-only file
//!   system, a permission, a missing or wrong path, a device I/O error): not retried; the run
//!   drains what is safe and exits non-zero naming the path and the OS error.
//!
//! A row is an OS error number, for the conditions whose [`std::io::ErrorKind`] is too coarse
//! to decide (`EIO` is `Uncategorized`), or a kind; an error's number row wins over its kind's.
//! A condition in no row is `Fatal`: an unknown condition must be looked at, not retried.

use std::io::ErrorKind as Io;
use std::path::PathBuf;
use std::time::Duration;

/// What to do about an error (ARCHITECTURE.md, "Errors and retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad data: dead-letter it and go on.
    Data,
    /// Retry with backoff while input pauses.
    Transient,
    /// Drain what is safe, exit non-zero, resume from the checkpoint.
    Fatal,
    /// A newer owner claimed the lane (a partition this worker was too slow to give up, see
    /// [`crate::CheckpointStore::claim`]): drop the partition like one revoked as lost (no
    /// commit, no acknowledgement) and go on with the others.
    Fenced,
}

/// Errors raised by the runtime and by the components it drives.
#[derive(Debug, thiserror::Error)]
pub enum WeirError {
    #[error("source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
        class: ErrorClass,
    },
    #[error("operator {operator}: {message}")]
    Operator {
        operator: String,
        message: String,
        class: ErrorClass,
    },
    #[error("sink {sink}: {message}")]
    Sink {
        sink: String,
        message: String,
        class: ErrorClass,
    },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A save (or a transaction commit) of a lane that a newer owner has claimed since: the
    /// store changed nothing. Class [`ErrorClass::Fenced`].
    #[error("{lane}: fenced by a newer owner: {message}")]
    Fenced { lane: String, message: String },
    #[error("dead-letter queue: {message}")]
    Dlq { message: String },
    #[error("arrow: {0}")]
    Arrow(#[from] crate::arrow::error::ArrowError),
    #[error("io {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A transient error that kept coming until its retry budget was spent.
    #[error(
        "{component}: gave up after {attempts} attempts in {} ms (retry budget: [worker] \
         retry_max_attempts = {max_attempts}, retry_max_elapsed_ms = {}): {last}",
        elapsed.as_millis(),
        max_elapsed.as_millis()
    )]
    RetriesSpent {
        component: String,
        attempts: u32,
        elapsed: Duration,
        max_attempts: u32,
        max_elapsed: Duration,
        /// The last error.
        #[source]
        last: Box<WeirError>,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
}

impl WeirError {
    pub fn class(&self) -> ErrorClass {
        match self {
            WeirError::Source { class, .. }
            | WeirError::Operator { class, .. }
            | WeirError::Sink { class, .. } => *class,
            WeirError::Io { source, .. } => classify_io(source),
            WeirError::Fenced { .. } => ErrorClass::Fenced,
            _ => ErrorClass::Fatal,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WeirError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn operator(operator: impl Into<String>, message: impl std::fmt::Display) -> Self {
        WeirError::Operator {
            operator: operator.into(),
            message: message.to_string(),
            class: ErrorClass::Fatal,
        }
    }

    pub fn sink(sink: impl Into<String>, message: impl std::fmt::Display) -> Self {
        WeirError::Sink {
            sink: sink.into(),
            message: message.to_string(),
            class: ErrorClass::Fatal,
        }
    }

    pub fn source(name: impl Into<String>, message: impl std::fmt::Display) -> Self {
        WeirError::Source {
            source_name: name.into(),
            message: message.to_string(),
            class: ErrorClass::Fatal,
        }
    }
}

pub type Result<T, E = WeirError> = std::result::Result<T, E>;

/// What an I/O error is, for [`IO_CLASSIFICATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCondition {
    /// An OS error number (`errno`) whose kind is too coarse to decide.
    Os(i32),
    /// Any error of this kind.
    Kind(std::io::ErrorKind),
}

use ErrorClass::{Fatal, Transient};
use IoCondition::{Kind, Os};

/// The classified I/O conditions. Anything else is [`ErrorClass::Fatal`].
pub const IO_CLASSIFICATION: &[(IoCondition, ErrorClass)] = &[
    // Numbers whose kind is `Uncategorized` (the same on Linux, the BSDs and macOS).
    // EIO: the device failed. After a failed fsync the kernel may have dropped the dirty
    // pages, so a retried fsync can succeed with the data lost: never retried.
    (Os(5), Fatal),
    (Os(23), Transient), // ENFILE: the system's open-file table is full (others release)
    (Os(24), Fatal),     // EMFILE: this process's own limit; raise `ulimit -n`
    // Conditions that pass.
    (Kind(Io::Interrupted), Transient), // EINTR
    (Kind(Io::WouldBlock), Transient),  // EAGAIN
    (Kind(Io::TimedOut), Transient),    // ETIMEDOUT
    (Kind(Io::ConnectionReset), Transient),
    (Kind(Io::ConnectionAborted), Transient),
    (Kind(Io::ConnectionRefused), Transient),
    (Kind(Io::NotConnected), Transient),
    (Kind(Io::BrokenPipe), Transient),
    (Kind(Io::HostUnreachable), Transient),
    (Kind(Io::NetworkUnreachable), Transient),
    (Kind(Io::NetworkDown), Transient),
    (Kind(Io::ResourceBusy), Transient), // EBUSY
    (Kind(Io::Deadlock), Transient),     // EDEADLK: a file lock race
    (Kind(Io::OutOfMemory), Transient),  // ENOMEM
    // The environment must be fixed first. Listed to document the decision; the default
    // would give the same class.
    (Kind(Io::StorageFull), Fatal),        // ENOSPC
    (Kind(Io::QuotaExceeded), Fatal),      // EDQUOT
    (Kind(Io::FileTooLarge), Fatal),       // EFBIG
    (Kind(Io::ReadOnlyFilesystem), Fatal), // EROFS
    (Kind(Io::PermissionDenied), Fatal),   // EACCES, EPERM
    (Kind(Io::NotFound), Fatal),           // ENOENT: a directory removed under the run
    (Kind(Io::AlreadyExists), Fatal),
    (Kind(Io::NotADirectory), Fatal),
    (Kind(Io::IsADirectory), Fatal),
    (Kind(Io::DirectoryNotEmpty), Fatal),
    (Kind(Io::InvalidFilename), Fatal),        // ENAMETOOLONG
    (Kind(Io::CrossesDevices), Fatal),         // EXDEV: a rename across file systems
    (Kind(Io::StaleNetworkFileHandle), Fatal), // ESTALE: the open file is gone for good
    (Kind(Io::InvalidInput), Fatal),
    (Kind(Io::InvalidData), Fatal),
    (Kind(Io::UnexpectedEof), Fatal), // a truncated file
    (Kind(Io::WriteZero), Fatal),
    (Kind(Io::Unsupported), Fatal),
    (Kind(Io::Other), Fatal),
];

/// The class of an I/O error (see the module docs).
pub fn classify_io(error: &std::io::Error) -> ErrorClass {
    let os = error
        .raw_os_error()
        .and_then(|n| IO_CLASSIFICATION.iter().find(|(c, _)| *c == Os(n)));
    let kind = || {
        IO_CLASSIFICATION
            .iter()
            .find(|(c, _)| *c == Kind(error.kind()))
    };
    os.or_else(kind).map_or(Fatal, |(_, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::Data;

    /// Every row, spelled out: changing a class must change this test.
    #[test]
    fn each_io_condition_has_its_documented_class() {
        let expected: &[(IoCondition, ErrorClass)] = &[
            (Os(5), Fatal),
            (Os(23), Transient),
            (Os(24), Fatal),
            (Kind(Io::Interrupted), Transient),
            (Kind(Io::WouldBlock), Transient),
            (Kind(Io::TimedOut), Transient),
            (Kind(Io::ConnectionReset), Transient),
            (Kind(Io::ConnectionAborted), Transient),
            (Kind(Io::ConnectionRefused), Transient),
            (Kind(Io::NotConnected), Transient),
            (Kind(Io::BrokenPipe), Transient),
            (Kind(Io::HostUnreachable), Transient),
            (Kind(Io::NetworkUnreachable), Transient),
            (Kind(Io::NetworkDown), Transient),
            (Kind(Io::ResourceBusy), Transient),
            (Kind(Io::Deadlock), Transient),
            (Kind(Io::OutOfMemory), Transient),
            (Kind(Io::StorageFull), Fatal),
            (Kind(Io::QuotaExceeded), Fatal),
            (Kind(Io::FileTooLarge), Fatal),
            (Kind(Io::ReadOnlyFilesystem), Fatal),
            (Kind(Io::PermissionDenied), Fatal),
            (Kind(Io::NotFound), Fatal),
            (Kind(Io::AlreadyExists), Fatal),
            (Kind(Io::NotADirectory), Fatal),
            (Kind(Io::IsADirectory), Fatal),
            (Kind(Io::DirectoryNotEmpty), Fatal),
            (Kind(Io::InvalidFilename), Fatal),
            (Kind(Io::CrossesDevices), Fatal),
            (Kind(Io::StaleNetworkFileHandle), Fatal),
            (Kind(Io::InvalidInput), Fatal),
            (Kind(Io::InvalidData), Fatal),
            (Kind(Io::UnexpectedEof), Fatal),
            (Kind(Io::WriteZero), Fatal),
            (Kind(Io::Unsupported), Fatal),
            (Kind(Io::Other), Fatal),
        ];
        assert_eq!(IO_CLASSIFICATION, expected);
        assert!(IO_CLASSIFICATION.iter().all(|(_, c)| *c != Data));
    }

    /// What the OS reports, number by number (Linux's numbers), through the table.
    #[cfg(target_os = "linux")]
    #[test]
    fn os_errors_take_their_number_row_then_their_kind_row_then_fatal() {
        let cases: &[(i32, ErrorClass, &str)] = &[
            (28, Fatal, "ENOSPC: no space left on device"),
            (122, Fatal, "EDQUOT: disk quota exceeded"),
            (27, Fatal, "EFBIG: file too large"),
            (30, Fatal, "EROFS: read-only file system"),
            (13, Fatal, "EACCES: permission denied"),
            (1, Fatal, "EPERM: operation not permitted"),
            (2, Fatal, "ENOENT: no such file or directory"),
            (20, Fatal, "ENOTDIR"),
            (21, Fatal, "EISDIR"),
            (36, Fatal, "ENAMETOOLONG"),
            (18, Fatal, "EXDEV: cross-device rename"),
            (116, Fatal, "ESTALE: stale NFS file handle"),
            (5, Fatal, "EIO: device I/O error (its own row)"),
            (24, Fatal, "EMFILE: too many open files in this process"),
            (117, Fatal, "EUCLEAN: file system needs cleaning (no row)"),
            (9, Fatal, "EBADF (no row)"),
            (4, Transient, "EINTR: interrupted"),
            (11, Transient, "EAGAIN: try again"),
            (110, Transient, "ETIMEDOUT"),
            (104, Transient, "ECONNRESET"),
            (103, Transient, "ECONNABORTED"),
            (111, Transient, "ECONNREFUSED"),
            (32, Transient, "EPIPE"),
            (107, Transient, "ENOTCONN"),
            (113, Transient, "EHOSTUNREACH"),
            (101, Transient, "ENETUNREACH"),
            (100, Transient, "ENETDOWN"),
            (16, Transient, "EBUSY"),
            (35, Transient, "EDEADLK"),
            (12, Transient, "ENOMEM"),
            (
                23,
                Transient,
                "ENFILE: the system's file table is full (its own row)",
            ),
        ];
        for (errno, class, name) in cases {
            let e = std::io::Error::from_raw_os_error(*errno);
            assert_eq!(classify_io(&e), *class, "{name} ({e})");
        }
    }

    #[test]
    fn errors_made_by_libraries_take_their_kind_row() {
        let cases: &[(std::io::Error, ErrorClass)] = &[
            (
                std::io::Error::new(Io::TimedOut, "read timed out"),
                Transient,
            ),
            (std::io::Error::new(Io::WouldBlock, "pool busy"), Transient),
            (std::io::Error::new(Io::StorageFull, "full"), Fatal),
            (std::io::Error::new(Io::UnexpectedEof, "truncated"), Fatal),
            (std::io::Error::other("a parquet writer's error"), Fatal),
        ];
        for (e, class) in cases {
            assert_eq!(classify_io(e), *class, "{e}");
        }
    }

    #[test]
    fn an_io_error_of_weir_takes_the_class_of_its_os_error() {
        let full = WeirError::io("/data/ckpt/0.tmp", std::io::Error::from_raw_os_error(28));
        assert_eq!(full.class(), Fatal);
        let busy = WeirError::io("/data/out", std::io::Error::new(Io::ResourceBusy, "busy"));
        assert_eq!(busy.class(), Transient);
    }
}
