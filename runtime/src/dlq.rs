//! Dead letters: what could not be processed, with the original bytes and the reason.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lane::Lane;
use crate::sink::EpochParticipant;

/// Why a message ended in the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Payload is not valid JSON, or not one JSON object.
    InvalidJson,
    /// A required (non-nullable) field is absent or null.
    MissingField,
    /// A field's value does not convert to the declared type.
    WrongType,
    /// The message has no payload (a tombstone).
    NullPayload,
    /// The payload is empty or only white space.
    EmptyMessage,
    /// The event's window had already closed.
    Late,
    /// The event's time is further ahead of the wall clock than `[watermark] max_future_ms`.
    FutureEventTime,
    /// A user operator returned an error or panicked on this event.
    OperatorError,
    /// A sink refused this row permanently (e.g. a constraint violation).
    SinkRejected,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::MissingField => "missing_field",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::NullPayload => "null_payload",
            ErrorKind::EmptyMessage => "empty_message",
            ErrorKind::Late => "late",
            ErrorKind::FutureEventTime => "future_event_time",
            ErrorKind::OperatorError => "operator_error",
            ErrorKind::SinkRejected => "sink_rejected",
        }
    }
}

/// The pipeline stage that rejected a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Operator(String),
    Sink(String),
}

/// One dead-lettered message (DESIGN.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub pipeline: Arc<str>,
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub kind: ErrorKind,
    pub message: String,
    pub stage: Stage,
    pub attempts: u32,
    pub time_ms: i64,
}

/// Where dead letters go. Writes follow the checkpoint protocol of [`EpochParticipant`]:
/// an offset is not committed before its dead letters are durable.
pub trait DlqWriter: EpochParticipant {
    /// Dead letters of `lane`: they become durable with its next checkpoint. (A letter's
    /// `topic`/`partition` say where its message was read; the global lane's letters, rows
    /// merged from many lanes, have none.)
    fn write(&mut self, lane: &Lane, letters: &[DeadLetter]) -> Result<()>;
}
