//! What `weir reset` needs from Kafka besides committing offsets
//! ([`KafkaOffsetCommitter`](super::KafkaOffsetCommitter)): whether the consumer group has
//! members (a running pipeline), and the checkpoints of a pipeline in the checkpoint topic of
//! a transactional sink ([`KafkaTxnStore`](super::KafkaTxnStore)), which a reset replaces by
//! reset markers ([`Checkpoint::reset_marker`]): the store's `load` returns the last record
//! of a key, so a marker produced after a checkpoint replaces it (a tombstone would too, but
//! would lose the epoch, which the pipeline's epoch-numbered outputs need).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir_runtime::checkpoint::{decode, encode};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::Checkpoint;

use super::client::{
    client_config, last_error_suffix, read_topic_to_end, topic_partitions, KafkaContext,
};
use super::{KafkaSinkConfig, KafkaSourceConfig};

fn fail(message: String) -> WeirError {
    WeirError::Config(message)
}

/// The member ids of the source's consumer group (empty: nobody consumes in the group).
/// `Err` when the broker does not answer the question.
pub fn group_members(config: &KafkaSourceConfig) -> Result<Vec<String>> {
    let consumer: BaseConsumer<KafkaContext> = client_config(
        &config.brokers,
        &config.options,
        &[
            ("group.id", "weir-reset-inspector"),
            ("enable.auto.commit", "false"),
        ],
        &[],
    )
    .create_with_context(KafkaContext::default())
    .map_err(|e| fail(format!("cannot create a Kafka client: {e}")))?;
    let group = config.group_id.trim();
    let list = consumer
        .fetch_group_list(Some(group), config.connect_timeout())
        .map_err(|e| {
            fail(format!(
                "cannot describe consumer group {group:?}: {e}{}",
                last_error_suffix(consumer.context())
            ))
        })?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members().iter().map(|m| m.id().to_string()))
        .collect())
}

/// One checkpoint found in a checkpoint topic.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// Partition of the checkpoint topic holding it.
    pub at: i32,
    pub key: String,
    pub checkpoint: Checkpoint,
}

fn checkpoint_topic(sink: &KafkaSinkConfig) -> Result<String> {
    sink.checkpoint_topic
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| fail("the kafka sink has no checkpoint_topic".into()))
}

/// The last committed checkpoint of every key of `pipeline` (`<pipeline>/...`) in the sink's
/// checkpoint topic, read to its end (bounded by the sink's `connect_timeout_ms` per
/// partition). Reset markers are included (a second reset keeps their epoch).
pub fn stored_checkpoints(sink: &KafkaSinkConfig, pipeline: &str) -> Result<Vec<StoredCheckpoint>> {
    let topic = checkpoint_topic(sink)?;
    let wait = Duration::from_millis(sink.connect_timeout_ms);
    let consumer: BaseConsumer<KafkaContext> = client_config(
        &sink.brokers,
        &sink.options,
        &[
            ("group.id", "weir-reset-reader"),
            ("enable.auto.commit", "false"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
        &[],
    )
    .create_with_context(KafkaContext::default())
    .map_err(|e| fail(format!("cannot create a Kafka client: {e}")))?;
    let serve = || {};
    let partitions = topic_partitions(consumer.client(), &serve, &sink.brokers, &topic, wait)
        .map_err(|(m, _)| fail(m))?;
    let prefix = format!("{pipeline}/");
    let mut last: BTreeMap<String, (i32, Option<Vec<u8>>)> = BTreeMap::new();
    read_topic_to_end(
        &consumer,
        &topic,
        &partitions,
        wait,
        "checkpoint topic",
        "kafka",
        &fail,
        |p, m| {
            if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                if key.starts_with(&prefix) {
                    last.insert(key.to_string(), (p, m.payload().map(<[u8]>::to_vec)));
                }
            }
            Ok(())
        },
    )?;
    let mut out = Vec::new();
    for (key, (at, payload)) in last {
        let Some(bytes) = payload else { continue };
        let place = format!("kafka topic {topic} partition {at} key {key}");
        out.push(StoredCheckpoint {
            at,
            checkpoint: decode(&bytes, Path::new(&place))?,
            key,
        });
    }
    Ok(out)
}

/// Produce a reset marker for each checkpoint (same key, same checkpoint-topic partition,
/// same epoch) and wait for every acknowledgement.
pub fn write_reset_markers(sink: &KafkaSinkConfig, stored: &[StoredCheckpoint]) -> Result<()> {
    let topic = checkpoint_topic(sink)?;
    let producer: BaseProducer<KafkaContext> = client_config(
        &sink.brokers,
        &sink.options,
        &[("enable.idempotence", "true")],
        &[],
    )
    .create_with_context(KafkaContext::default())
    .map_err(|e| fail(format!("cannot create a Kafka producer: {e}")))?;
    for s in stored {
        let c = &s.checkpoint;
        let mut marker = Checkpoint::reset_marker(&c.pipeline, &c.topic, c.partition, c.epoch);
        // Whose staged epoch files the next owner's recovery settles (ARCHITECTURE.md,
        // "Reset").
        marker.generation = c.generation;
        let marker = encode(&marker)?;
        let record = BaseRecord::to(&topic)
            .partition(s.at)
            .key(s.key.as_bytes())
            .payload(&marker);
        producer
            .send(record)
            .map_err(|(e, _)| fail(format!("cannot produce the reset marker of {}: {e}", s.key)))?;
    }
    producer
        .flush(Duration::from_millis(sink.connect_timeout_ms.max(1000)))
        .map_err(|e| {
            fail(format!(
                "the reset markers were not acknowledged: {e}{}",
                last_error_suffix(producer.context())
            ))
        })?;
    let failed = producer.context().take_failed();
    if let Some(f) = failed.first() {
        return Err(fail(format!(
            "a reset marker was not delivered to {}: {}",
            f.topic, f.error
        )));
    }
    Ok(())
}
