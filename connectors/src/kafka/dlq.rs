//! The `kafka` dead-letter queue: each dead letter as one message of a topic, with the
//! original key and payload (a tombstone stays a tombstone), and what happened in headers:
//!
//! | header | value |
//! |---|---|
//! | `weir.error.kind` | [`ErrorKind::as_str`](weir_runtime::ErrorKind::as_str), e.g. `invalid_json` |
//! | `weir.error.message` | the reason |
//! | `weir.stage` | `decode`, `operator:<id>` or `sink:<id>` |
//! | `weir.source.topic`, `weir.source.partition`, `weir.source.offset` | where the message was read |
//! | `weir.pipeline` | the pipeline name |
//! | `weir.attempts` | attempts before giving up |
//! | `weir.time_ms` | when the last attempt failed, epoch millis |
//! | `weir.dlq.id` | the stable dead-letter id ([`weir_runtime::dlq::dead_letter_id`]) |
//! | `weir.first_failure_ms` | when the first attempt failed, epoch millis |
//! | `weir.version` | `2` (`1`: written before `weir.dlq.id` and `weir.first_failure_ms`) |
//!
//! Every value is UTF-8 text (numbers in decimal). `prepare` returns once every dead letter
//! written so far is acknowledged by the broker: an offset is never committed before its dead
//! letters are durable. At-least-once: after a crash, dead letters since the last checkpoint
//! are written again, under the same id, so a reader keeps one record per id
//! ([`read_dlq_topic`]).
//!
//! `weir dlq replay` marks a letter whose message went through with a message of its own: no
//! key, no payload, headers `weir.marker` = `replayed`, `weir.dlq.id`, `weir.pipeline`,
//! `weir.time_ms` and `weir.version`. Marks are sent at the lane's `commit`, after the sinks
//! committed the replay's output (a crash in between leaves the letter pending: a second
//! replay writes its output again).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde::Deserialize;
use weir_runtime::dlq::{dead_letter_id, is_dead_letter_id};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::metrics::now_ms;
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{DeadLetter, DlqWriter, ErrorClass, ErrorKind, Lane, Stage};

use super::client::{
    check_brokers_and_timeout, client_config, read_topic_to_end, reject_owned_options,
    topic_partitions, KafkaContext, KafkaOptions,
};
use super::producer::{ConfirmedProducer, Refused, PRODUCER_OWNED};
use super::source::default_connect_timeout_ms;
use crate::config_key;
use crate::dlq_records::{fold, DeadLetterRecord, ReplayMark};

/// The version written in `weir.version`.
const VERSION: &str = "2";

/// Header names of a dead letter, in the order they are written.
pub const DLQ_HEADERS: [&str; 12] = [
    "weir.error.kind",
    "weir.error.message",
    "weir.stage",
    "weir.source.topic",
    "weir.source.partition",
    "weir.source.offset",
    "weir.pipeline",
    "weir.attempts",
    "weir.time_ms",
    "weir.dlq.id",
    "weir.first_failure_ms",
    "weir.version",
];

/// Header names of a replay mark, in the order they are written.
pub const MARK_HEADERS: [&str; 5] = [
    "weir.marker",
    "weir.dlq.id",
    "weir.pipeline",
    "weir.time_ms",
    "weir.version",
];

/// Configuration of the `kafka` dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaDlqConfig {
    /// Bootstrap brokers, comma separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Topic of the dead letters; it must exist.
    pub topic: String,
    /// librdkafka producer options passed through as they are, except the ones weir owns:
    /// `bootstrap.servers`, `enable.idempotence`, `transactional.id`.
    #[serde(default)]
    pub options: KafkaOptions,
    /// Bound on the start-up check (brokers reachable, topic exists) and on each wait for
    /// acknowledgements in `prepare` (a longer wait is a transient error, retried).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl KafkaDlqConfig {
    /// A config with the default options and timeout.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            options: KafkaOptions::default(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    /// Every impossible value, as `"<key>: <problem>"` lines.
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let mut errors = check_brokers_and_timeout(
            key_prefix,
            &self.brokers,
            "connect_timeout_ms",
            self.connect_timeout_ms,
        );
        if self.topic.trim().is_empty() {
            errors.push(format!(
                "{}: must not be empty",
                config_key(key_prefix, "topic")
            ));
        }
        errors.extend(reject_owned_options(
            key_prefix,
            &self.options,
            PRODUCER_OWNED,
        ));
        errors
    }
}

/// The `kafka` dead-letter queue. See the module docs.
pub struct KafkaDlq {
    name: String,
    producer: ConfirmedProducer,
    /// Replay marks per lane, sent at the lane's commit.
    marks: BTreeMap<Lane, Vec<String>>,
    /// The pipeline named in marks.
    pipeline: String,
}

