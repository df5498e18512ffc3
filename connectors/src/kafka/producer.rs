//! An idempotent producer whose `confirm` returns only when every message sent so far is
//! acknowledged by the broker: what the sink's and the DLQ's `prepare` need.
//!
//! A message whose delivery fails with a transient error (its `message.timeout.ms` ran out
//! while the broker was away) is kept and sent again, and `confirm` returns a transient error
//! so that the executor calls it again: nothing is lost, and at-least-once holds (a message
//! sent again may be written twice, and after the ones sent later). A permanent delivery
//! error is fatal: the checkpoint is not stored, and its input is replayed after the restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::ErrorClass;

use super::client::{
    client_config, last_error_suffix, topic_partitions, KafkaContext, OwnedOption,
};
use super::errors::classify;

/// Options of every producer that weir sets itself.
pub(crate) const PRODUCER_OWNED: &[OwnedOption] = &[
    OwnedOption {
        key: "bootstrap.servers",
        why: "set `brokers` instead",
    },
    OwnedOption {
        key: "metadata.broker.list",
        why: "set `brokers` instead",
    },
    OwnedOption {
        key: "enable.idempotence",
        why: "weir always enables the idempotent producer; remove it",
    },
    OwnedOption {
        key: "transactional.id",
        why: "set `transactional_id` instead",
    },
];

/// A record refused for what it is (too large, invalid): the caller dead-letters it.
#[derive(Debug)]
pub(crate) struct Refused(pub KafkaError);

pub(crate) struct ConfirmedProducer {
    producer: BaseProducer<KafkaContext>,
    /// Names the component in errors: "kafka sink x", "kafka dlq y".
    name: String,
    brokers: String,
    topic: String,
    /// How long one `confirm` or one blocked `send` waits at most before a transient error.
    wait: Duration,
}

impl ConfirmedProducer {
    /// Builds the producer and checks, within `wait`, that the brokers answer and `topic`
    /// exists: a sink to nowhere fails at start, not at the first checkpoint.
    pub fn connect(
        name: String,
        brokers: &str,
        topic: &str,
        options: &BTreeMap<String, String>,
        wait: Duration,
    ) -> Result<Self> {
        let config = client_config(
            brokers,
            options,
            &[("enable.idempotence", "true")],
            // murmur2 on the key: the partition a Java client would choose for the same key.
            // No auto-creation: a misspelt topic is an error at start, not a new topic.
            &[
                ("partitioner", "murmur2_random"),
                ("linger.ms", "5"),
                ("allow.auto.create.topics", "false"),
            ],
        );
        let producer: BaseProducer<KafkaContext> = config
            .create_with_context(KafkaContext::default())
            .map_err(|e| fatal(&name, format!("cannot create the Kafka producer: {e}")))?;
        let this = Self {
            producer,
            name,
            brokers: brokers.trim().to_string(),
            topic: topic.to_string(),
            wait,
        };
        let serve = || this.producer.poll(Duration::ZERO);
        topic_partitions(this.producer.client(), &serve, &this.brokers, topic, wait).map_err(
            |(message, class)| WeirError::Sink {
                sink: this.name.clone(),
                message,
                class,
            },
        )?;
        Ok(this)
    }

    fn error(&self, message: String, class: ErrorClass) -> WeirError {
        WeirError::Sink {
            sink: self.name.clone(),
            message,
            class,
        }
    }

    /// Queue one message. `Err(Ok(Refused))` when the record itself is refused (the caller
    /// dead-letters it); `Err(Err(_))` for every other error, classified.
    pub fn send(
        &self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> std::result::Result<(), std::result::Result<Refused, WeirError>> {
        send_to(self, &self.topic, key, payload, headers)
    }

    /// Serve delivery reports that are ready, without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Wait until every message sent so far is acknowledged, at most `wait`. See the module
    /// docs for what happens to failed deliveries.
    pub fn confirm(&self) -> Result<()> {
        if let Err(e) = self.producer.flush(self.wait) {
            let pending = self.producer.in_flight_count();
            return Err(self.error(
                format!(
                    "{pending} message(s) to topic {:?} not yet acknowledged after {} ms: {e}{}",
                    self.topic,
                    self.wait.as_millis(),
                    last_error_suffix(self.producer.context())
                ),
                classify(&e),
            ));
        }
        let failed = self.producer.context().take_failed();
        let Some(first) = failed.first() else {
            return Ok(());
        };
        let summary = format!(
            "{} message(s) to topic {:?} failed delivery, the first with: {}{}",
            failed.len(),
            first.topic,
            first.error,
            last_error_suffix(self.producer.context())
        );
        if let Some(permanent) = failed
            .iter()
            .find(|f| classify(&f.error) != ErrorClass::Transient)
        {
            return Err(self.error(
                format!("{summary}; permanent error: {}", permanent.error),
                ErrorClass::Fatal,
            ));
        }
        let count = failed.len();
        for f in failed {
            match send_to(
                self,
                &f.topic,
                f.key.as_deref(),
                f.payload.as_deref(),
                f.headers,
            ) {
                Ok(()) => {}
                Err(Ok(Refused(e))) => {
                    return Err(self.error(
                        format!("{summary}; sending again refused a record: {e}"),
                        ErrorClass::Fatal,
                    ))
                }
                Err(Err(e)) => return Err(e),
            }
        }
        Err(self.error(
            format!("{summary}; the {count} message(s) were sent again"),
            ErrorClass::Transient,
        ))
    }
}

fn fatal(name: &str, message: String) -> WeirError {
    WeirError::Sink {
        sink: name.to_string(),
        message,
        class: ErrorClass::Fatal,
    }
}

fn send_to(
    p: &ConfirmedProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> std::result::Result<(), std::result::Result<Refused, WeirError>> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = payload {
        record = record.payload(v);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    send_waiting(&p.producer, record, p.wait).map_err(|e| match classify(&e) {
        ErrorClass::Data => Ok(Refused(e)),
        // Only a transactional producer is fenced, and this one is not (txn.rs is).
        ErrorClass::Fenced => Err(p.error(
            format!("cannot send to topic {topic:?}: {e}"),
            ErrorClass::Fatal,
        )),
        class => Err(p.error(
            format!(
                "cannot send to topic {topic:?}: {e}{}",
                last_error_suffix(p.producer.context())
            ),
            class,
        )),
    })
}

/// Queue `record`; while librdkafka's local queue is full, serve delivery reports to make
/// room, for at most `wait`. The error of the last attempt otherwise.
pub(crate) fn send_waiting(
    producer: &BaseProducer<KafkaContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
    wait: Duration,
) -> std::result::Result<(), KafkaError> {
    let started = Instant::now();
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if started.elapsed() < wait =>
            {
                record = r;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
