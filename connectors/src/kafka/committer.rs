//! Committing offsets to the consumer group, once a checkpoint is durable (DESIGN.md §4: the
//! checkpoint is the truth, the Kafka commit follows it, so that lag monitoring and other
//! consumers of the group see weir's progress).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::ErrorClass;

use super::client::{last_error_suffix, KafkaContext};
use super::errors::classify;
use super::KafkaSourceConfig;

/// Commits next offsets to the group of a [`KafkaSourceConfig`], synchronously.
pub struct KafkaOffsetCommitter {
    consumer: Arc<BaseConsumer<KafkaContext>>,
    name: String,
    timeout: Duration,
    /// The consumer is this committer's own (not a source's, whose readers serve its queue).
    own: bool,
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
        let mut this = Self::from_consumer(config.consumer(&name)?, name, config.connect_timeout());
        this.own = true;
        Ok(this)
    }

    pub(crate) fn from_consumer(
        consumer: Arc<BaseConsumer<KafkaContext>>,
        name: String,
        timeout: Duration,
    ) -> Self {
        Self {
            consumer,
            name,
            timeout,
            own: false,
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
    /// one partition, and wait for the group coordinator's answer.
    pub fn commit(&self, topic: &str, partition: i32, next_offset: i64) -> Result<()> {
        if next_offset < 0 {
            return Err(self.error(
                format!("cannot commit the negative offset {next_offset} for {topic}/{partition}"),
                ErrorClass::Fatal,
            ));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(next_offset))
            .map_err(|e| self.error(format!("{topic}/{partition}: {e}"), classify(&e)))?;
        self.consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
            self.error(
                format!(
                    "cannot commit offset {next_offset} of {topic}/{partition}: {e}{}",
                    last_error_suffix(self.consumer.context())
                ),
                classify(&e),
            )
        })?;
        // A per-partition error comes back in the list, not as the call's result.
        for elem in tpl.elements() {
            if let Err(e) = elem.error() {
                return Err(self.error(
                    format!("cannot commit offset {next_offset} of {topic}/{partition}: {e}"),
                    classify(&e),
                ));
            }
        }
        Ok(())
    }

    /// The group's committed next offset of one partition, `None` when there is none.
    pub fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let result = self.consumer.committed_offsets(tpl, self.timeout);
        self.serve();
        let got = result.map_err(|e| {
            self.error(
                format!(
                    "cannot read the committed offset of {topic}/{partition} within {} ms: {e}{}",
                    self.timeout.as_millis(),
                    last_error_suffix(self.consumer.context())
                ),
                classify(&e),
            )
        })?;
        match got.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(n)) => Ok(Some(n)),
            _ => Ok(None),
        }
    }
}
