//! Committing offsets to the consumer group, once a checkpoint is durable (ARCHITECTURE.md,
//! "Checkpoint protocol": the checkpoint is the truth, the Kafka commit follows it, so that
//! lag monitoring and other consumers of the group see weir's progress).
//!
//! - **Never backwards.** [`KafkaOffsetCommitter::commit`] and
//!   [`commit_all`](KafkaOffsetCommitter::commit_all) leave out every offset at or below the
//!   group's committed one (as last read or committed by this committer and its clones; read
//!   from the group when not known yet). Only [`reset`](KafkaOffsetCommitter::reset), which
//!   a user asks for, moves a group's offset backwards.
//! - **Bounded.** A commit waits at most `commit_timeout_ms` for the group coordinator: with the
//!   broker down, librdkafka's synchronous commit blocks far longer (45 s was seen), so it
//!   runs on a thread of its own and the caller stops waiting at the bound. While such a
//!   commit is still out, [`commit`](KafkaOffsetCommitter::commit) does not start another (the
//!   next checkpoint carries a newer offset anyway); `commit_all`, the commit of a stop, does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::debug;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::ErrorClass;

use super::client::{last_error_suffix, KafkaContext};
use super::errors::classify;
use super::KafkaSourceConfig;

/// The group's committed next offsets as a committer last saw them, by (topic, partition).
type Known = Arc<Mutex<HashMap<(String, i32), i64>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Commits next offsets to the group of a [`KafkaSourceConfig`], forward only and bounded in
/// time (see the module docs). Clones share what they know of the group.
#[derive(Clone)]
pub struct KafkaOffsetCommitter {
    consumer: Arc<BaseConsumer<KafkaContext>>,
    name: String,
    /// Bound on reading committed offsets.
    timeout: Duration,
    /// Bound on waiting for a commit.
    commit_timeout: Duration,
    /// The consumer is this committer's own (not a source's, whose readers serve its queue).
    own: bool,
    known: Known,
    /// Commits still waiting for the coordinator after their caller stopped waiting.
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for KafkaOffsetCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOffsetCommitter")
            .field("name", &self.name)
            .finish()
    }
}

impl KafkaOffsetCommitter {
    /// A committer with its own client, for when no [`KafkaSource`](super::KafkaSource) of the
    /// group runs in this process. (With one, use [`KafkaSource::committer`](super::KafkaSource::committer):
    /// a group member's commits are the ones a broker accepts once the group subscribes.)
    pub fn new(config: &KafkaSourceConfig) -> Result<Self> {
        let name = format!("kafka committer {}", config.group_id);
        let errors = config.validate("source");
        if !errors.is_empty() {
            return Err(WeirError::Config(errors.join("; ")));
        }
        let mut this = Self::from_consumer(config.consumer(&name)?, name, config);
        this.own = true;
        Ok(this)
    }

    pub(crate) fn from_consumer(
        consumer: Arc<BaseConsumer<KafkaContext>>,
        name: String,
        config: &KafkaSourceConfig,
    ) -> Self {
        Self {
            consumer,
            name,
            timeout: config.connect_timeout(),
            commit_timeout: Duration::from_millis(config.commit_timeout_ms),
            own: false,
            known: Known::default(),
            in_flight: Arc::default(),
        }
    }

    /// Serve this committer's own consumer queue (librdkafka's logs and errors wait there;
    /// nothing is assigned, so no message can).
    fn serve(&self) {
        if self.own {
            while self.consumer.poll(Duration::ZERO).is_some() {}
        }
    }

    fn error(&self, message: String, class: ErrorClass) -> WeirError {
        WeirError::Source {
            source_name: self.name.clone(),
            message,
            class,
        }
    }

