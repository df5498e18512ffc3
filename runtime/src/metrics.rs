//! Accounting counters (ARCHITECTURE.md, "Checkpoint protocol": the accounting identity) and
//! the live metrics of a run (ARCHITECTURE.md, "Metrics and operations").
//!
//! Every live value is an atomic updated where it happens (a reader thread per batch, a CPU
//! worker per step, the sink stage per output and checkpoint), so nothing on the hot path
//! takes a lock or allocates; an exporter reads them when it is scraped. The only lock is the
//! list of partitions ([`Metrics::partitions`]), taken when a partition starts or stops and
//! when the list is read, never per event or batch.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dlq::{DeadLetter, ErrorKind, Stage};

use serde::{Deserialize, Serialize};

/// Per-partition event accounting. Invariant (checked by tests):
/// `consumed = aggregated + dlq + late_dropped + filtered + deduplicated + (parked - unparked)`,
/// where `dlq` counts every dead-lettered event (decode, operator and late rejects) and
/// `parked - unparked` is the events waiting for a retry in the task's state
/// ([`Counters::in_retry`]; in the counters of one run it may be negative: the run let out
/// events an earlier run parked).
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
    /// Events that entered the retry state (a retryable failure, or an event waiting behind
    /// one of its key; again each time a retried event fails again). 0 in checkpoints from
    /// before retries, like the four below.
    #[serde(default)]
    pub parked: u64,
    /// Events that left the retry state to be tried again or to go on behind their key's.
    #[serde(default)]
    pub unparked: u64,
    /// Failed attempts after which another attempt was scheduled.
    #[serde(default)]
    pub retries_scheduled: u64,
    /// Attempts after the first (retries made).
    #[serde(default)]
    pub retries: u64,
    /// Events an operator accepted on a retry.
    #[serde(default)]
    pub retry_successes: u64,
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
        self.parked += other.parked;
        self.unparked += other.unparked;
        self.retries_scheduled += other.retries_scheduled;
        self.retries += other.retries;
        self.retry_successes += other.retry_successes;
    }

    /// Events waiting for a retry (`parked - unparked`): "in state", like those a window
    /// holds. Negative in the counters of a run that let out events an earlier run parked.
    pub fn in_retry(&self) -> i64 {
        self.parked as i64 - self.unparked as i64
    }

    /// The accounting identity (ARCHITECTURE.md, "Checkpoint protocol").
    pub fn balanced(&self) -> bool {
        self.consumed + self.unparked
            == self.aggregated
                + self.dlq
                + self.late_dropped
                + self.filtered
                + self.deduplicated
                + self.parked
    }
}

/// A histogram over fixed bucket bounds (seconds), of atomics: `observe` is a scan of the
/// bounds and two additions, no lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is above every bound.
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

/// Bounds of the checkpoint duration histogram, in seconds.
pub const CHECKPOINT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bounds of the batch processing latency histogram (one step of a partition task).
pub const BATCH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bounds of the end-to-end latency histogram (source timestamp to sink write).
pub const END_TO_END_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// (sum in seconds, count, cumulative `(upper bound, count)` per bucket), the shape of
    /// the Prometheus exposition; the last bucket's bound is `f64::MAX`, which the exposition
    /// writes as `+Inf`.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::MAX);
            buckets.push((bound, cumulative));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, cumulative, buckets)
    }
}

/// The live values of one partition this worker reads. Updated by its reader thread (offsets,
/// bytes) and the sink stage (watermark, checkpoints); `None`-like values are stored as
/// [`PartitionMetrics::UNKNOWN`].
#[derive(Debug)]
pub struct PartitionMetrics {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The offset after the last message read (where reading goes on).
    next_offset: AtomicI64,
    /// The source's end offset (Kafka: the high watermark) as last seen by the reader.
    end_offset: AtomicI64,
    /// The watermark the partition's operators reported last, epoch ms.
    watermark_ms: AtomicI64,
    /// When the partition's last checkpoint was committed, epoch ms.
    last_checkpoint_ms: AtomicI64,
    /// The checkpointed next offset of that checkpoint.
    checkpointed_offset: AtomicI64,
    /// Events of the partition waiting for a retry before the DLQ, after its last step.
    in_retry: AtomicU64,
}