impl std::fmt::Debug for KafkaDlq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDlq")
            .field("name", &self.name)
            .finish()
    }
}

impl KafkaDlq {
    /// Checks within `connect_timeout_ms` that the brokers answer and the topic exists.
    pub fn new(config: &KafkaDlqConfig) -> Result<Self> {
        Self::for_pipeline(config, "")
    }

    /// [`KafkaDlq::new`], naming `pipeline` in the replay marks it writes.
    pub fn for_pipeline(config: &KafkaDlqConfig, pipeline: &str) -> Result<Self> {
        let errors = config.validate("dlq");
        if !errors.is_empty() {
            return Err(WeirError::Config(errors.join("; ")));
        }
        let name = format!("kafka dlq {}", config.topic.trim());
        let producer = ConfirmedProducer::connect(
            name.clone(),
            &config.brokers,
            config.topic.trim(),
            &config.options,
            Duration::from_millis(config.connect_timeout_ms),
        )?;
        Ok(Self {
            name,
            producer,
            marks: BTreeMap::new(),
            pipeline: pipeline.to_string(),
        })
    }

    fn send(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        what: impl Fn() -> String,
    ) -> Result<()> {
        match self.producer.send(key, payload, Some(headers)) {
            Ok(()) => Ok(()),
            Err(Ok(Refused(e))) => Err(WeirError::Sink {
                sink: self.name.clone(),
                message: format!(
                    "{} was refused by Kafka: {e} (is the DLQ topic's max.message.bytes \
                     smaller than the source's?)",
                    what()
                ),
                class: ErrorClass::Fatal,
            }),
            Err(Err(e)) => Err(e),
        }
    }
}

/// The text of a stage in the `weir.stage` header ([`Stage::text`]).
pub fn stage_text(stage: &Stage) -> String {
    stage.text()
}

