//! Kafka through rdkafka (librdkafka 2.12, built from source and linked statically).
//!
//! - [`KafkaSource`]: the partitions of some topics, one blocking reader per partition, either
//!   all of them (`assignment = "manual"`) or those the consumer group assigns this worker
//!   (`"group"`, with rebalances), starting at a checkpoint's offset or the group's committed
//!   offset; it never commits by itself.
//! - [`KafkaOffsetCommitter`]: commits a partition's next offset to the group, once the
//!   checkpoint that covers it is durable.
//! - [`KafkaSink`]: output rows as JSON messages keyed by a column, idempotent producer,
//!   at-least-once (`prepare` waits for every acknowledgement).
//! - [`KafkaTxnStore`]: the exactly-once (Kafka to Kafka) mode of the sink: per input
//!   partition, one transaction holds the rows, the checkpoint and the group offset.
//! - [`KafkaDlq`]: dead letters with their original key and payload, and headers saying what
//!   happened.
//! - [`classify`]: librdkafka error codes → [`ErrorClass`](weir_runtime::ErrorClass).
//!
//! Every config rejects the librdkafka options weir owns (`enable.auto.commit`,
//! `enable.auto.offset.store`, `group.id`, `bootstrap.servers`, `enable.idempotence`,
//! `transactional.id`) and hides secret option values from `Debug`.

mod client;
mod committer;
mod dlq;
mod errors;
mod group;
mod producer;
pub mod reset;
mod sink;
mod source;
mod txn;

pub use client::KafkaOptions;
pub use committer::KafkaOffsetCommitter;
pub use dlq::{
    dlq_header_values, mark_header_values, read_dlq_topic, stage_text, KafkaDlq, KafkaDlqConfig,
    DLQ_HEADERS, MARK_HEADERS,
};
pub use errors::{classify, classify_code, CLASSIFICATION};
pub use sink::{KafkaSink, KafkaSinkConfig};
pub use source::{
    AssignmentMode, KafkaPartitionReader, KafkaSource, KafkaSourceConfig, PartitionRange, StartFrom,
};
pub use txn::{KafkaTxnOptions, KafkaTxnStore};
