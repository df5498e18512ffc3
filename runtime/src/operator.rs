//! The operator and decoder traits, and [`Emit`], through which an operator hands on rows,
//! rejects rows to the DLQ and counts what it filtered or found late.
//!
//! Operators are synchronous: they run on the CPU pool, one instance per partition task, and
//! are cheap to test and benchmark without any runtime around them.

use std::collections::HashSet;
use std::time::Duration;

use crate::arrow::array::Int64Array;
use crate::arrow::datatypes::SchemaRef;
use crate::arrow::record_batch::RecordBatch;
use crate::batch::RawBatch;
use crate::checkpoint::OperatorState;
use crate::dlq::ErrorKind;
use crate::error::Result;
use crate::fingerprint::Fingerprint;

/// Name of the Int64 column the decoder appends to every batch: the source offset of each
/// row. Stateless operators carry it through, so a row rejected anywhere in the chain reaches
/// the DLQ with its original bytes.
pub const OFFSET_COLUMN: &str = "__offset";

/// The [`OFFSET_COLUMN`] of a batch, at `index` (where the operator found it in its input
/// schema); `None` when the input has none.
pub fn offset_column(batch: &RecordBatch, index: Option<usize>) -> Option<Int64Array> {
    index.and_then(|i| {
        batch
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
    })
}

/// A row that could not be processed, identified by its source offset.
#[derive(Debug, Clone, PartialEq)]
pub struct RowReject {
    pub offset: i64,
    pub kind: ErrorKind,
    pub message: String,
}

/// Why a user's code refused one event (a projection's fold, an upcaster's step).
///
/// `Err("...".into())` and `?` on a `Result<_, String>` give a [`EventError::Permanent`], as
/// a plain string error always did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// The event can never be processed as it is: it goes to the DLQ at once.
    Permanent(String),
    /// A failure that may pass (a service the code calls was down, a lock timed out): the
    /// event is tried again on the pipeline's retry schedule (`[dlq.retry]`,
    /// [`crate::retry_schedule`]) while its key's later events wait behind it, and goes to the
    /// DLQ after the last attempt.
    Retryable(String),
}

impl EventError {
    pub fn permanent(message: impl Into<String>) -> Self {
        EventError::Permanent(message.into())
    }

    pub fn retryable(message: impl Into<String>) -> Self {
        EventError::Retryable(message.into())
    }

    pub fn message(&self) -> &str {
        match self {
            EventError::Permanent(m) | EventError::Retryable(m) => m,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, EventError::Retryable(_))
    }

    /// The [`Failure`] an operator reports this error as.
    pub fn failure(&self) -> Failure {
        match self {
            EventError::Permanent(_) => Failure::Permanent,
            EventError::Retryable(_) => Failure::Retryable,
        }
    }
}

impl From<String> for EventError {
    fn from(message: String) -> Self {
        EventError::Permanent(message)
    }
}

impl From<&str> for EventError {
    fn from(message: &str) -> Self {
        EventError::Permanent(message.to_string())
    }
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for EventError {}

/// What kind of failure an operator reports with [`Emit::fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Dead-lettered at once.
    Permanent,
    /// Retried on the schedule when the pipeline retries (else dead-lettered at once).
    Retryable,
    /// The user's code panicked: retried only when the schedule retries panics.
    Panic,
}

/// An event an operator handed back to the partition task to wait for a retry
/// ([`Emit::fail`], [`Emit::hold`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryRequest {
    pub offset: i64,
    /// The key whose later events wait behind it; `None`: the message key (stateless
    /// operators only).
    pub key: Option<String>,
    /// `Some((kind, message))`: this event failed and is retried; `None`: it was not
    /// processed, it waits behind its key's failed event ([`Emit::hold`]).
    pub failed: Option<(ErrorKind, String)>,
}

