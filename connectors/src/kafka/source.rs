//! The `kafka` source: the partitions of the configured topics, one reader per partition.
//!
//! Two ways to get partitions (`assignment`):
//! - `group` (the default): the consumer subscribes to the topics as a member of `group_id`
//!   with the `cooperative-sticky` assignor, and the executor follows the group's assignment
//!   ([`Source::assignments`]): workers sharing a group id share the partitions, and a
//!   worker that stops hands its partitions over. A group thread polls the consumer's main
//!   queue, which is where librdkafka runs the rebalance callback ([`super::group`]).
//! - `manual`: every partition of the topics, assigned explicitly ([`Source::partitions`]);
//!   the group is only where offsets are committed.
//!
//! One `BaseConsumer` serves all readers. Each reader owns the partition queue of its
//! partition (`split_partition_queue`), split *before* the partition is assigned so that no
//! message of it can reach the shared consumer queue; `read` is a blocking poll of that queue,
//! which fits the executor's reader threads. When downstream is full the reader pauses its
//! partition, so librdkafka stops prefetching it. With manual assignment the readers also
//! serve the shared queue (errors, logs) with a zero timeout; in a group the group thread does.
//!
//! Where a reader starts: a checkpoint's next offset when there is one; else the group's
//! committed offset; else `auto.offset.reset` (weir sets `earliest` unless the options say
//! otherwise). The executor asks [`Source::upstream`] first, which reads the group's committed
//! offset (and without one the partition's first offset or end) within `connect_timeout_ms`,
//! so the task starts at the real offset, and its checkpoints and commits never claim less;
//! the reader then opens at that exact offset. (`open` at 0 still means the group's offset,
//! see [`StartFrom::for_next_offset`].) weir never commits on read: `enable.auto.commit` and
//! `enable.auto.offset.store` are off, and offsets are committed by the
//! [`KafkaOffsetCommitter`](super::KafkaOffsetCommitter) once the output is durable, never
//! below the group's committed offset, and within `commit_timeout_ms`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use tracing::{debug, info, warn};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{
    Assignment, ErrorClass, InitialOffset, PartitionReader, Partitioning, RawBatch, RawMessage,
    ReadResult, Source, TopicPartition, Upstream,
};

use super::client::{
    check_brokers_and_timeout, client_config, last_error_suffix, reject_owned_options,
    topic_partitions, KafkaContext, KafkaOptions, OwnedOption,
};
use super::errors::classify;
use super::KafkaOffsetCommitter;
use crate::config_key;

pub(crate) fn default_connect_timeout_ms() -> u64 {
    10_000
}

fn default_revoke_timeout_ms() -> u64 {
    20_000
}

pub(crate) fn default_commit_timeout_ms() -> u64 {
    10_000
}

/// How the source gets its partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentMode {
    /// Subscribe as a member of the consumer group; partitions follow the group's assignment.
    #[default]
    Group,
    /// Read every partition of the topics, assigned explicitly.
    Manual,
}

/// Options of the source that weir sets itself.
/// Options of the classic group protocol that librdkafka refuses with `group.protocol =
/// "consumer"`, and what replaces each.
const CLASSIC_ONLY: &[(&str, &str)] = &[
    (
        "partition.assignment.strategy",
        "the broker assigns the partitions; `group.remote.assignor` names its assignor",
    ),
    (
        "session.timeout.ms",
        "the broker's group.consumer.session.timeout.ms decides",
    ),
    (
        "heartbeat.interval.ms",
        "the broker's group.consumer.heartbeat.interval.ms decides",
    ),
    ("group.protocol.type", "the consumer protocol has one type"),
];

const SOURCE_OWNED: &[OwnedOption] = &[
    OwnedOption {
        key: "enable.auto.commit",
        why: "weir commits offsets itself, only after their output is durable; remove it",
    },
    OwnedOption {
        key: "enable.auto.offset.store",
        why: "weir commits offsets itself, only after their output is durable; remove it",
    },
    OwnedOption {
        key: "group.id",
        why: "set `group_id` instead",
    },
    OwnedOption {
        key: "bootstrap.servers",
        why: "set `brokers` instead",
    },
    OwnedOption {
        key: "metadata.broker.list",
        why: "set `brokers` instead",
    },
];

