//! Telemetry as events: one struct per thing that happens inside a worker, whose `emit` writes
//! its log line and updates its counters in [`Metrics`] together, so a log line and the metric
//! that counts it cannot disagree. The executor emits these instead of calling `tracing` and
//! the counters separately; what the counters hold is what the summary, the progress line and
//! the metrics endpoint read.

use std::fmt::Display;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// A partition's task starts reading at `from` (a checkpoint, the group's offset or the
/// source's start).
pub struct PartitionStarted<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub from: &'a dyn Display,
}

impl PartitionStarted<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.partition_started();
        info!(
            topic = %self.topic,
            partition = self.partition,
            from = %self.from,
            "resuming topic {} partition {} from {}",
            self.topic,
            self.partition,
            self.from
        );
    }
}

/// The consumer group assigned this worker a partition (`duplicate`: one it already reads).
pub struct PartitionAssigned<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub duplicate: bool,
}

impl PartitionAssigned<'_> {
    /// Counted when the partition starts ([`PartitionStarted`]): a duplicate does not.
    pub fn emit(&self, _m: &Metrics) {
        if self.duplicate {
            warn!(topic = %self.topic, partition = self.partition, "assigned a partition this worker already reads");
        } else {
            info!(topic = %self.topic, partition = self.partition, "partition assigned");
        }
    }
}

/// The group took a partition away: revoked (drained, with a last checkpoint) or lost
/// (another worker owns it already: stopped without one).
pub struct PartitionRevoked<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub lost: bool,
}

impl PartitionRevoked<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.lost {
            m.partition_lost();
            warn!(topic = %self.topic, partition = self.partition, "partition lost to another worker: stopping without a checkpoint");
        } else {
            info!(topic = %self.topic, partition = self.partition, "partition revoked: draining");
        }
    }
}

/// A newer owner claimed a partition this worker still drained (its revocation outlasted the
/// group's wait): the store refused the checkpoint of `epoch` (or a sink its write or
/// transaction: no epoch),
/// so the partition is dropped like a lost one: nothing of it is committed or acknowledged.
pub struct PartitionFenced<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub epoch: Option<u64>,
    pub error: &'a dyn Display,
}

impl PartitionFenced<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.partition_fenced();
        warn!(topic = %self.topic, partition = self.partition, epoch = ?self.epoch, error = %self.error, "partition fenced by its new owner: dropped without committing its checkpoint");
    }
}

/// A partition's task is done: its input `ended`, or it was stopped (revoked, shutdown).
pub struct PartitionFinished<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub ended: bool,
    pub revoked: bool,
}

impl PartitionFinished<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.partition_stopped(self.revoked);
        debug!(topic = %self.topic, partition = self.partition, ended = self.ended, "partition finished");
    }
}

/// A checkpoint is durable and its output visible (prepare → save → commit done). `lane` is
/// the partition or the global stage.
pub struct CheckpointCommitted<'a> {
    pub lane: &'a dyn Display,
    pub epoch: u64,
    pub next_offset: Option<i64>,
    pub took: Duration,
}

impl CheckpointCommitted<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.checkpoint_stored(self.took);
        debug!(
            lane = %self.lane,
            epoch = self.epoch,
            next_offset = self.next_offset,
            took_ms = self.took.as_millis() as u64,
            "checkpoint committed"
        );
    }
}

/// The source could not acknowledge a durable checkpoint upstream (a failed Kafka group
/// commit); a later one makes it good.
pub struct AcknowledgeFailed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub next_offset: i64,
    pub error: &'a dyn Display,
}

impl AcknowledgeFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.acknowledge_failed();
        warn!(topic = %self.topic, partition = self.partition, next_offset = self.next_offset, error = %self.error, "source did not acknowledge a durable checkpoint");
    }
}

/// Downstream stayed full: the reader paused its partition (`paused`) or resumed it.
pub struct ReaderPaused {
    pub partition: i32,
    pub paused: bool,
}

impl ReaderPaused {
    pub fn emit(&self, m: &Metrics) {
        if self.paused {
            m.reader_paused();
            debug!(partition = self.partition, "downstream full: reader paused");
        } else {
            debug!(partition = self.partition, "reader resumed");
        }
    }
}

/// A transient error of `component`, retried after `backoff`.
pub struct TransientRetried<'a> {
    pub component: &'a str,
    pub attempt: u32,
    pub error: &'a dyn Display,
    pub backoff: Duration,
}

impl TransientRetried<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.transient_retried();
        warn!(component = %self.component, attempt = self.attempt, error = %self.error, backoff_ms = self.backoff.as_millis() as u64, "transient error, retrying");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_counts_what_it_logs() {
        let m = Metrics::default();
        PartitionStarted {
            topic: "t",
            partition: 0,
            from: &"offset 5",
        }
        .emit(&m);
        PartitionAssigned {
            topic: "t",
            partition: 1,
            duplicate: false,
        }
        .emit(&m);
        PartitionRevoked {
            topic: "t",
            partition: 1,
            lost: true,
        }
        .emit(&m);
        PartitionFinished {
            topic: "t",
            partition: 0,
            ended: false,
            revoked: true,
        }
        .emit(&m);
        for took in [3, 5] {
            CheckpointCommitted {
                lane: &"t/0",
                epoch: 1,
                next_offset: Some(10),
                took: Duration::from_millis(took),
            }
            .emit(&m);
        }
        ReaderPaused {
            partition: 0,
            paused: true,
        }
        .emit(&m);
        ReaderPaused {
            partition: 0,
            paused: false,
        }
        .emit(&m);
        TransientRetried {
            component: "sinks[0]",
            attempt: 1,
            error: &"timeout",
            backoff: Duration::from_millis(50),
        }
        .emit(&m);
        AcknowledgeFailed {
            topic: "t",
            partition: 0,
            next_offset: 10,
            error: &"coordinator moved",
        }
        .emit(&m);
        PartitionFenced {
            topic: "t",
            partition: 2,
            epoch: Some(4),
            error: &"generation 3 is stored",
        }
        .emit(&m);

        assert_eq!(m.owned_partitions(), 0, "started one, finished one");
        assert_eq!(m.assignments(), (1, 1));
        assert_eq!(m.lost_partitions(), 1);
        assert_eq!(m.checkpoints(), 2);
        assert_eq!(m.checkpoint_time(), Duration::from_millis(8));
        assert_eq!(m.reader_pauses(), 1);
        assert_eq!(m.transient_retries(), 1);
        assert_eq!(m.acknowledge_failures(), 1);
        assert_eq!(m.fenced_partitions(), 1);
    }
}
