//! Sources and partition readers.

use std::sync::Arc;
use std::time::Duration;

use crate::batch::RawBatch;
use crate::error::Result;

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
}

/// A partitioned input.
pub trait Source: Send {
    fn name(&self) -> &str;
    /// The (topic, partition) pairs this worker reads.
    fn partitions(&mut self) -> Result<Vec<(Arc<str>, i32)>>;
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