/// Configuration of the `kafka` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, comma separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Topics to read; every partition of each is read.
    pub topics: Vec<String>,
    /// Consumer group that offsets are committed to (librdkafka `group.id`).
    pub group_id: String,
    /// librdkafka options passed through as they are (SASL, TLS, fetch sizes...), except the
    /// ones weir owns: `enable.auto.commit`, `enable.auto.offset.store`, `group.id`,
    /// `bootstrap.servers`. weir defaults `auto.offset.reset` to `earliest`.
    #[serde(default)]
    pub options: KafkaOptions,
    /// Bound on metadata requests at start: an unreachable broker or a missing topic is an
    /// error after at most this long, never a hang.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `group` (default): share partitions with the other members of `group_id`; `manual`:
    /// read every partition.
    #[serde(default)]
    pub assignment: AssignmentMode,
    /// On revocation, how long the executor may take to drain, checkpoint and commit the
    /// partitions it gives up. Keep it below librdkafka's `max.poll.interval.ms`.
    #[serde(default = "default_revoke_timeout_ms")]
    pub revoke_timeout_ms: u64,
    /// How long a group commit may wait for the group coordinator. When a run stops, the
    /// commits of all its partitions run together under this one bound; past it the run
    /// still ends successfully (the checkpoints are stored and are the truth) and warns that
    /// the group's committed offsets lag them.
    #[serde(default = "default_commit_timeout_ms")]
    pub commit_timeout_ms: u64,
}

impl KafkaSourceConfig {
    /// Messages are partitioned by their key inside each topic; with several topics the same
    /// key may be in more than one ([`Partitioning::ByMessageKeyPerTopic`]).
    pub fn partitioning(&self) -> Partitioning {
        if self.topics.len() > 1 {
            Partitioning::ByMessageKeyPerTopic(self.topics.clone())
        } else {
            Partitioning::ByMessageKey
        }
    }

    /// A config with the default options and timeout.
    pub fn new(brokers: impl Into<String>, topics: &[&str], group_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group_id: group_id.into(),
            options: KafkaOptions::default(),
            connect_timeout_ms: default_connect_timeout_ms(),
            assignment: AssignmentMode::default(),
            revoke_timeout_ms: default_revoke_timeout_ms(),
            commit_timeout_ms: default_commit_timeout_ms(),
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let key = |k: &str| config_key(key_prefix, k);
        let mut errors = check_brokers_and_timeout(
            key_prefix,
            &self.brokers,
            "connect_timeout_ms",
            self.connect_timeout_ms,
        );
        if self.revoke_timeout_ms == 0 {
            errors.push(format!("{}: must be at least 1", key("revoke_timeout_ms")));
        }
        if self.commit_timeout_ms == 0 {
            errors.push(format!("{}: must be at least 1", key("commit_timeout_ms")));
        }
        if self.topics.is_empty() {
            errors.push(format!("{}: must list at least one topic", key("topics")));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            if topic.trim().is_empty() {
                errors.push(format!(
                    "{}: a topic name must not be empty",
                    key(&format!("topics[{i}]"))
                ));
            } else if self.topics[..i].contains(topic) {
                errors.push(format!(
                    "{}: topic {topic:?} is listed twice",
                    key(&format!("topics[{i}]"))
                ));
            }
        }
        if self.group_id.trim().is_empty() {
            errors.push(format!(
                "{}: must not be empty (offsets are committed to this consumer group)",
                key("group_id")
            ));
        }
        errors.extend(reject_owned_options(
            key_prefix,
            &self.options,
            SOURCE_OWNED,
        ));
        if self.consumer_protocol() {
            for (option, instead) in CLASSIC_ONLY {
                if self.options.keys().any(|k| k.trim() == *option) {
                    errors.push(format!(
                        "{}: not used with group.protocol = \"consumer\" ({instead}); remove it",
                        key(&format!("options.\"{option}\""))
                    ));
                }
            }
        }
        errors
    }

    /// The group uses the consumer protocol of KIP-848 (`options."group.protocol" =
    /// "consumer"`): the broker assigns the partitions and times the sessions. The default is
    /// the classic protocol with `cooperative-sticky` (ARCHITECTURE.md, "Kafka groups").
    fn consumer_protocol(&self) -> bool {
        self.options
            .iter()
            .any(|(k, v)| k.trim() == "group.protocol" && v.trim() == "consumer")
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The librdkafka configuration of the consumer: never commits by itself.
    pub(crate) fn client_config(&self) -> rdkafka::ClientConfig {
        let mut defaults = vec![
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
        ];
        // The consumer protocol has no client-side assignor (librdkafka refuses one).
        if !self.consumer_protocol() {
            defaults.push(("partition.assignment.strategy", "cooperative-sticky"));
        }
        client_config(
            &self.brokers,
            &self.options,
            &[
                ("group.id", self.group_id.trim()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ],
            &defaults,
        )
    }

    /// A consumer of this config's group. No I/O: librdkafka connects in the background.
    pub(crate) fn consumer(&self, name: &str) -> Result<Arc<BaseConsumer<KafkaContext>>> {
        let consumer: BaseConsumer<KafkaContext> = self
            .client_config()
            .create_with_context(KafkaContext::default())
            .map_err(|e| {
                WeirError::source(name, format!("cannot create the Kafka consumer: {e}"))
            })?;
        Ok(Arc::new(consumer))
    }
}

/// Where a partition reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// At this offset (a checkpoint's next offset).
    Offset(i64),
    /// At the group's committed offset; without one, where `auto.offset.reset` says.
    Committed,
}

impl StartFrom {
    /// The start for the runtime's `next_offset`: `0` means the partition has no checkpoint
    /// (a checkpoint at 0 has processed nothing, so the group's committed offset, which only
    /// follows checkpoints, cannot be ahead of it unless the store was reset); anything above
    /// is a checkpoint's next offset and wins over the group offset.
    pub fn for_next_offset(next_offset: i64) -> Option<StartFrom> {
        match next_offset {
            0 => Some(StartFrom::Committed),
            n if n > 0 => Some(StartFrom::Offset(n)),
            _ => None,
        }
    }

