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
//! | `weir.time_ms` | when it was dead-lettered, epoch millis |
//!
//! Every value is UTF-8 text (numbers in decimal). `prepare` returns once every dead letter
//! written so far is acknowledged by the broker: an offset is never committed before its dead
//! letters are durable. At-least-once: after a crash, dead letters since the last checkpoint
//! are written again.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use serde::Deserialize;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{DeadLetter, DlqWriter, ErrorClass, Lane, Stage};

use super::client::{check_brokers_and_timeout, reject_owned_options, KafkaOptions};
use super::producer::{ConfirmedProducer, Refused, PRODUCER_OWNED};
use super::source::default_connect_timeout_ms;
use crate::config_key;

/// Header names of a dead letter, in the order they are written.
pub const DLQ_HEADERS: [&str; 10] = [
    "weir.error.kind",
    "weir.error.message",
    "weir.stage",
    "weir.source.topic",
    "weir.source.partition",
    "weir.source.offset",
    "weir.pipeline",
    "weir.attempts",
    "weir.time_ms",
    "weir.version",
];

/// Configuration of the `kafka` dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
        Ok(Self { name, producer })
    }
}

/// The text of a stage in the `weir.stage` header.
pub fn stage_text(stage: &Stage) -> String {
    match stage {
        Stage::Decode => "decode".to_string(),
        Stage::Operator(id) => format!("operator:{id}"),
        Stage::Sink(id) => format!("sink:{id}"),
    }
}

/// The headers of one dead letter, as (name, value) in [`DLQ_HEADERS`] order.
pub fn dlq_header_values(letter: &DeadLetter) -> [(&'static str, String); 10] {
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
        "1".to_string(),
    ];
    let mut i = 0;
    values.map(|v| {
        let name = DLQ_HEADERS[i];
        i += 1;
        (name, v)
    })
}

fn headers(letter: &DeadLetter) -> OwnedHeaders {
    dlq_header_values(letter).iter().fold(
        OwnedHeaders::new_with_capacity(DLQ_HEADERS.len()),
        |h, (name, value)| {
            h.insert(Header {
                key: name,
                value: Some(value.as_str()),
            })
        },
    )
}

impl EpochParticipant for KafkaDlq {
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
        self.producer.confirm()
    }
}

impl DlqWriter for KafkaDlq {
    fn write(&mut self, _lane: &Lane, letters: &[DeadLetter]) -> Result<()> {
        for letter in letters {
            match self.producer.send(
                letter.key.as_deref(),
                letter.payload.as_deref(),
                Some(headers(letter)),
            ) {
                Ok(()) => {}
                Err(Ok(Refused(e))) => {
                    return Err(WeirError::Sink {
                        sink: self.name.clone(),
                        message: format!(
                            "the dead letter of {}/{} at offset {} was refused by Kafka: {e} \
                             (is the DLQ topic's max.message.bytes smaller than the source's?)",
                            letter.topic, letter.partition, letter.offset
                        ),
                        class: ErrorClass::Fatal,
                    })
                }
                Err(Err(e)) => return Err(e),
            }
        }
        self.producer.poll();
        Ok(())
    }
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
            first_failure_ms: 1_700_000_000_123,
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
                ("weir.version", "1".to_string()),
            ]
        );
        assert_eq!(stage_text(&Stage::Decode), "decode");
        assert_eq!(stage_text(&Stage::Sink("pg".into())), "sink:pg");
    }
}
