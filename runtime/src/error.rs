//! Error classes shared by every weir error type, and the runtime's own error.

use std::path::PathBuf;

/// What to do about an error (STYLE.md, "every error has a class").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad data: dead-letter it and go on.
    Data,
    /// Retry with backoff while input pauses.
    Transient,
    /// Drain what is safe, exit non-zero, resume from the checkpoint.
    Fatal,
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
            WeirError::Io { .. } => ErrorClass::Transient,
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
