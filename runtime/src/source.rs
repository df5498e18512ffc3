//! Sources and partition readers.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::batch::RawBatch;
use crate::error::Result;

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
    /// Round-robin, or by no key at all: no key is co-located.
    Spread,
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
}