impl PartitionMetrics {
    pub const UNKNOWN: i64 = i64::MIN;

    pub fn new(topic: Arc<str>, partition: i32, next_offset: i64) -> Self {
        Self {
            topic,
            partition,
            next_offset: AtomicI64::new(next_offset),
            end_offset: AtomicI64::new(Self::UNKNOWN),
            watermark_ms: AtomicI64::new(Self::UNKNOWN),
            last_checkpoint_ms: AtomicI64::new(Self::UNKNOWN),
            checkpointed_offset: AtomicI64::new(Self::UNKNOWN),
            in_retry: AtomicU64::new(0),
        }
    }

    fn get(v: &AtomicI64) -> Option<i64> {
        Some(v.load(Ordering::Relaxed)).filter(|v| *v != Self::UNKNOWN)
    }

    /// The reader read up to `next_offset` (exclusive) and the source says its end is
    /// `end_offset`.
    pub fn read_to(&self, next_offset: Option<i64>, end_offset: Option<i64>) {
        if let Some(n) = next_offset {
            self.next_offset.store(n, Ordering::Relaxed);
        }
        if let Some(e) = end_offset {
            self.end_offset.store(e, Ordering::Relaxed);
        }
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset.load(Ordering::Relaxed)
    }

    pub fn end_offset(&self) -> Option<i64> {
        Self::get(&self.end_offset)
    }

    /// Messages between where reading is and the source's end (never negative: a broker
    /// may report an end behind what was read); `None` while the end is unknown.
    pub fn lag(&self) -> Option<i64> {
        self.end_offset()
            .map(|end| (end - self.next_offset()).max(0))
    }

    pub fn set_watermark(&self, ms: i64) {
        self.watermark_ms.store(ms, Ordering::Relaxed);
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        Self::get(&self.watermark_ms)
    }

    pub(crate) fn checkpointed(&self, next_offset: i64, at_ms: i64) {
        self.checkpointed_offset
            .store(next_offset, Ordering::Relaxed);
        self.last_checkpoint_ms.store(at_ms, Ordering::Relaxed);
    }

    pub(crate) fn set_in_retry(&self, events: u64) {
        self.in_retry.store(events, Ordering::Relaxed);
    }

    /// Events of the partition waiting for a retry before the DLQ (in its task's state).
    pub fn in_retry(&self) -> u64 {
        self.in_retry.load(Ordering::Relaxed)
    }

    /// When the last checkpoint was committed (epoch ms) and its next offset.
    pub fn last_checkpoint(&self) -> Option<(i64, i64)> {
        Some((
            Self::get(&self.last_checkpoint_ms)?,
            Self::get(&self.checkpointed_offset)?,
        ))
    }
}

/// Where a run is, for readiness ([`Metrics::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Restoring partitions, not reading yet.
    Starting = 0,
    /// Reading (its partitions assigned and restored).
    Running = 1,
    /// A fatal error ends the run: what was read is drained and discarded.
    Failing = 2,
    /// The run is over.
    Stopped = 3,
}