    fn offset(self) -> Offset {
        match self {
            StartFrom::Offset(n) => Offset::Offset(n),
            StartFrom::Committed => Offset::Stored,
        }
    }
}

/// The `kafka` source. See the module docs.
pub struct KafkaSource {
    config: KafkaSourceConfig,
    name: String,
    consumer: Arc<BaseConsumer<KafkaContext>>,
    /// Commits through `consumer`, forward only; knows the group's offsets.
    committer: KafkaOffsetCommitter,
    /// Partitions of each topic, from the last metadata fetch.
    partitions: BTreeMap<String, Vec<i32>>,
    /// The source follows the group's assignment ([`Source::assignments`] was called).
    following: bool,
    /// The group thread polling the consumer's main queue, and its stop flag.
    group_thread: Option<JoinHandle<()>>,
    group_stop: Arc<AtomicBool>,
    /// The headers the pipeline reads ([`Source::keep_headers`]); empty: none is copied.
    headers: Arc<[String]>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

impl KafkaSource {
    /// Fails when the config is impossible. Does no I/O: [`Source::partitions`] is where the
    /// brokers and the topics are checked.
    pub fn new(config: KafkaSourceConfig) -> Result<Self> {
        let name = format!("kafka {}", config.topics.join(","));
        let errors = config.validate("source");
        if !errors.is_empty() {
            return Err(WeirError::Config(errors.join("; ")));
        }
        let consumer = config.consumer(&name)?;
        let committer =
            KafkaOffsetCommitter::from_consumer(consumer.clone(), name.clone(), &config);
        Ok(Self {
            config,
            name,
            consumer,
            committer,
            partitions: BTreeMap::new(),
            following: false,
            group_thread: None,
            group_stop: Arc::new(AtomicBool::new(false)),
            headers: Arc::from(Vec::new()),
        })
    }

    pub fn config(&self) -> &KafkaSourceConfig {
        &self.config
    }

    /// A committer that commits through this source's consumer (the group member that reads),
    /// sharing what the source knows of the group's offsets.
    pub fn committer(&self) -> KafkaOffsetCommitter {
        self.committer.clone()
    }

    /// Where a partition without a committed offset starts: `auto.offset.reset` (weir's
    /// default `earliest`).
    fn reset_policy(&self, topic: &str, partition: i32) -> Result<bool> {
        let policy = self
            .config
            .options
            .iter()
            .find(|(k, _)| k.trim() == "auto.offset.reset")
            .map_or("earliest", |(_, v)| v.trim());
        match policy {
            "earliest" | "smallest" | "beginning" => Ok(true),
            "latest" | "largest" | "end" => Ok(false),
            other => Err(self.error(
                format!(
                    "{topic}/{partition} has no checkpoint and no committed offset in group {:?}, \
                     and options.\"auto.offset.reset\" is {other:?}: nothing says where to start",
                    self.config.group_id
                ),
                ErrorClass::Fatal,
            )),
        }
    }

    fn error(&self, message: impl std::fmt::Display, class: ErrorClass) -> WeirError {
        WeirError::Source {
            source_name: self.name.clone(),
            message: message.to_string(),
            class,
        }
    }