/// What the partition task tells an operator about retries before it processes a batch.
#[derive(Debug, Default)]
struct RetryScope {
    /// Keys with an event waiting for a retry at this operator (and those that failed
    /// earlier in this batch): their events must not be processed now.
    held: HashSet<String>,
    retry_panics: bool,
}

/// What a decoder made of a raw batch: the rows that fit the schema (in offset order, with
/// the [`OFFSET_COLUMN`]) and the messages that did not.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batch: Option<RecordBatch>,
    pub rejects: Vec<RowReject>,
}

/// Turns raw messages into Arrow rows. A message that does not fit is a [`RowReject`], never
/// an error: `Err` is reserved for failures that are not the data's fault.
pub trait Decoder: Send {
    /// The schema of decoded batches, [`OFFSET_COLUMN`] included.
    fn schema(&self) -> SchemaRef;
    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded>;
}

/// Collects what an operator produces while processing one input.
#[derive(Debug, Default)]
pub struct Emit {
    batches: Vec<RecordBatch>,
    rejects: Vec<RowReject>,
    filtered: u64,
    deduplicated: u64,
    late_dropped: u64,
    absorbed: u64,
    watermark: Option<i64>,
    /// Set by the partition task when the pipeline retries failures (`None`: every failure
    /// is a reject).
    retry: Option<RetryScope>,
    requests: Vec<RetryRequest>,
}

impl Emit {
    /// Hand a batch on to the next operator (or to the sinks, after the last one).
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Send the rows at these source offsets to the DLQ.
    pub fn reject(&mut self, offset: i64, kind: ErrorKind, message: impl Into<String>) {
        self.rejects.push(RowReject {
            offset,
            kind,
            message: message.into(),
        });
    }

    /// The event at `offset` failed. A [`Failure::Retryable`] failure (or a
    /// [`Failure::Panic`] when the schedule retries panics) waits for its next attempt when the
    /// pipeline retries, else it is [`Emit::reject`]ed like a permanent one.
    ///
    /// `key`: the key whose later events must wait behind this one (per-key order): from now
    /// on [`Emit::is_held`] says so for it. An operator that keeps state per key (a projection)
    /// must give it and then hold that key's later rows of the batch ([`Emit::hold`]); a
    /// stateless one may give `None`, and the task keeps the order of the *message key*
    /// itself (it takes back the key's later rows this operator passed).
    pub fn fail(
        &mut self,
        offset: i64,
        key: Option<&str>,
        failure: Failure,
        kind: ErrorKind,
        message: impl Into<String>,
    ) {
        let retried = match (&self.retry, failure) {
            (None, _) | (_, Failure::Permanent) => false,
            (Some(_), Failure::Retryable) => true,
            (Some(scope), Failure::Panic) => scope.retry_panics,
        };
        if !retried {
            return self.reject(offset, kind, message);
        }
        if let (Some(scope), Some(k)) = (&mut self.retry, key) {
            scope.held.insert(k.to_string());
        }
        self.requests.push(RetryRequest {
            offset,
            key: key.map(str::to_string),
            failed: Some((kind, message.into())),
        });
    }

    /// Whether `key` has an event waiting for a retry at this operator: the row must not be
    /// processed now but handed back with [`Emit::hold`]. Always false when the pipeline
    /// does not retry.
    pub fn is_held(&self, key: &str) -> bool {
        self.retry.as_ref().is_some_and(|s| s.held.contains(key))
    }

    /// The row at `offset` was not processed: it waits behind the failed event of `key`
    /// ([`Emit::is_held`]), in the order of these calls.
    pub fn hold(&mut self, offset: i64, key: &str) {
        debug_assert!(self.is_held(key), "hold of a key that is not held");
        self.requests.push(RetryRequest {
            offset,
            key: Some(key.to_string()),
            failed: None,
        });
    }

    /// An `Emit` for an operator run by a task that retries: `held` keys wait.
    pub fn with_retries(held: HashSet<String>, retry_panics: bool) -> Self {
        Self {
            retry: Some(RetryScope { held, retry_panics }),
            ..Self::default()
        }
    }

