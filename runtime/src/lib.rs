//! weir-runtime: the core of weir.
//!
//! Types and traits that every source, operator and sink plugs into, the partition task that
//! owns one partition and processes it in offset order, the executor that wires partition
//! tasks to readers and sinks through bounded channels, watermarks, offset tracking,
//! checkpoints and the dead-letter queue. No Kafka, no SQL.
//!
//! One Arrow: [`arrow`] is the arrow that DataFusion re-exports.

pub use datafusion_common::arrow;

pub mod base64;
pub mod batch;
pub mod checkpoint;
pub mod dlq;
pub mod error;
pub mod events;
pub mod executor;
pub mod fingerprint;
pub mod global;
pub mod lane;
pub mod metrics;
pub mod operator;
mod parked;
pub mod retry;
pub mod retry_schedule;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod task;
pub mod watermark;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use batch::{RawBatch, RawMessage};
pub use checkpoint::{Checkpoint, CheckpointStore, LocalCheckpointStore, OperatorState};
pub use dlq::{DeadLetter, DlqWriter, ErrorKind, Stage};
pub use error::{ErrorClass, WeirError};
pub use executor::{Executor, ExecutorConfig, RunSummary};
pub use fingerprint::Fingerprint;
pub use global::{GlobalStage, GLOBAL_PARTITION, GLOBAL_TOPIC};
pub use lane::Lane;
pub use metrics::{Counters, Metrics};
pub use operator::{
    offset_column, Decoded, Decoder, Emit, EventError, Failure, Operator, RetryRequest, RowReject,
    OFFSET_COLUMN,
};
pub use retry::RetryBudget;
pub use retry_schedule::{Backoff, RetrySchedule};
pub use shutdown::Shutdown;
pub use sink::{
    EpochParticipant, Guarantee, LaneClaim, NullSink, SinkWriter, SourceTopics, WriteOutcome,
    DELETED_COLUMN,
};
pub use source::{
    Assignment, InitialOffset, PartitionReader, Partitioning, ReadResult, ResumeFrom, Source,
    TopicPartition, Upstream,
};
pub use task::{state_mismatch, PartitionTask, TaskOutput};
pub use watermark::WatermarkGuards;
