//! Sources and partition readers.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::batch::RawBatch;
use crate::error::Result;
use crate::sink::SourceTopics;

/// A partition of a source: topic and partition number.
pub type TopicPartition = (Arc<str>, i32);

/// A change of the partitions this worker owns, sent by a source whose assignment changes
/// while it runs (a Kafka consumer group). The executor handles each event in order and
/// answers on `done`; the source waits for the answer before it goes on with the rebalance.
#[derive(Debug)]
pub enum Assignment {
    /// These partitions are now this worker's. The executor restores each from its
    /// checkpoint and opens its reader with [`Source::open`] before answering; the source
    /// starts fetching them only after the answer. The answer lists the partitions that were
    /// opened: one the executor declined (it is stopping) must not be fetched.
    Assigned {
        partitions: Vec<TopicPartition>,
        done: Sender<Vec<TopicPartition>>,
    },
    /// These partitions are taken away. The executor stops reading them, drains what was
    /// read, stores a checkpoint and acknowledges it ([`Source::acknowledge`]), drops their
    /// readers, then answers. The source gives them up only after the answer (or after its
    /// own time bound, when the answer is late).
    ///
    /// `lost`: the partitions already belong to another worker (this one was evicted from
    /// the group): the executor stops them *without* a checkpoint, so that nothing of this
    /// worker overwrites the new owner's progress; their uncommitted output is discarded by
    /// the sinks' recovery as usual.
    Revoked {
        partitions: Vec<TopicPartition>,
        lost: bool,
        done: Sender<()>,
    },
    /// The source cannot follow its assignment any more (the group refused this worker, an
    /// authorization failure): the executor stops with this error.
    Failed(crate::error::WeirError),
}

/// Where a partition that has no checkpoint starts, as its source resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    /// The source's own beginning, offset 0 (a file, a generator).
    Beginning,
    /// The consumer group's committed offset.
    Committed(i64),
    /// No committed offset: the partition's first offset (Kafka `auto.offset.reset = earliest`).
    Earliest(i64),
    /// No committed offset: the partition's end (Kafka `auto.offset.reset = latest`).
    Latest(i64),
}

impl InitialOffset {
    pub fn offset(self) -> i64 {
        match self {
            InitialOffset::Beginning => 0,
            InitialOffset::Committed(n) | InitialOffset::Earliest(n) | InitialOffset::Latest(n) => {
                n
            }
        }
    }
}

/// What a source knows of a partition before the executor opens it ([`Source::upstream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// Where reading starts when the partition has no checkpoint.
    pub initial: InitialOffset,
    /// The next offset upstream already acknowledged (a consumer group's committed offset):
    /// the executor never acknowledges an offset at or below it, so upstream never moves
    /// backwards and a partition that read nothing acknowledges nothing.
    pub acknowledged: Option<i64>,
}

/// Where a partition's reading resumed, as a run reports it for every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The partition's checkpoint.
    Checkpoint { epoch: u64, offset: i64 },
    /// No checkpoint: the offset the pipeline was given for it (`weir replay`).
    Requested(i64),
    /// No checkpoint: where the source starts.
    Source(InitialOffset),
}

impl ResumeFrom {
    pub fn offset(self) -> i64 {
        match self {
            ResumeFrom::Checkpoint { offset, .. } | ResumeFrom::Requested(offset) => offset,
            ResumeFrom::Source(initial) => initial.offset(),
        }
    }
}

impl std::fmt::Display for ResumeFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeFrom::Checkpoint { epoch, offset } => {
                write!(f, "checkpoint epoch {epoch} at offset {offset}")
            }
            ResumeFrom::Requested(n) => write!(f, "the requested offset {n} (no checkpoint)"),
            ResumeFrom::Source(InitialOffset::Beginning) => {
                write!(f, "the beginning (no checkpoint)")
            }
            ResumeFrom::Source(InitialOffset::Committed(n)) => {
                write!(f, "the group's committed offset {n} (no checkpoint)")
            }
            ResumeFrom::Source(InitialOffset::Earliest(n)) => write!(
                f,
                "the earliest offset {n} (no checkpoint, no committed offset)"
            ),
            ResumeFrom::Source(InitialOffset::Latest(n)) => write!(
                f,
                "the latest offset {n} (no checkpoint, no committed offset)"
            ),
        }
    }
}

/// What a partition reader returned.
#[derive(Debug)]
pub enum ReadResult {
    Batch(RawBatch),
    /// Nothing arrived within the linger time.
    Idle,
    /// A bounded input is finished.
    End,
}