    /// Commit `next_offset` (the offset of the next message to read, as Kafka expects) for
    /// one partition, and wait at most `commit_timeout_ms` for the group coordinator's answer.
    /// An offset at or below the group's committed one is not committed (never backwards).
    pub fn commit(&self, topic: &str, partition: i32, next_offset: i64) -> Result<()> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Err(self.error(
                format!(
                    "offset {next_offset} of {topic}/{partition} not committed: an earlier commit \
                     is still waiting for the group coordinator"
                ),
                ErrorClass::Transient,
            ));
        }
        self.commit_all(&[(topic, partition, next_offset)])
    }

    /// Commit the next offsets of several partitions in one request, waiting at most
    /// `commit_timeout_ms` in all (reading the group's offsets where they are not known yet
    /// included). Offsets at or below the group's committed ones are left out.
    pub fn commit_all(&self, offsets: &[(&str, i32, i64)]) -> Result<()> {
        let deadline = Instant::now() + self.commit_timeout;
        self.check_offsets(offsets)?;
        let unknown: Vec<(&str, i32)> = {
            let known = lock(&self.known);
            offsets
                .iter()
                .filter(|(t, p, _)| !known.contains_key(&(t.to_string(), *p)))
                .map(|(t, p, _)| (*t, *p))
                .collect()
        };
        if !unknown.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.read_committed(&unknown, left.min(self.timeout))?;
        }
        let ahead: Vec<(&str, i32, i64)> = {
            let known = lock(&self.known);
            offsets
                .iter()
                .copied()
                .filter(|(t, p, n)| match known.get(&(t.to_string(), *p)) {
                    Some(at) if *n <= *at => {
                        debug!(committer = %self.name, topic = %t, partition = p, next_offset = n, group_at = at, "not committed: the group is already there");
                        false
                    }
                    _ => true,
                })
                .collect()
        };
        if ahead.is_empty() {
            return Ok(());
        }
        self.commit_within(&ahead, deadline)
    }

    /// Set the group's next offsets as given, also backwards (what a user's reset asks for),
    /// waiting at most `commit_timeout_ms`.
    pub fn reset(&self, offsets: &[(&str, i32, i64)]) -> Result<()> {
        self.check_offsets(offsets)?;
        self.commit_within(offsets, Instant::now() + self.commit_timeout)
    }

    fn check_offsets(&self, offsets: &[(&str, i32, i64)]) -> Result<()> {
        match offsets.iter().find(|(_, _, n)| *n < 0) {
            Some((topic, partition, n)) => Err(self.error(
                format!("cannot commit the negative offset {n} for {topic}/{partition}"),
                ErrorClass::Fatal,
            )),
            None => Ok(()),
        }
    }

    /// One synchronous commit of `offsets` on a thread of its own, waited for until `deadline`.
    fn commit_within(&self, offsets: &[(&str, i32, i64)], deadline: Instant) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, n) in offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*n))
                .map_err(|e| self.error(format!("{topic}/{partition}: {e}"), classify(&e)))?;
        }
        let what = || {
            offsets
                .iter()
                .map(|(t, p, n)| format!("{t}/{p} at {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let consumer = self.consumer.clone();
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("weir-kafka-commit".into())
            .spawn(move || {
                let result = consumer.commit(&tpl, CommitMode::Sync);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(WeirError::Internal(format!("spawn a Kafka commit: {e}")));
        }
        let answer = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        self.serve();
        match answer {
            Ok(Ok(())) => {
                let mut known = lock(&self.known);
                for (t, p, n) in offsets {
                    known.insert((t.to_string(), *p), *n);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(self.error(
                format!(
                    "cannot commit offsets {}: {e}{}",
                    what(),
                    last_error_suffix(self.consumer.context())
                ),
                classify(&e),
            )),
            Err(_) => Err(self.error(
                format!(
                    "the group coordinator did not answer the commit of {} within {} ms \
                     (commit_timeout_ms){}",
                    what(),
                    self.commit_timeout.as_millis(),
                    last_error_suffix(self.consumer.context())
                ),
                ErrorClass::Transient,
            )),
        }
    }

    /// Read the group's committed offsets of `partitions` into what this committer knows.
    fn read_committed(&self, partitions: &[(&str, i32)], timeout: Duration) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            tpl.add_partition(topic, *partition);
        }
        // A coordinator that is still loading or moving (the offsets topic of a fresh broker
        // is created by the first group request) answers NotCoordinator at once: a transient
        // answer is asked again until the time is spent.
        let deadline = Instant::now() + timeout;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = self.consumer.committed_offsets(tpl.clone(), left);
            self.serve();
            match &result {
                Err(e)
                    if classify(e) == ErrorClass::Transient
                        && deadline.saturating_duration_since(Instant::now())
                            > Duration::from_millis(100) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => break result,
            }
        };
        let got = result.map_err(|e| {
            let names: Vec<String> = partitions.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            self.error(
                format!(
                    "cannot read the committed offsets of {} within {} ms: {e}{}",
                    names.join(", "),
                    timeout.as_millis(),
                    last_error_suffix(self.consumer.context())
                ),
                classify(&e),
            )
        })?;
        for e in got.elements() {
            if let Err(err) = e.error() {
                return Err(self.error(
                    format!(
                        "cannot read the committed offset of {}/{}: {err}",
                        e.topic(),
                        e.partition()
                    ),
                    classify(&err),
                ));
            }
        }
        let mut known = lock(&self.known);
        for e in got.elements() {
            let key = (e.topic().to_string(), e.partition());
            match e.offset() {
                Offset::Offset(n) => {
                    known.insert(key, n);
                }
                // No committed offset: anything may be committed.
                _ => {
                    known.insert(key, -1);
                }
            }
        }
        Ok(())
    }

    /// The group's committed next offset of one partition, `None` when there is none.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.read_committed(&[(topic, partition)], self.timeout)?;
        Ok(lock(&self.known)
            .get(&(topic.to_string(), partition))
            .copied()
            .filter(|n| *n >= 0))
    }
}