    /// A reader of one partition from `start`. With manual assignment the partition is
    /// assigned to the shared consumer until the reader is dropped; in a group, the rebalance
    /// callback assigns it at `start` once the executor has opened it.
    pub fn open_from(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        start: StartFrom,
    ) -> Result<KafkaPartitionReader> {
        if !self.config.topics.iter().any(|t| **t == **topic) {
            return Err(self.error(
                format!(
                    "topic {topic:?} is not one of the configured topics {:?}",
                    self.config.topics
                ),
                ErrorClass::Fatal,
            ));
        }
        if let Some(known) = self.partitions.get(&**topic) {
            if !known.contains(&partition) {
                return Err(self.error(
                    format!("topic {topic:?} has no partition {partition} (it has {known:?})"),
                    ErrorClass::Fatal,
                ));
            }
        } else if partition < 0 {
            return Err(self.error(
                format!("no partition {partition} in topic {topic:?}"),
                ErrorClass::Fatal,
            ));
        }
        if let StartFrom::Offset(n) = start {
            if n < 0 {
                return Err(self.error(
                    format!("cannot start {topic}/{partition} at the negative offset {n}"),
                    ErrorClass::Fatal,
                ));
            }
        }
        // Split first: a message fetched after the assignment must land in this queue only.
        let queue = self
            .consumer
            .split_partition_queue(topic, partition)
            .ok_or_else(|| {
                self.error(
                    format!("cannot open a queue for {topic}/{partition}"),
                    ErrorClass::Fatal,
                )
            })?;
        if self.following {
            self.consumer
                .context()
                .group
                .record_start(topic, partition, start.offset());
            debug!(source = %self.name, topic = %topic, partition, start = ?start, "partition opened");
        } else {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, partition, start.offset())
                .map_err(|e| self.error(format!("{topic}/{partition}: {e}"), classify(&e)))?;
            self.consumer.incremental_assign(&tpl).map_err(|e| {
                self.error(
                    format!("cannot assign {topic}/{partition}: {e}"),
                    classify(&e),
                )
            })?;
            info!(source = %self.name, topic = %topic, partition, start = ?start, "partition assigned");
        }
        Ok(KafkaPartitionReader {
            group_member: self.following,
            paused: false,
            consumer: self.consumer.clone(),
            queue,
            topic: topic.clone(),
            // A topic name holds no NUL (the broker refuses one); an empty name then only
            // makes the end offset unknown.
            topic_c: std::ffi::CString::new(topic.as_bytes()).unwrap_or_default(),
            partition,
            name: self.name.clone(),
            headers: self.headers.clone(),
            expected: match start {
                StartFrom::Offset(n) => Some(n),
                StartFrom::Committed => None,
            },
            first: true,
        })
    }
}

/// The offsets `[start, end)` of one partition for a bounded read (`weir replay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl KafkaSource {
    /// For every partition of the configured topics: where a read from `from_ms` starts (the
    /// first offset whose timestamp is at or after it, `offsets_for_times`; the partition's
    /// first offset when `None`) and its end now (the high watermark). A partition with no
    /// message at or after `from_ms` starts at its end. Every request is bounded by
    /// `connect_timeout_ms`: an unreachable broker or a missing topic is an error.
    pub fn ranges(&mut self, from_ms: Option<i64>) -> Result<Vec<PartitionRange>> {
        let timeout = self.config.connect_timeout();
        let partitions = self.partitions()?;
        let mut ranges = Vec::with_capacity(partitions.len());
        for (topic, partition) in &partitions {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, *partition, timeout)
                .map_err(|e| {
                    self.error(
                        format!("cannot read the offsets of {topic}/{partition}: {e}"),
                        classify(&e),
                    )
                })?;
            ranges.push(PartitionRange {
                topic: topic.clone(),
                partition: *partition,
                start: low,
                end: high,
            });
        }
        let Some(from_ms) = from_ms else {
            return Ok(ranges);
        };
        let mut tpl = TopicPartitionList::new();
        for r in &ranges {
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(from_ms))
                .map_err(|e| {
                    self.error(format!("{}/{}: {e}", r.topic, r.partition), classify(&e))
                })?;
        }
        let found = self.consumer.offsets_for_times(tpl, timeout).map_err(|e| {
            self.error(
                format!("cannot look up the offsets at {from_ms} ms (offsets_for_times): {e}"),
                classify(&e),
            )
        })?;
        for r in &mut ranges {
            let element = found.find_partition(&r.topic, r.partition).ok_or_else(|| {
                self.error(
                    format!(
                        "offsets_for_times gave no answer for {}/{}",
                        r.topic, r.partition
                    ),
                    ErrorClass::Fatal,
                )
            })?;
            if let Err(e) = element.error() {
                return Err(self.error(
                    format!("offsets_for_times for {}/{}: {e}", r.topic, r.partition),
                    classify(&e),
                ));
            }
            let answer = match element.offset() {
                Offset::Offset(n) => n.clamp(r.start, r.end),
                // No message at or after the time: nothing to read.
                _ => r.end,
            };
            r.start = self.first_at_or_after(r, answer, from_ms)?;
        }
        Ok(ranges)
    }

    /// The first offset in `[from, range.end)` whose message timestamp is at or after
    /// `from_ms`, reading from `from` (the broker's `offsets_for_times` answer); `range.end`
    /// when there is none. With a broker that answers exactly, the first message read is the
    /// one: one fetch. Brokers that answer coarsely (per record batch, or the first offset:
    /// tansu, librdkafka's mock cluster) get the exact offset anyway. A message without a
    /// timestamp counts as at or after.
    fn first_at_or_after(&self, range: &PartitionRange, from: i64, from_ms: i64) -> Result<i64> {
        if from >= range.end {
            return Ok(range.end);
        }
        let timeout = self.config.connect_timeout();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&range.topic, range.partition, Offset::Offset(from))
            .map_err(|e| {
                self.error(
                    format!("{}/{}: {e}", range.topic, range.partition),
                    classify(&e),
                )
            })?;
        self.consumer.assign(&tpl).map_err(|e| {
            self.error(
                format!("cannot assign {}/{}: {e}", range.topic, range.partition),
                classify(&e),
            )
        })?;
        let result = (|| {
            let mut deadline = Instant::now() + timeout;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(self.error(
                        format!(
                            "{}/{}: no message arrived within {} ms while looking for the first offset at or after {from_ms} ms",
                            range.topic,
                            range.partition,
                            timeout.as_millis()
                        ),
                        ErrorClass::Transient,
                    ));
                }
                let Some(polled) = self.consumer.poll(remaining) else {
                    continue;
                };
                let m = match polled {
                    Ok(m) => m,
                    Err(KafkaError::PartitionEOF(_)) => continue,
                    Err(e) => match classify(&e) {
                        ErrorClass::Transient => continue,
                        class => {
                            return Err(self
                                .error(format!("{}/{}: {e}", range.topic, range.partition), class))
                        }
                    },
                };
                if m.offset() >= range.end {
                    return Ok(range.end);
                }
                match m.timestamp().to_millis() {
                    Some(ts) if ts < from_ms && m.offset() + 1 >= range.end => return Ok(range.end),
                    Some(ts) if ts < from_ms => deadline = Instant::now() + timeout,
                    _ => return Ok(m.offset()),
                }
            }
        })();
        if let Err(e) = self.consumer.unassign() {
            warn!(source = %self.name, error = %e, "cannot unassign after the offset lookup");
        }
        result
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitioning(&self) -> Partitioning {
        self.config.partitioning()
    }

    /// Every partition of every configured topic, from broker metadata fetched within
    /// `connect_timeout_ms` per topic.
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        let timeout = self.config.connect_timeout();
        let mut out = Vec::new();
        for topic in &self.config.topics {
            // Nothing is assigned to the shared queue's partitions: only events wait there.
            let serve = || while self.consumer.poll(Duration::ZERO).is_some() {};
            let partitions = topic_partitions(
                self.consumer.client(),
                &serve,
                self.config.brokers.trim(),
                topic,
                timeout,
            )
            .map_err(|(message, class)| self.error(message, class))?;
            let name: Arc<str> = Arc::from(topic.as_str());
            out.extend(partitions.iter().map(|p| (name.clone(), *p)));
            self.partitions.insert(topic.clone(), partitions);
        }
        Ok(out)
    }

    /// With `assignment = "group"`: check the brokers and topics (bounded, like
    /// [`Source::partitions`]), subscribe, and start the group thread.
    fn assignments(&mut self) -> Result<Option<crossbeam_channel::Receiver<Assignment>>> {
        if self.config.assignment == AssignmentMode::Manual {
            return Ok(None);
        }
        self.partitions()?;
        let (events, changes) = crossbeam_channel::unbounded();
        self.consumer.context().group.connect(
            events.clone(),
            Duration::from_millis(self.config.revoke_timeout_ms),
        );
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics).map_err(|e| {
            self.error(
                format!(
                    "cannot subscribe to {topics:?} in group {:?}: {e}",
                    self.config.group_id
                ),
                classify(&e),
            )
        })?;
        self.following = true;
        let consumer = self.consumer.clone();
        let stop = self.group_stop.clone();
        let name = self.name.clone();
        let handle = std::thread::Builder::new()
            .name("weir-kafka-group".into())
            .spawn(move || follow_group(&consumer, &stop, &events, &name))
            .map_err(|e| WeirError::Internal(format!("spawn the Kafka group thread: {e}")))?;
        self.group_thread = Some(handle);
        info!(source = %self.name, group = %self.config.group_id, "subscribed: following the group's assignment");
        Ok(Some(changes))
    }

    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        let start = StartFrom::for_next_offset(next_offset).ok_or_else(|| {
            self.error(
                format!("cannot start {topic}/{partition} at the negative offset {next_offset}"),
                ErrorClass::Fatal,
            )
        })?;
        Ok(Box::new(self.open_from(topic, partition, start)?))
    }

    /// Commit `next_offset` to the consumer group: called only once the partition's
    /// checkpoint, and with it every output below `next_offset`, is durable. Never below the
    /// group's committed offset, and waiting at most `commit_timeout_ms`.
    fn acknowledge(&mut self, topic: &Arc<str>, partition: i32, next_offset: i64) -> Result<()> {
        self.committer.commit(topic, partition, next_offset)
    }

    /// The commit of a stop: every partition's last checkpoint in one request, under one
    /// `commit_timeout_ms`.
    fn keep_headers(&mut self, names: &[String]) {
        self.headers = Arc::from(names.to_vec());
    }

    fn acknowledge_all(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let offsets: Vec<(&str, i32, i64)> = offsets
            .iter()
            .map(|((topic, partition), next)| (&**topic, *partition, *next))
            .collect();
        self.committer.commit_all(&offsets)
    }

    /// The group's committed offset of the partition; without one, its first offset or its
    /// end, as `auto.offset.reset` says. Bounded by `connect_timeout_ms`.
    fn upstream(&mut self, topic: &Arc<str>, partition: i32) -> Result<Upstream> {
        let committed = self.committer.committed(topic, partition)?;
        let initial = match committed {
            Some(n) => InitialOffset::Committed(n),
            None => {
                let earliest = self.reset_policy(topic, partition)?;
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(topic, partition, self.config.connect_timeout())
                    .map_err(|e| {
                        self.error(
                            format!("cannot read the offsets of {topic}/{partition}: {e}"),
                            classify(&e),
                        )
                    })?;
                if earliest {
                    InitialOffset::Earliest(low)
                } else {
                    InitialOffset::Latest(high)
                }
            }
        };
        Ok(Upstream {
            initial,
            acknowledged: committed,
        })
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        self.group_stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.group_thread.take() {
            let _ = handle.join();
        }
        // The consumer leaves the group when its last handle drops (librdkafka's close).
    }
}