/// The stages a dead letter is counted by (`weir_dlq_total{stage}`): the stage's kind, not
/// its id, so the counters are a fixed array.
pub const DLQ_STAGES: [&str; 3] = ["decode", "operator", "sink"];

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Totals for the whole run, updated as outputs reach the sink stage; read by the summary,
/// the progress line and the metrics endpoint.
#[derive(Debug)]
pub struct Metrics {
    consumed: AtomicU64,
    aggregated: AtomicU64,
    dlq: AtomicU64,
    late_dropped: AtomicU64,
    late: AtomicU64,
    filtered: AtomicU64,
    deduplicated: AtomicU64,
    rows_out: AtomicU64,
    parked: AtomicU64,
    unparked: AtomicU64,
    retries_scheduled: AtomicU64,
    retries: AtomicU64,
    retry_successes: AtomicU64,
    checkpoints: AtomicU64,
    owned: AtomicU64,
    assigned: AtomicU64,
    revoked: AtomicU64,
    pauses: AtomicU64,
    ack_failures: AtomicU64,
    /// Milliseconds spent storing checkpoints (prepare → save → commit), all lanes.
    checkpoint_ms: AtomicU64,
    lost: AtomicU64,
    fenced: AtomicU64,
    transient_retries: AtomicU64,
    /// Dead letters `weir dlq replay` fed through the pipeline again and that went through.
    dlq_replayed: AtomicU64,
    bytes_in: AtomicU64,
    state: AtomicU8,
    /// The run ended with an error (so not healthy either).
    failed: AtomicBool,
    /// Rows each sink accepted, by sink name, in sink order (set once the run starts).
    sink_rows: OnceLock<Vec<(String, AtomicU64)>>,
    /// Dead letters written, by [`ErrorKind::ALL`] × [`DLQ_STAGES`].
    dead_letters: [[AtomicU64; DLQ_STAGES.len()]; ErrorKind::ALL.len()],
    checkpoint_seconds: Histogram,
    batch_seconds: Histogram,
    end_to_end_seconds: Histogram,
    partitions: Mutex<Vec<Arc<PartitionMetrics>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            consumed: AtomicU64::new(0),
            aggregated: AtomicU64::new(0),
            dlq: AtomicU64::new(0),
            late_dropped: AtomicU64::new(0),
            late: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            deduplicated: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            unparked: AtomicU64::new(0),
            retries_scheduled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retry_successes: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            owned: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            ack_failures: AtomicU64::new(0),
            checkpoint_ms: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            transient_retries: AtomicU64::new(0),
            dlq_replayed: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            state: AtomicU8::new(RunState::Starting as u8),
            failed: AtomicBool::new(false),
            sink_rows: OnceLock::new(),
            dead_letters: Default::default(),
            checkpoint_seconds: Histogram::new(CHECKPOINT_BUCKETS),
            batch_seconds: Histogram::new(BATCH_BUCKETS),
            end_to_end_seconds: Histogram::new(END_TO_END_BUCKETS),
            partitions: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// The run's state: `Failing` and `Stopped` are final (a later `Running` is ignored).
    pub fn set_state(&self, state: RunState) {
        if state == RunState::Failing {
            self.failed.store(true, Ordering::Relaxed);
        }
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s < RunState::Failing as u8 || state == RunState::Stopped).then_some(state as u8)
            });
    }

    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Relaxed) {
            0 => RunState::Starting,
            1 => RunState::Running,
            2 => RunState::Failing,
            _ => RunState::Stopped,
        }
    }

    /// Ready to serve: running, with at least one partition assigned and restored (sinks are
    /// connected before a run starts). Not while a fatal error drains.
    pub fn ready(&self) -> bool {
        self.state() == RunState::Running && self.owned_partitions() > 0
    }

    /// Whether the run has not failed.
    pub fn healthy(&self) -> bool {
        !self.failed.load(Ordering::Relaxed)
    }

    /// Name the sinks whose written rows are counted (once, when the run starts).
    pub fn set_sinks(&self, names: impl IntoIterator<Item = String>) {
        let _ = self
            .sink_rows
            .set(names.into_iter().map(|n| (n, AtomicU64::new(0))).collect());
    }

    /// Sink number `sink` (of [`Metrics::set_sinks`]) accepted `rows`. The executor's sink
    /// stage calls this and the other recording methods; so does `weir bench`'s metrics pass.
    pub fn sink_wrote(&self, sink: usize, rows: u64) {
        if let Some((_, n)) = self.sink_rows.get().and_then(|s| s.get(sink)) {
            n.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Rows each sink accepted so far, by name.
    pub fn sink_rows(&self) -> Vec<(&str, u64)> {
        self.sink_rows
            .get()
            .map(|s| {
                s.iter()
                    .map(|(n, c)| (n.as_str(), c.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn dead_lettered(&self, letters: &[DeadLetter]) {
        for l in letters {
            let kind = ErrorKind::ALL
                .iter()
                .position(|k| *k == l.kind)
                .expect("invariant: ErrorKind::ALL lists every ErrorKind");
            let stage = match l.stage {
                Stage::Decode => 0,
                Stage::Operator(_) => 1,
                Stage::Sink(_) => 2,
            };
            self.dead_letters[kind][stage].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` dead letters were replayed (`weir dlq replay`: their messages went through the
    /// pipeline this time and they are marked replayed in the DLQ).
    pub fn dead_letters_replayed(&self, n: u64) {
        self.dlq_replayed.fetch_add(n, Ordering::Relaxed);
    }

    /// Dead letters replayed so far (`weir_dlq_replayed_total`).
    pub fn replayed(&self) -> u64 {
        self.dlq_replayed.load(Ordering::Relaxed)
    }

    /// Dead letters written so far, by kind and stage (only the ones with any).
    pub fn dead_letters(&self) -> Vec<(ErrorKind, &'static str, u64)> {
        let mut out = Vec::new();
        for (k, row) in self.dead_letters.iter().enumerate() {
            for (s, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((ErrorKind::ALL[k], DLQ_STAGES[s], n));
                }
            }
        }
        out
    }

    /// A reader read `bytes` of payloads and keys.
    pub fn read_bytes(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Payload and key bytes read from the source.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// A partition task processed a batch in `took`.
    pub fn batch_processed(&self, took: Duration) {
        self.batch_seconds.observe(took);
    }

    /// Rows reached the sinks `latency` after their newest source message's time.
    pub fn written_after(&self, latency: Duration) {
        self.end_to_end_seconds.observe(latency);
    }

    /// Histograms: checkpoint duration, batch processing, end-to-end latency.
    pub fn histograms(&self) -> [(&'static str, &Histogram); 3] {
        [
            ("checkpoint_duration", &self.checkpoint_seconds),
            ("batch_processing", &self.batch_seconds),
            ("end_to_end_latency", &self.end_to_end_seconds),
        ]
    }

    /// Track a partition that starts (at `next_offset`); the returned handle is what its
    /// reader and the sink stage update.
    pub fn track_partition(
        &self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Arc<PartitionMetrics> {
        let p = Arc::new(PartitionMetrics::new(topic.clone(), partition, next_offset));
        let mut list = self
            .partitions
            .lock()
            .expect("invariant: no panic holds it");
        list.retain(|q| !(q.topic == *topic && q.partition == partition));
        list.push(p.clone());
        p
    }

    pub(crate) fn untrack_partition(&self, topic: &Arc<str>, partition: i32) {
        self.partitions
            .lock()
            .expect("invariant: no panic holds it")
            .retain(|q| !(q.topic == *topic && q.partition == partition));
    }

    /// The partitions this worker reads now.
    pub fn partitions(&self) -> Vec<Arc<PartitionMetrics>> {
        self.partitions
            .lock()
            .expect("invariant: no panic holds it")
            .clone()
    }

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
        self.parked.fetch_add(c.parked, Ordering::Relaxed);
        self.unparked.fetch_add(c.unparked, Ordering::Relaxed);
        self.retries_scheduled
            .fetch_add(c.retries_scheduled, Ordering::Relaxed);
        self.retries.fetch_add(c.retries, Ordering::Relaxed);
        self.retry_successes
            .fetch_add(c.retry_successes, Ordering::Relaxed);
    }

    pub(crate) fn checkpoint_stored(&self, took: std::time::Duration) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_seconds.observe(took);
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

    pub(crate) fn partition_fenced(&self) {
        self.fenced.fetch_add(1, Ordering::Relaxed);
    }

    /// Partitions dropped because a newer owner had claimed them when this worker stored or
    /// committed a checkpoint (ARCHITECTURE.md, "Checkpoint protocol"), in this run.
    pub fn fenced_partitions(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    pub(crate) fn transient_retried(&self) {
        self.transient_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Transient errors retried so far (every attempt after the first).
    pub fn transient_retries(&self) -> u64 {
        self.transient_retries.load(Ordering::Relaxed)
    }

    /// Events waiting for a retry now, over the partitions this worker reads.
    pub fn in_retry(&self) -> u64 {
        self.partitions().iter().map(|p| p.in_retry()).sum()
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

    /// Partitions revoked so far in this run (each a rebalance that took one away).
    pub fn revoked_partitions(&self) -> u64 {
        self.revoked.load(Ordering::Relaxed)
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
            parked: self.parked.load(Ordering::Relaxed),
            unparked: self.unparked.load(Ordering::Relaxed),
            retries_scheduled: self.retries_scheduled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retry_successes: self.retry_successes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_observation_in_its_bucket_cumulatively() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [5, 10, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.read();
        assert_eq!(count, 4);
        assert!((sum - 2.065).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.01, 2), (0.1, 3), (1.0, 3), (f64::MAX, 4)]);
    }

    #[test]
    fn lag_is_the_end_minus_the_next_offset_and_never_negative() {
        let p = PartitionMetrics::new("t".into(), 0, 10);
        assert_eq!(p.lag(), None, "end unknown");
        p.read_to(None, Some(25));
        assert_eq!(p.lag(), Some(15));
        p.read_to(Some(25), None);
        assert_eq!(p.lag(), Some(0));
        // A broker that reports an end behind what was read (tansu: a batch's base offset).
        p.read_to(Some(30), Some(28));
        assert_eq!(p.lag(), Some(0));
    }

    #[test]
    fn ready_only_while_running_with_a_partition_and_never_again_after_failing() {
        let m = Metrics::default();
        assert!(!m.ready(), "starting");
        m.set_state(RunState::Running);
        assert!(!m.ready(), "no partition yet");
        m.partition_started();
        assert!(m.ready());
        assert!(m.healthy());
        m.set_state(RunState::Failing);
        assert!(!m.ready(), "a fatal error drains");
        m.set_state(RunState::Running);
        assert_eq!(m.state(), RunState::Failing, "failing is final");
        assert!(!m.healthy());
        m.set_state(RunState::Stopped);
        assert_eq!(m.state(), RunState::Stopped);
    }

    #[test]
    fn dead_letters_count_by_kind_and_stage_and_sinks_by_index() {
        let m = Metrics::default();
        let letter = |kind, stage| DeadLetter {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 0,
            offset: 1,
            key: None,
            payload: None,
            kind,
            message: String::new(),
            stage,
            attempts: 1,
            time_ms: 0,
            first_failure_ms: 0,
        };
        m.dead_lettered(&[
            letter(ErrorKind::InvalidJson, Stage::Decode),
            letter(ErrorKind::InvalidJson, Stage::Decode),
            letter(ErrorKind::Late, Stage::Operator("operators[1]".into())),
            letter(ErrorKind::SinkRejected, Stage::Sink("sinks[0]".into())),
        ]);
        assert_eq!(
            m.dead_letters(),
            vec![
                (ErrorKind::InvalidJson, "decode", 2),
                (ErrorKind::Late, "operator", 1),
                (ErrorKind::SinkRejected, "sink", 1),
            ]
        );
        m.set_sinks(["sinks[0]".to_string(), "sinks[1]".to_string()]);
        m.sink_wrote(1, 7);
        m.sink_wrote(5, 1); // no such sink: ignored
        assert_eq!(m.sink_rows(), vec![("sinks[0]", 0), ("sinks[1]", 7)]);
    }

    #[test]
    fn a_partition_tracked_again_replaces_its_old_entry() {
        let m = Metrics::default();
        let t: Arc<str> = "t".into();
        m.track_partition(&t, 0, 0);
        m.track_partition(&t, 1, 0);
        let again = m.track_partition(&t, 0, 40);
        assert_eq!(m.partitions().len(), 2);
        assert_eq!(again.next_offset(), 40);
        m.untrack_partition(&t, 0);
        assert_eq!(m.partitions().len(), 1);
        assert_eq!(m.partitions()[0].partition, 1);
    }
}