/// The headers of one dead letter, as (name, value) in [`DLQ_HEADERS`] order.
pub fn dlq_header_values(letter: &DeadLetter) -> [(&'static str, String); 12] {
    let values = [
        letter.kind.as_str().to_string(),
        letter.message.clone(),
        stage_text(&letter.stage),
        letter.topic.to_string(),
        letter.partition.to_string(),
        letter.offset.to_string(),
        letter.pipeline.to_string(),
        letter.attempts.to_string(),
        letter.time_ms.to_string(),
        letter.id(),
        letter.first_failure_ms.to_string(),
        VERSION.to_string(),
    ];
    let mut i = 0;
    values.map(|v| {
        let name = DLQ_HEADERS[i];
        i += 1;
        (name, v)
    })
}

/// The headers of a replay mark of `id`, as (name, value) in [`MARK_HEADERS`] order.
pub fn mark_header_values(pipeline: &str, id: &str, time_ms: i64) -> [(&'static str, String); 5] {
    let values = [
        "replayed".to_string(),
        id.to_string(),
        pipeline.to_string(),
        time_ms.to_string(),
        VERSION.to_string(),
    ];
    let mut i = 0;
    values.map(|v| {
        let name = MARK_HEADERS[i];
        i += 1;
        (name, v)
    })
}

fn owned_headers(values: &[(&'static str, String)]) -> OwnedHeaders {
    values.iter().fold(
        OwnedHeaders::new_with_capacity(values.len()),
        |h, (name, value)| {
            h.insert(Header {
                key: name,
                value: Some(value.as_str()),
            })
        },
    )
}

impl EpochParticipant for KafkaDlq {
    fn recover(&mut self, lane: &Lane, _committed_epoch: Option<u64>) -> Result<()> {
        self.marks.remove(lane);
        Ok(())
    }

    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        self.producer.confirm()
    }

    /// Sends the lane's replay marks (after the sinks committed the replay's output) and
    /// waits for their acknowledgement.
    fn commit(&mut self, lane: &Lane, _epoch: u64) -> Result<()> {
        let Some(ids) = self.marks.get(lane) else {
            return Ok(());
        };
        let time_ms = now_ms();
        for id in ids {
            let headers = owned_headers(&mark_header_values(&self.pipeline, id, time_ms));
            self.send(None, None, headers, || format!("the replay mark of {id}"))?;
        }
        self.producer.confirm()?;
        self.marks.remove(lane);
        Ok(())
    }
}

impl DlqWriter for KafkaDlq {
    fn write(&mut self, _lane: &Lane, letters: &[DeadLetter]) -> Result<()> {
        for letter in letters {
            let headers = owned_headers(&dlq_header_values(letter));
            self.send(
                letter.key.as_deref(),
                letter.payload.as_deref(),
                headers,
                || {
                    format!(
                        "the dead letter of {}/{} at offset {}",
                        letter.topic, letter.partition, letter.offset
                    )
                },
            )?;
        }
        self.producer.poll();
        Ok(())
    }

    fn mark_replayed(&mut self, lane: &Lane, ids: &[String]) -> Result<()> {
        self.marks
            .entry(lane.clone())
            .or_default()
            .extend_from_slice(ids);
        Ok(())
    }
}

fn read_error(message: String) -> WeirError {
    WeirError::Dlq { message }
}

/// One message of a DLQ topic, read back: a dead letter, a replay mark, or neither (a
/// message another writer put there, without weir's headers).
fn read_message(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &HashMap<String, String>,
) -> Result<Option<std::result::Result<DeadLetterRecord, ReplayMark>>> {
    let at = || format!("kafka topic {topic} partition {partition} offset {offset}");
    let get = |name: &str| {
        headers
            .get(name)
            .cloned()
            .ok_or_else(|| read_error(format!("{}: no header {name}", at())))
    };
    let number = |name: &str| -> Result<i64> {
        let text = get(name)?;
        text.parse::<i64>()
            .map_err(|_| read_error(format!("{}: header {name}: {text:?} is not a number", at())))
    };
    let checked_id = |id: String| -> Result<String> {
        if is_dead_letter_id(&id) {
            Ok(id)
        } else {
            Err(read_error(format!(
                "{}: header weir.dlq.id: {id:?} is not a dead-letter id",
                at()
            )))
        }
    };
    if let Some(marker) = headers.get("weir.marker") {
        if marker != "replayed" {
            return Err(read_error(format!(
                "{}: unknown weir.marker {marker:?}",
                at()
            )));
        }
        return Ok(Some(Err(ReplayMark {
            id: checked_id(get("weir.dlq.id")?)?,
            time_ms: number("weir.time_ms")?,
        })));
    }
    if !headers.contains_key("weir.error.kind") {
        return Ok(None);
    }
    let kind = ErrorKind::parse(&get("weir.error.kind")?)
        .map_err(|e| read_error(format!("{}: {e}", at())))?;
    let stage = Stage::parse(&get("weir.stage")?)
        .map_err(|e| read_error(format!("{}: header weir.stage: {e}", at())))?;
    let pipeline = get("weir.pipeline")?;
    let source_topic = get("weir.source.topic")?;
    let source_partition = i32::try_from(number("weir.source.partition")?).map_err(|_| {
        read_error(format!(
            "{}: header weir.source.partition out of range",
            at()
        ))
    })?;
    let source_offset = number("weir.source.offset")?;
    let time_ms = number("weir.time_ms")?;
    let id = match headers.get("weir.dlq.id") {
        Some(id) => checked_id(id.clone())?,
        None => dead_letter_id(
            &pipeline,
            &source_topic,
            source_partition,
            source_offset,
            &stage,
            payload,
        ),
    };
    let first_failure_ms = match headers.get("weir.first_failure_ms") {
        Some(_) => number("weir.first_failure_ms")?,
        None => time_ms,
    };
    Ok(Some(Ok(DeadLetterRecord {
        id,
        letter: DeadLetter {
            pipeline: pipeline.into(),
            topic: source_topic.into(),
            partition: source_partition,
            offset: source_offset,
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            kind,
            message: get("weir.error.message")?,
            stage,
            attempts: u32::try_from(number("weir.attempts")?)
                .map_err(|_| read_error(format!("{}: header weir.attempts out of range", at())))?,
            time_ms,
            first_failure_ms,
        },
        replayed_ms: None,
    })))
}

/// Every dead letter of the DLQ topic, read from its beginning to its end now, one record per
/// id with the replay marks applied ([`crate::dlq_records::fold`]). Each partition is read
/// within `connect_timeout_ms` (else a transient error). Joins no consumer group and commits
/// nothing. Messages without weir's headers are skipped.
pub fn read_dlq_topic(config: &KafkaDlqConfig) -> Result<Vec<DeadLetterRecord>> {
    let topic = config.topic.trim();
    let wait = Duration::from_millis(config.connect_timeout_ms);
    let consumer: BaseConsumer<KafkaContext> = client_config(
        &config.brokers,
        &config.options,
        &[
            ("group.id", "weir-dlq-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ],
        &[],
    )
    .create_with_context(KafkaContext::default())
    .map_err(|e| read_error(format!("cannot create a Kafka client: {e}")))?;
    let serve = || {};
    let partitions = topic_partitions(consumer.client(), &serve, &config.brokers, topic, wait)
        .map_err(|(message, class)| WeirError::Sink {
            sink: format!("kafka dlq {topic}"),
            message,
            class,
        })?;
    let mut records = Vec::new();
    let mut marks = Vec::new();
    let sink = format!("kafka dlq {topic}");
    read_topic_to_end(
        &consumer,
        topic,
        &partitions,
        wait,
        "DLQ topic",
        &sink,
        &read_error,
        |p, m| {
            let headers: HashMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| {
                            let v = std::str::from_utf8(h.value?).ok()?;
                            Some((h.key.to_string(), v.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            match read_message(topic, p, m.offset(), m.key(), m.payload(), &headers)? {
                Some(Ok(r)) => records.push(r),
                Some(Err(mark)) => marks.push(mark),
                None => {}
            }
            Ok(())
        },
    )?;
    Ok(fold(records, &marks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weir_runtime::ErrorKind;

    #[test]
    fn impossible_values_and_owned_options_are_errors() {
        let mut cfg = KafkaDlqConfig::new(" ", "");
        cfg.options
            .insert("enable.idempotence".into(), "false".into());
        assert_eq!(
            cfg.validate("dlq"),
            [
                "dlq.brokers: must list at least one broker, e.g. \"127.0.0.1:9092\"",
                "dlq.topic: must not be empty",
                "dlq.options.\"enable.idempotence\": weir owns this librdkafka option: weir always enables the idempotent producer; remove it",
            ]
        );
        assert!(KafkaDlqConfig::new("b:1", "dead")
            .validate("dlq")
            .is_empty());
    }

    #[test]
    fn headers_carry_every_field_as_text() {
        let letter = DeadLetter {
            pipeline: Arc::from("iot"),
            topic: Arc::from("readings"),
            partition: 3,
            offset: 1234,
            key: None,
            payload: None,
            kind: ErrorKind::InvalidJson,
            message: "expected value".into(),
            stage: Stage::Operator("avg".into()),
            attempts: 2,
            time_ms: 1_700_000_000_123,
            first_failure_ms: 1_700_000_000_001,
        };
        assert_eq!(
            dlq_header_values(&letter),
            [
                ("weir.error.kind", "invalid_json".to_string()),
                ("weir.error.message", "expected value".to_string()),
                ("weir.stage", "operator:avg".to_string()),
                ("weir.source.topic", "readings".to_string()),
                ("weir.source.partition", "3".to_string()),
                ("weir.source.offset", "1234".to_string()),
                ("weir.pipeline", "iot".to_string()),
                ("weir.attempts", "2".to_string()),
                ("weir.time_ms", "1700000000123".to_string()),
                ("weir.dlq.id", letter.id()),
                ("weir.first_failure_ms", "1700000000001".to_string()),
                ("weir.version", "2".to_string()),
            ]
        );
        assert_eq!(stage_text(&Stage::Decode), "decode");
        assert_eq!(stage_text(&Stage::Sink("pg".into())), "sink:pg");
    }

    fn as_map(values: &[(&'static str, String)]) -> HashMap<String, String> {
        values
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn a_message_reads_back_as_the_letter_or_mark_it_was_written_from() {
        let letter = DeadLetter {
            pipeline: Arc::from("iot"),
            topic: Arc::from("readings"),
            partition: 3,
            offset: 1234,
            key: Some(b"k".to_vec()),
            payload: Some(b"{".to_vec()),
            kind: ErrorKind::InvalidJson,
            message: "expected value".into(),
            stage: Stage::Sink("sinks[0]".into()),
            attempts: 2,
            time_ms: 20,
            first_failure_ms: 10,
        };
        let headers = as_map(&dlq_header_values(&letter));
        let back = read_message("dead", 0, 5, Some(b"k"), Some(b"{"), &headers)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, DeadLetterRecord::of_letter(&letter));
        // Version 1: no id, no first failure time.
        let mut v1 = headers.clone();
        v1.remove("weir.dlq.id");
        v1.remove("weir.first_failure_ms");
        let old = read_message("dead", 0, 5, Some(b"k"), Some(b"{"), &v1)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (old.id.as_str(), old.letter.first_failure_ms),
            (letter.id().as_str(), 20)
        );
        let mark = read_message(
            "dead",
            0,
            6,
            None,
            None,
            &as_map(&mark_header_values("iot", &letter.id(), 30)),
        )
        .unwrap()
        .unwrap()
        .unwrap_err();
        assert_eq!(
            mark,
            ReplayMark {
                id: letter.id(),
                time_ms: 30
            }
        );
        assert!(read_message("dead", 0, 7, None, None, &HashMap::new())
            .unwrap()
            .is_none());
        let mut bad = headers;
        bad.insert("weir.attempts".into(), "many".into());
        let e = read_message("dead", 1, 8, None, None, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition 1 offset 8: header weir.attempts: \"many\" is not a number"),
            "{e}"
        );
    }
}