/// The group thread: polls the consumer's main queue, which runs the rebalance callback and
/// delivers errors. Messages never arrive here (every partition's queue is split off before
/// it is assigned); an error that waiting cannot fix stops the executor.
fn follow_group(
    consumer: &BaseConsumer<KafkaContext>,
    stop: &AtomicBool,
    events: &crossbeam_channel::Sender<Assignment>,
    name: &str,
) {
    let fail = |message: String, class: ErrorClass| {
        let _ = events.send(Assignment::Failed(WeirError::Source {
            source_name: name.to_string(),
            message,
            class,
        }));
    };
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => {
                return fail(
                    format!(
                        "message {}/{} at offset {} arrived outside its partition queue",
                        m.topic(),
                        m.partition(),
                        m.offset()
                    ),
                    ErrorClass::Fatal,
                )
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => match classify(&e) {
                ErrorClass::Transient => {
                    warn!(source = %name, error = %e, "transient consumer error; librdkafka retries")
                }
                _ => {
                    return fail(
                        format!(
                            "the consumer group failed: {e}{}",
                            last_error_suffix(consumer.context())
                        ),
                        ErrorClass::Fatal,
                    )
                }
            },
        }
    }
}

/// The values of the `names` headers of `m`, in that order (the first header of a name wins;
/// `None` when it is absent or has no value). Nothing is read or copied when `names` is
/// empty.
fn header_values<M: Message>(m: &M, names: &[String]) -> Vec<Option<Vec<u8>>> {
    use rdkafka::message::Headers;
    if names.is_empty() {
        return Vec::new();
    }
    let mut values = vec![None; names.len()];
    if let Some(headers) = m.headers() {
        let mut found = vec![false; names.len()];
        for h in headers.iter() {
            if let Some(i) = names.iter().position(|n| n == h.key) {
                if !found[i] {
                    found[i] = true;
                    values[i] = h.value.map(<[u8]>::to_vec);
                }
            }
        }
    }
    values
}

