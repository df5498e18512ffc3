//! Accounting counters (ARCHITECTURE.md, "Checkpoint protocol": the accounting identity).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Per-partition event accounting. Invariant (checked by tests):
/// `consumed = aggregated + dlq + late_dropped + filtered + deduplicated`, where `dlq` counts every
/// dead-lettered event (decode, operator and late rejects).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Messages read from the source and handed to the partition task.
    pub consumed: u64,
    /// Events absorbed by the stateful operator, or that reached the sinks when there is none.
    pub aggregated: u64,
    /// Events sent to the DLQ (any stage).
    pub dlq: u64,
    /// Late events dropped by policy.
    pub late_dropped: u64,
    /// Late events (a subset of `dlq` or `late_dropped`).
    pub late: u64,
    /// Events removed by a filter.
    pub filtered: u64,
    /// Events a dedup dropped as duplicates (0 in checkpoints from before dedup existed).
    #[serde(default)]
    pub deduplicated: u64,
    /// Result rows handed to the sinks.
    pub rows_out: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.consumed += other.consumed;
        self.aggregated += other.aggregated;
        self.dlq += other.dlq;
        self.late_dropped += other.late_dropped;
        self.late += other.late;
        self.filtered += other.filtered;
        self.deduplicated += other.deduplicated;
        self.rows_out += other.rows_out;
    }

    /// The accounting identity (ARCHITECTURE.md, "Checkpoint protocol").
    pub fn balanced(&self) -> bool {
        self.consumed
            == self.aggregated + self.dlq + self.late_dropped + self.filtered + self.deduplicated
    }
}

/// Totals for the whole run, updated as outputs reach the sink stage; read by the progress line.
#[derive(Debug, Default)]
pub struct Metrics {
    consumed: AtomicU64,
    aggregated: AtomicU64,
    dlq: AtomicU64,
    late_dropped: AtomicU64,
    late: AtomicU64,
    filtered: AtomicU64,
    deduplicated: AtomicU64,
    rows_out: AtomicU64,
    checkpoints: AtomicU64,
    owned: AtomicU64,
    assigned: AtomicU64,
    revoked: AtomicU64,
    pauses: AtomicU64,
    ack_failures: AtomicU64,
    /// Milliseconds spent storing checkpoints (prepare → save → commit), all lanes.
    checkpoint_ms: AtomicU64,
    lost: AtomicU64,
    transient_retries: AtomicU64,
}

impl Metrics {
    pub fn add(&self, c: &Counters) {
        self.consumed.fetch_add(c.consumed, Ordering::Relaxed);
        self.aggregated.fetch_add(c.aggregated, Ordering::Relaxed);
        self.dlq.fetch_add(c.dlq, Ordering::Relaxed);
        self.late_dropped
            .fetch_add(c.late_dropped, Ordering::Relaxed);
        self.late.fetch_add(c.late, Ordering::Relaxed);
        self.filtered.fetch_add(c.filtered, Ordering::Relaxed);
        self.deduplicated
            .fetch_add(c.deduplicated, Ordering::Relaxed);
        self.rows_out.fetch_add(c.rows_out, Ordering::Relaxed);
    }

    pub(crate) fn checkpoint_stored(&self, took: std::time::Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_ms
            .fetch_add(took.as_millis() as u64, Ordering::Relaxed);
    }

    /// Time spent storing checkpoints so far, all lanes (millisecond resolution).
    pub fn checkpoint_time(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.checkpoint_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn partition_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// Partitions the consumer group took away without a drain (another worker owned them
    /// already), in this run; a subset of the revoked ones of [`Metrics::assignments`].
    pub fn lost_partitions(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    pub(crate) fn transient_retried(&self) {
        self.transient_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Transient errors retried so far (every attempt after the first).
    pub fn transient_retries(&self) -> u64 {
        self.transient_retries.load(Ordering::Relaxed)
    }

    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }

    pub(crate) fn partition_started(&self) {
        self.owned.fetch_add(1, Ordering::Relaxed);
        self.assigned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn partition_stopped(&self, revoked: bool) {
        self.owned.fetch_sub(1, Ordering::Relaxed);
        if revoked {
            self.revoked.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn reader_paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Partitions this worker reads now.
    pub fn owned_partitions(&self) -> u64 {
        self.owned.load(Ordering::Relaxed)
    }

    /// Partitions started (assigned) and revoked so far in this run.
    pub fn assignments(&self) -> (u64, u64) {
        (
            self.assigned.load(Ordering::Relaxed),
            self.revoked.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn acknowledge_failed(&self) {
        self.ack_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Durable checkpoints the source could not acknowledge upstream (a failed Kafka group
    /// commit); each is made good by a later one.
    pub fn acknowledge_failures(&self) -> u64 {
        self.ack_failures.load(Ordering::Relaxed)
    }

    /// How often a reader paused its partition because downstream was full.
    pub fn reader_pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            consumed: self.consumed.load(Ordering::Relaxed),
            aggregated: self.aggregated.load(Ordering::Relaxed),
            dlq: self.dlq.load(Ordering::Relaxed),
            late_dropped: self.late_dropped.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
        }
    }
}
