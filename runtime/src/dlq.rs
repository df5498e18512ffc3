//! Dead letters: what could not be processed, with the original bytes and the reason.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::arrow::record_batch::RecordBatch;
use crate::batch::RawBatch;
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

/// One dead-lettered message (ARCHITECTURE.md, "Data path": nothing is lost).
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
    /// Attempts made, the first included: 1 unless the error was retried
    /// ([`crate::retry_schedule`]), then the real count.
    pub attempts: u32,
    /// When the last attempt failed (epoch ms).
    pub time_ms: i64,
    /// When the first attempt failed (epoch ms): `time_ms` for a letter of one attempt.
    pub first_failure_ms: i64,
}

impl DeadLetter {
    /// The letter of the message at `offset` of `raw`: its key and original bytes (none when
    /// the batch does not hold it). Every dead letter of a message is built here.
    pub fn of_message(
        pipeline: &Arc<str>,
        raw: &RawBatch,
        offset: i64,
        kind: ErrorKind,
        message: String,
        stage: Stage,
    ) -> Self {
        let m = raw.find(offset);
        let time_ms = now_ms();
        Self {
            pipeline: pipeline.clone(),
            topic: raw.topic.clone(),
            partition: raw.partition,
            offset,
            key: m.and_then(|m| m.key.clone()),
            payload: m.and_then(|m| m.payload.clone()),
            kind,
            message,
            stage,
            attempts: 1,
            time_ms,
            first_failure_ms: time_ms,
        }
    }

    /// The letter of an output row that derives from many messages (a window's or a
    /// projection's): no topic, offset -1, the row as JSON for payload. `partition` is the
    /// lane's (-1 for the global stage's).
    pub fn of_row(
        pipeline: &Arc<str>,
        partition: i32,
        batch: &RecordBatch,
        row: usize,
        kind: ErrorKind,
        message: String,
        stage: Stage,
    ) -> Self {
        let mut buf = Vec::new();
        let mut w = crate::arrow::json::LineDelimitedWriter::new(&mut buf);
        let payload = w
            .write(&batch.slice(row, 1))
            .and_then(|_| w.finish())
            .ok()
            .map(|_| buf);
        let time_ms = now_ms();
        Self {
            pipeline: pipeline.clone(),
            topic: Arc::from(""),
            partition,
            offset: -1,
            key: None,
            payload,
            kind,
            message,
            stage,
            attempts: 1,
            time_ms,
            first_failure_ms: time_ms,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Where dead letters go. Writes follow the checkpoint protocol of [`EpochParticipant`]:
/// an offset is not committed before its dead letters are durable.
pub trait DlqWriter: EpochParticipant {
    /// Dead letters of `lane`: they become durable with its next checkpoint. (A letter's
    /// `topic`/`partition` say where its message was read; the global lane's letters, rows
    /// merged from many lanes, have none.)
    fn write(&mut self, lane: &Lane, letters: &[DeadLetter]) -> Result<()>;
}