/// Reads one assigned partition. See the module docs.
pub struct KafkaPartitionReader {
    /// The partition belongs to a group assignment: the rebalance callback assigns and
    /// unassigns it, and the group thread serves the main queue.
    group_member: bool,
    paused: bool,
    consumer: Arc<BaseConsumer<KafkaContext>>,
    queue: rdkafka::consumer::base_consumer::PartitionQueue<KafkaContext>,
    topic: Arc<str>,
    /// `topic` for librdkafka's C API ([`PartitionReader::end_offset`]), made once.
    topic_c: std::ffi::CString,
    partition: i32,
    name: String,
    /// The headers to copy into each message, in this order.
    headers: Arc<[String]>,
    /// The offset the next message should have, when known (to report gaps).
    expected: Option<i64>,
    /// No message was read yet.
    first: bool,
}

impl KafkaPartitionReader {
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    fn error(&self, e: &KafkaError) -> WeirError {
        WeirError::Source {
            source_name: self.name.clone(),
            message: format!(
                "{}/{}: {e}{}",
                self.topic,
                self.partition,
                last_error_suffix(self.consumer.context())
            ),
            // No record of ours is at fault when reading: nothing to dead-letter.
            class: match classify(e) {
                ErrorClass::Data => ErrorClass::Fatal,
                class => class,
            },
        }
    }