/// Reads one partition in offset order.
pub trait PartitionReader: Send {
    /// Up to `max_rows` messages, waiting at most `linger` for the batch to fill.
    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult>;

    /// Downstream is full (`true`) or has room again (`false`). A source that fetches ahead
    /// in the background (Kafka) stops fetching this partition meanwhile, so that a slow sink
    /// does not fill memory with prefetched messages.
    fn set_paused(&mut self, _paused: bool) -> Result<()> {
        Ok(())
    }

    /// The partition's end offset as the source last saw it (Kafka: the high watermark of
    /// the last fetch response), for the consumer lag: end − next offset. Called by the
    /// reader thread after each read, so it must not wait on I/O. `None`: unknown (the
    /// default; an unbounded source without an end).
    fn end_offset(&self) -> Option<i64> {
        None
    }
}

/// How a source spreads messages over its partitions, which decides whether every event of
/// a key is read by one partition task (ARCHITECTURE.md, "Co-location").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// One partition: every key is in it.
    Single,
    /// The source itself routes each message by the value of this payload field.
    ByField(String),
    /// By the message key, chosen by whoever produced the messages (Kafka). Which payload
    /// field that key is only the pipeline can declare (`[schema] partition_key`); weir
    /// checks the declaration at run time.
    ByMessageKey,
    /// By the message key within each topic, over several topics (listed): a Kafka source
    /// with more than one topic. Inside one topic as [`Partitioning::ByMessageKey`], but the
    /// same key may be in several topics, so no key is known to be co-located across them.
    ByMessageKeyPerTopic(Vec<String>),
    /// Round-robin, or by no key at all: no key is co-located.
    Spread,
}

impl Partitioning {
    /// How many topics the source reads, as sinks need to know it ([`SourceTopics`]).
    pub fn source_topics(&self) -> SourceTopics {
        match self {
            Partitioning::ByMessageKeyPerTopic(topics) => SourceTopics::Several(topics.clone()),
            _ => SourceTopics::One,
        }
    }
}

/// A partitioned input.
pub trait Source: Send {
    fn name(&self) -> &str;

    /// How messages are spread over the partitions (default: by the message key).
    fn partitioning(&self) -> Partitioning {
        Partitioning::ByMessageKey
    }
    /// The (topic, partition) pairs this worker reads, for a source with a fixed assignment.
    fn partitions(&mut self) -> Result<Vec<TopicPartition>>;

    /// For a source whose assignment changes while it runs (a consumer group): start
    /// following the assignment and return the channel of its changes. The executor then
    /// reads the partitions the events give it instead of [`Source::partitions`]. `None`
    /// (the default): the assignment is fixed.
    fn assignments(&mut self) -> Result<Option<Receiver<Assignment>>> {
        Ok(None)
    }
    /// A reader for one partition that starts at `next_offset`.
    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>>;

    /// A checkpoint of this partition is durable: every output derived from offsets below
    /// `next_offset` is in its sink, the DLQ or stored state. The source may now acknowledge
    /// them upstream (a Kafka consumer group commit). Never called before that point.
    fn acknowledge(&mut self, _topic: &Arc<str>, _partition: i32, _next_offset: i64) -> Result<()> {
        Ok(())
    }

    /// Where `topic/partition` starts without a checkpoint, and what upstream has already
    /// acknowledged of it. Called before [`Source::open`] for every partition, with or
    /// without a checkpoint. The default: the beginning, nothing acknowledged.
    fn upstream(&mut self, _topic: &Arc<str>, _partition: i32) -> Result<Upstream> {
        Ok(Upstream {
            initial: InitialOffset::Beginning,
            acknowledged: None,
        })
    }

    /// The pipeline reads these message headers (`[schema.metadata] headers`): from now on,
    /// the readers this source opens fill [`crate::RawMessage::headers`] with their values,
    /// in this order. Called once, before any reader opens; never called when no header is
    /// read, so a source copies nothing it is not asked for. The default: a source without
    /// headers (every value `None`).
    fn keep_headers(&mut self, _names: &[String]) {}

    /// The last checkpoints of a stopping run are durable: acknowledge them together, within
    /// one bound of the source's own (a stop must not wait on an unreachable broker once per
    /// partition). An error means upstream lags those checkpoints; the checkpoints stay the
    /// truth. The default acknowledges them one by one.
    fn acknowledge_all(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        for ((topic, partition), next_offset) in offsets {
            self.acknowledge(topic, *partition, *next_offset)?;
        }
        Ok(())
    }
}