    /// The events handed back to wait for a retry, in the order they were.
    pub fn take_retry_requests(&mut self) -> Vec<RetryRequest> {
        std::mem::take(&mut self.requests)
    }

    /// Rows a predicate removed.
    pub fn count_filtered(&mut self, rows: u64) {
        self.filtered += rows;
    }

    /// Rows a dedup dropped as duplicates.
    pub fn count_deduplicated(&mut self, rows: u64) {
        self.deduplicated += rows;
    }

    /// Late rows dropped by policy (late rows sent to the DLQ are [`Emit::reject`]ed instead).
    pub fn count_late_dropped(&mut self, rows: u64) {
        self.late_dropped += rows;
    }

    /// Rows absorbed into operator state (a window's accumulators, a projection's fold).
    pub fn count_absorbed(&mut self, rows: u64) {
        self.absorbed += rows;
    }

    /// The operator's event-time watermark after this input: a stage that merges several
    /// partitions' partial results ([`crate::GlobalStage`]) closes a window only when every
    /// partition reported a watermark past it. `i64::MAX` when the input ended.
    pub fn report_watermark(&mut self, watermark: i64) {
        self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    pub fn rejects(&self) -> &[RowReject] {
        &self.rejects
    }

    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    pub fn deduplicated(&self) -> u64 {
        self.deduplicated
    }

    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    pub fn absorbed(&self) -> u64 {
        self.absorbed
    }

    pub fn take_batches(&mut self) -> Vec<RecordBatch> {
        std::mem::take(&mut self.batches)
    }

    pub fn take_rejects(&mut self) -> Vec<RowReject> {
        std::mem::take(&mut self.rejects)
    }
}

/// A step of a pipeline. One instance per partition task; it is the only owner of its state.
pub trait Operator: Send {
    fn name(&self) -> &str;

    /// The schema of the batches this operator emits.
    fn output_schema(&self) -> SchemaRef;

    /// Whether rows entering this operator end in its state (window, projection) rather than
    /// passing through: it tells the accounting which rows are events and which are results.
    fn is_stateful(&self) -> bool {
        false
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()>;

    /// The input is finished (a bounded source reached its end): emit everything still held,
    /// as a watermark at +infinity would.
    fn on_end_of_input(&mut self, _emit: &mut Emit) -> Result<()> {
        Ok(())
    }

    /// The partition has had no input for the executor's idle timeout (called again, about
    /// every 100 ms, while it stays idle); `idle_for` is the time since its last input. An
    /// operator whose progress depends on event time may advance it here, e.g. the partial
    /// stage of a two-phase aggregation follows the other partitions' watermark so an idle
    /// partition does not hold the whole stream back, and a window with `idle_advance_ms`
    /// advances its watermark by `idle_for` (ARCHITECTURE.md, "Windows").
    fn on_idle(&mut self, _idle_for: Duration, _emit: &mut Emit) -> Result<()> {
        Ok(())
    }

    /// The operator's event-time watermark (epoch ms), for the metrics (`weir_watermark_seconds`,
    /// `weir_watermark_lag_seconds`). `None` (the default): it does not follow event time, or
    /// has seen no event yet.
    fn watermark(&self) -> Option<i64> {
        None
    }

    /// The configuration the operator's state depends on ([`crate::fingerprint`]), stored
    /// with its state in every checkpoint; a restore into an operator whose fingerprint
    /// differs is refused with what changed. `None` (the default): no such state (a
    /// stateless operator, or one that checks its own state on restore).
    fn fingerprint(&self) -> Option<Fingerprint> {
        None
    }

    /// State to store in the checkpoint. Must not change what the operator emits later.
    fn snapshot(&mut self) -> Result<OperatorState> {
        Ok(OperatorState::default())
    }

    fn restore(&mut self, _state: OperatorState) -> Result<()> {
        Ok(())
    }
}