    /// A consumer or partition error: transient ones are logged (librdkafka retries by
    /// itself), others end the read with an error.
    fn on_error(&self, e: KafkaError) -> Result<()> {
        if matches!(e, KafkaError::PartitionEOF(_)) {
            return Ok(());
        }
        match classify(&e) {
            ErrorClass::Transient => {
                warn!(source = %self.name, topic = %self.topic, partition = self.partition, error = %e, "transient consumer error; librdkafka retries");
                Ok(())
            }
            _ => Err(self.error(&e)),
        }
    }

    /// Serve the shared consumer queue: errors and logs. A message there would have escaped
    /// its partition queue; it is an error rather than a silent loss or reordering.
    fn serve_consumer_queue(&self) -> Result<()> {
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            match event {
                Ok(m) => {
                    return Err(WeirError::Source {
                        source_name: self.name.clone(),
                        message: format!(
                            "message {}/{} at offset {} arrived outside its partition queue",
                            m.topic(),
                            m.partition(),
                            m.offset()
                        ),
                        class: ErrorClass::Fatal,
                    })
                }
                Err(e) => self.on_error(e)?,
            }
        }
        Ok(())
    }
}

impl PartitionReader for KafkaPartitionReader {
    /// Pause or resume fetching this partition (librdkafka keeps the position, so nothing is
    /// skipped or read twice).
    fn set_paused(&mut self, paused: bool) -> Result<()> {
        if paused == self.paused {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        result.map_err(|e| self.error(&e))?;
        self.paused = paused;
        debug!(source = %self.name, topic = %self.topic, partition = self.partition, paused, "partition fetch paused/resumed");
        Ok(())
    }

    /// The high watermark librdkafka cached from the last fetch response of this partition
    /// (`rd_kafka_get_watermark_offsets`: no request to the broker).
    fn end_offset(&self) -> Option<i64> {
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives (we hold an Arc of
        // it), `topic_c` is a NUL-terminated string that outlives the call, and librdkafka
        // only writes the two offsets through the pointers it is given. rust-rdkafka wraps
        // only the variant that asks the broker (`fetch_watermarks`).
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                self.topic_c.as_ptr(),
                self.partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult> {
        if !self.group_member {
            self.serve_consumer_queue()?;
        }
        let max_rows = max_rows.max(1);
        let deadline = Instant::now() + linger;
        let mut messages: Vec<RawMessage> = Vec::with_capacity(max_rows.min(4096));
        while messages.len() < max_rows {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let Some(polled) = self.queue.poll(remaining) else {
                break; // linger is over
            };
            let m = match polled {
                Ok(m) => m,
                Err(e) => {
                    self.on_error(e)?;
                    if remaining.is_zero() {
                        break;
                    }
                    continue;
                }
            };
            let offset = m.offset();
            if let Some(expected) = self.expected.filter(|e| offset > *e) {
                // Retention, compaction and transaction markers all leave gaps: a gap at the
                // start (the checkpoint's offset is gone) is worth a warning, later ones not.
                if self.first {
                    warn!(source = %self.name, topic = %self.topic, partition = self.partition, expected, offset, "the start offset is gone (retention?): reading resumes after a gap");
                } else {
                    debug!(source = %self.name, topic = %self.topic, partition = self.partition, expected, offset, "offset gap");
                }
            }
            self.first = false;
            self.expected = Some(offset + 1);
            messages.push(RawMessage {
                offset,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
                timestamp_ms: m.timestamp().to_millis(),
                headers: header_values(&m, &self.headers),
            });
        }
        if messages.is_empty() {
            return Ok(ReadResult::Idle);
        }
        Ok(ReadResult::Batch(RawBatch::new(
            self.topic.clone(),
            self.partition,
            messages,
        )))
    }
}

impl Drop for KafkaPartitionReader {
    fn drop(&mut self) {
        if self.group_member {
            return; // the rebalance callback unassigns it
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            warn!(source = %self.name, topic = %self.topic, partition = self.partition, error = %e, "cannot unassign partition");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KafkaSourceConfig {
        KafkaSourceConfig::new("127.0.0.1:9092", &["events"], "weir")
    }

    #[test]
    fn a_valid_config_has_no_errors() {
        assert!(valid().validate("source").is_empty());
    }

    #[test]
    fn empty_brokers_topics_group_and_timeout_are_errors() {
        let cfg = KafkaSourceConfig {
            brokers: " ".into(),
            topics: vec![],
            group_id: String::new(),
            options: KafkaOptions::default(),
            connect_timeout_ms: 0,
            assignment: AssignmentMode::Group,
            revoke_timeout_ms: 20_000,
            commit_timeout_ms: 10_000,
        };
        assert_eq!(
            cfg.validate("source"),
            [
                "source.brokers: must list at least one broker, e.g. \"127.0.0.1:9092\"",
                "source.connect_timeout_ms: must be at least 1",
                "source.topics: must list at least one topic",
                "source.group_id: must not be empty (offsets are committed to this consumer group)",
            ]
        );
    }

    #[test]
    fn empty_and_repeated_topics_are_errors() {
        let mut cfg = valid();
        cfg.topics = vec!["a".into(), "".into(), "a".into()];
        assert_eq!(
            cfg.validate(""),
            [
                "topics[1]: a topic name must not be empty",
                "topics[2]: topic \"a\" is listed twice",
            ]
        );
    }

    #[test]
    fn options_weir_owns_are_rejected_with_the_key_to_use() {
        let mut cfg = valid();
        for k in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "group.id",
            "bootstrap.servers",
            "fetch.min.bytes",
        ] {
            cfg.options.insert(k.into(), "x".into());
        }
        assert_eq!(
            cfg.validate("source"),
            [
                "source.options.\"bootstrap.servers\": weir owns this librdkafka option: set `brokers` instead",
                "source.options.\"enable.auto.commit\": weir owns this librdkafka option: weir commits offsets itself, only after their output is durable; remove it",
                "source.options.\"enable.auto.offset.store\": weir owns this librdkafka option: weir commits offsets itself, only after their output is durable; remove it",
                "source.options.\"group.id\": weir owns this librdkafka option: set `group_id` instead",
            ]
        );
    }

    #[test]
    fn classic_group_options_are_refused_with_the_consumer_protocol() {
        let mut cfg = valid();
        cfg.options
            .insert("session.timeout.ms".into(), "3000".into());
        cfg.options
            .insert("partition.assignment.strategy".into(), "range".into());
        assert!(cfg.validate("source").is_empty(), "classic: both are fine");
        assert_eq!(
            cfg.client_config().get("partition.assignment.strategy"),
            Some("range"),
            "the user's strategy wins over the default"
        );
        cfg.options
            .insert("group.protocol".into(), "consumer".into());
        assert_eq!(
            cfg.validate("source"),
            [
                "source.options.\"partition.assignment.strategy\": not used with group.protocol = \"consumer\" (the broker assigns the partitions; `group.remote.assignor` names its assignor); remove it",
                "source.options.\"session.timeout.ms\": not used with group.protocol = \"consumer\" (the broker's group.consumer.session.timeout.ms decides); remove it",
            ]
        );
        cfg.options.remove("partition.assignment.strategy");
        cfg.options.remove("session.timeout.ms");
        assert!(cfg.validate("source").is_empty());
        assert_eq!(
            cfg.client_config().get("partition.assignment.strategy"),
            None,
            "no client-side assignor with the consumer protocol"
        );
        assert_eq!(
            valid().client_config().get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
    }

    #[test]
    fn unknown_fields_are_refused_and_defaults_apply() {
        let cfg: KafkaSourceConfig =
            toml_like(r#"{"brokers":"b:1","topics":["t"],"group_id":"g"}"#).unwrap();
        assert_eq!(cfg.connect_timeout_ms, 10_000);
        assert!(cfg.options.is_empty());
        let err = toml_like(r#"{"brokers":"b:1","topics":["t"],"group_id":"g","group":"x"}"#)
            .unwrap_err();
        assert!(err.contains("unknown field `group`"), "{err}");
    }

    fn toml_like(json: &str) -> std::result::Result<KafkaSourceConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let mut cfg = valid();
        cfg.options.insert("sasl.password".into(), "hunter2".into());
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn sasl_and_tls_options_pass_through_to_librdkafka() {
        // librdkafka built without OpenSSL refuses these at client creation.
        let mut cfg = valid();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "weir"),
            ("sasl.password", "secret"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            cfg.options.insert(k.into(), v.into());
        }
        assert!(cfg.validate("source").is_empty());
        KafkaSource::new(cfg).unwrap();
    }

    #[test]
    fn a_checkpoint_wins_and_zero_means_the_group_offset() {
        assert_eq!(StartFrom::for_next_offset(0), Some(StartFrom::Committed));
        assert_eq!(StartFrom::for_next_offset(42), Some(StartFrom::Offset(42)));
        assert_eq!(StartFrom::for_next_offset(-1), None);
    }

    #[test]
    fn the_consumer_never_commits_by_itself() {
        let mut cfg = valid();
        let config = cfg.client_config();
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("weir"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("auto.offset.reset"), Some("earliest"));
        cfg.options
            .insert("auto.offset.reset".into(), "latest".into());
        assert_eq!(cfg.client_config().get("auto.offset.reset"), Some("latest"));
        // The consumer is built without I/O.
        assert!(KafkaSource::new(cfg).is_ok());
    }
}
