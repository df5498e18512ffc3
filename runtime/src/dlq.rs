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

    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidJson,
        ErrorKind::MissingField,
        ErrorKind::WrongType,
        ErrorKind::NullPayload,
        ErrorKind::EmptyMessage,
        ErrorKind::Late,
        ErrorKind::FutureEventTime,
        ErrorKind::OperatorError,
        ErrorKind::SinkRejected,
    ];

    /// The kind named `name` ([`ErrorKind::as_str`]), or an error listing the kinds.
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == name.trim())
            .ok_or_else(|| {
                format!(
                    "unknown error kind {name:?} (kinds: {})",
                    Self::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

impl Stage {
    /// `decode`, `operator:<id>` or `sink:<id>`: the stage as one text (the Kafka DLQ's
    /// `weir.stage` header, the PostgreSQL DLQ's `stage` column, `weir dlq list`).
    pub fn text(&self) -> String {
        match self {
            Stage::Decode => "decode".to_string(),
            Stage::Operator(id) => format!("operator:{id}"),
            Stage::Sink(id) => format!("sink:{id}"),
        }
    }

    /// The stage of a [`Stage::text`].
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.split_once(':') {
            None if text == "decode" => Ok(Stage::Decode),
            Some(("operator", id)) => Ok(Stage::Operator(id.to_string())),
            Some(("sink", id)) => Ok(Stage::Sink(id.to_string())),
            _ => Err(format!(
                "{text:?} is not a stage (decode, operator:<id> or sink:<id>)"
            )),
        }
    }
}

/// The number of hexadecimal digits of a dead-letter id ([`dead_letter_id`]).
pub const DEAD_LETTER_ID_LEN: usize = 16;

/// The stable id of a dead letter: FNV-1a (64 bit, as 16 lowercase hex digits) of the
/// pipeline, the source position (topic, partition, offset) and the stage, so the letter of
/// the same message at the same stage has the same id whenever it is written (a rerun after
/// a crash, a replay that fails again). A letter of an output row (offset -1: it derives
/// from many messages) has no position of its own: the row's bytes are hashed too.
pub fn dead_letter_id(
    pipeline: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    stage: &Stage,
    payload: Option<&[u8]>,
) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(pipeline.as_bytes());
    feed(&[0]);
    feed(topic.as_bytes());
    feed(&[0]);
    feed(partition.to_string().as_bytes());
    feed(&[0]);
    feed(offset.to_string().as_bytes());
    feed(&[0]);
    feed(stage.text().as_bytes());
    if offset < 0 {
        feed(&[0]);
        match payload {
            Some(p) => feed(p),
            None => feed(&[0xff]),
        }
    }
    format!("{h:016x}")
}

/// Whether `text` has the form of a dead-letter id (what `weir dlq` accepts).
pub fn is_dead_letter_id(text: &str) -> bool {
    text.len() == DEAD_LETTER_ID_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    pub attempts: u32,
    /// When the last attempt failed (epoch ms).
    pub time_ms: i64,
    /// When the first attempt failed (epoch ms; `time_ms` when there was one attempt).
    pub first_failure_ms: i64,
}

impl DeadLetter {
    /// The letter's stable id ([`dead_letter_id`]).
    pub fn id(&self) -> String {
        dead_letter_id(
            &self.pipeline,
            &self.topic,
            self.partition,
            self.offset,
            &self.stage,
            self.payload.as_deref(),
        )
    }

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
        let now = now_ms();
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
            time_ms: now,
            first_failure_ms: now,
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
        let now = now_ms();
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
            time_ms: now,
            first_failure_ms: now,
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

    /// Marks the dead letters `ids` of `lane` as replayed (`weir dlq replay` fed their
    /// messages through the pipeline again and they went through): they become durable with
    /// the lane's next checkpoint, like [`DlqWriter::write`], and no longer count as pending.
    fn mark_replayed(&mut self, _lane: &Lane, _ids: &[String]) -> Result<()> {
        Err(crate::error::WeirError::Dlq {
            message: "this dead-letter queue cannot mark dead letters as replayed".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_depends_on_the_position_and_stage_only() {
        let id = |topic: &str, partition, offset, stage: &Stage, payload: &[u8]| {
            dead_letter_id("orders", topic, partition, offset, stage, Some(payload))
        };
        let a = id("t", 0, 7, &Stage::Decode, b"x");
        assert!(is_dead_letter_id(&a), "{a}");
        assert_eq!(a, id("t", 0, 7, &Stage::Decode, b"other bytes"));
        assert_ne!(a, id("t", 0, 8, &Stage::Decode, b"x"));
        assert_ne!(a, id("t", 1, 7, &Stage::Decode, b"x"));
        assert_ne!(a, id("u", 0, 7, &Stage::Decode, b"x"));
        assert_ne!(a, id("t", 0, 7, &Stage::Sink("pg".into()), b"x"));
        assert_ne!(
            a,
            dead_letter_id("other", "t", 0, 7, &Stage::Decode, Some(b"x"))
        );
        // A row's letter (no position) is told apart by its bytes.
        let row = |p: &[u8]| id("", 3, -1, &Stage::Sink("pg".into()), p);
        assert_eq!(row(b"{\"k\":1}"), row(b"{\"k\":1}"));
        assert_ne!(row(b"{\"k\":1}"), row(b"{\"k\":2}"));
        // Pinned: ids are stored, so the hash never changes.
        assert_eq!(a, "bcf2dfec9d056219");
    }

    #[test]
    fn kinds_and_stages_read_back_from_their_text() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Ok(k));
        }
        let e = ErrorKind::parse("bogus").unwrap_err();
        assert!(
            e.contains("unknown error kind \"bogus\"") && e.contains("invalid_json"),
            "{e}"
        );
        for s in [
            Stage::Decode,
            Stage::Operator("operators[1]".into()),
            Stage::Sink("sinks[0]: a:b".into()),
        ] {
            assert_eq!(Stage::parse(&s.text()), Ok(s));
        }
        assert!(Stage::parse("window").is_err());
    }

    #[test]
    fn a_new_letter_failed_first_when_it_failed_last() {
        let raw = RawBatch::new(Arc::from("t"), 0, Vec::new());
        let l = DeadLetter::of_message(
            &Arc::from("p"),
            &raw,
            3,
            ErrorKind::InvalidJson,
            "bad".into(),
            Stage::Decode,
        );
        assert_eq!(l.first_failure_ms, l.time_ms);
        assert_eq!(l.attempts, 1);
    }
}
