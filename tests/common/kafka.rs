//! Kafka helpers of the end-to-end tests: the test broker (Apache Kafka, or tansu with
//! `WEIR_TEST_BROKER=tansu`, from `scripts/kafka.sh`),
//! topics, and the generator's events produced partition by partition.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir::connectors::EventGenerator;

pub fn brokers() -> String {
    std::env::var("WEIR_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("WEIR_KAFKA_BROKERS is not set: start the test broker with `eval \"$(scripts/kafka.sh start | sed 's/^/export /')\"` (scripts/test.sh does it)")
    })
}

pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

pub fn create_topic(partitions: i32) -> String {
    let topic = unique("weir-pipeline");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        ))
        .unwrap();
    for r in results {
        match r {
            // The name is this call's own: a create that librdkafka retried after a slow
            // broker's first answer finds the topic it made.
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            r => {
                r.unwrap();
            }
        }
    }
    topic
}

pub const FLUSH_TIME: i64 = 4_000_000_000_000;

/// Generator partition p goes to topic partition p, in offset order; then one event far in the
/// future per partition, which advances the watermark past every real window.
pub fn produce(topic: &str, truth: &EventGenerator, partitions: i32) -> u64 {
    produce_part(topic, truth, partitions, (0, 1), true)
}

/// The `part.0`-th of `part.1` equal slices of every partition's events, and the flush event
/// after the last slice when `flush`.
pub fn produce_part(
    topic: &str,
    truth: &EventGenerator,
    partitions: i32,
    part: (usize, usize),
    flush: bool,
) -> u64 {
    produce_tagged(topic, truth, partitions, part, flush, "")
}

/// `tag` + a generated sensor id or event id: the ids of the events [`produce_tagged`] writes
/// with `tag` (so that two topics produced from equal generators hold disjoint keys).
pub fn tagged(tag: &str, id: &str) -> String {
    format!("{tag}{id}")
}

/// [`produce_part`], with every sensor id (key and field) and event id prefixed by `tag`
/// (the flush event's are not).
pub fn produce_tagged(
    topic: &str,
    truth: &EventGenerator,
    partitions: i32,
    part: (usize, usize),
    flush: bool,
    tag: &str,
) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sent = 0;
    for p in 0..partitions {
        let n = truth.events_in_partition(p).unwrap() as usize;
        let (from, to) = (n * part.0 / part.1, n * (part.0 + 1) / part.1);
        let mut msgs = truth.messages(p, from as i64, to - from);
        if !tag.is_empty() {
            for m in &mut msgs {
                let retag = |bytes: &[u8]| {
                    String::from_utf8_lossy(bytes)
                        .replace("\"sensor-", &format!("\"{tag}sensor-"))
                        .replace("\"event_id\":\"", &format!("\"event_id\":\"{tag}"))
                        .into_bytes()
                };
                m.key = m
                    .key
                    .as_ref()
                    .map(|k| tagged(tag, &String::from_utf8_lossy(k)).into_bytes());
                m.payload = m.payload.as_deref().map(retag);
            }
        }
        if flush && to == n {
            msgs.push(weir_runtime::RawMessage {
                offset: n as i64,
                key: Some(b"__flush".to_vec()),
                payload: Some(format!(r#"{{"event_id":"flush","sensor_id":"__flush","temperature":0,"humidity":0,"event_time":{FLUSH_TIME}}}"#).into_bytes()),
                timestamp_ms: None,
                headers: Vec::new(),
            });
        }
        for m in &msgs {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(p);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &m.payload {
                record = record.payload(v.as_slice());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    sent
}

/// Whether the test broker is Apache Kafka (`scripts/kafka.sh start` prints which broker it
/// started as `WEIR_TEST_BROKER`; the default is Apache Kafka), not tansu. Only Apache Kafka
/// hides the records of aborted transactions from `read_committed` readers, so that
/// exactly-once output can be checked exactly (ARCHITECTURE.md, "Checkpoint protocol"), and
/// serves KIP-848's consumer group protocol.
pub fn broker_is_apache_kafka() -> bool {
    std::env::var("WEIR_TEST_BROKER").map_or(true, |b| b != "tansu")
}

/// Every payload of `topic` read at `isolation` (`read_committed` or `read_uncommitted`);
/// reads until `at_least` arrived and a second passed without one, for at most `within`.
pub fn read_payloads(
    topic: &str,
    partitions: i32,
    at_least: usize,
    isolation: &str,
    within: Duration,
) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + within;
    let mut out = Vec::new();
    let mut quiet = 0;
    while std::time::Instant::now() < deadline && (out.len() < at_least || quiet < 5) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(m) => {
                quiet = 0;
                let m = m.unwrap();
                if let Some(payload) = m.payload() {
                    out.push(payload.to_vec());
                }
            }
            None => quiet += 1,
        }
    }
    out
}
