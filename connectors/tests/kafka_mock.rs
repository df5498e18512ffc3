//! Faults injected with librdkafka's in-process mock cluster (no broker needed): request errors
//! and a broker that goes down and comes back, under the Kafka sink and the Kafka source.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_connectors::kafka::{KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig};
use weir_runtime::arrow::array::{Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{ErrorClass, Lane, PartitionReader, ReadResult, SinkWriter, Source};

const TOPIC: &str = "out";

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 2, 1).expect("create topic");
    cluster
}

fn batch(from: i64, n: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    RecordBatch::try_new(
        schema,
        vec![Arc::new(Int64Array::from(
            (from..from + n).collect::<Vec<_>>(),
        ))],
    )
    .unwrap()
}

/// The `n` values of every message in the topic, sorted (waits up to 20 s for `at_least`).
fn values_in_topic(brokers: &str, at_least: usize) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut values = Vec::new();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(300)) {
            Some(m) => {
                let m = m.unwrap();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                values.push(v["n"].as_i64().unwrap());
            }
            None if values.len() >= at_least => break,
            None => {}
        }
    }
    values.sort_unstable();
    values
}

fn sink(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    options: &[(&str, &str)],
    wait_ms: u64,
) -> KafkaSink {
    let mut config = KafkaSinkConfig::new(cluster.bootstrap_servers(), TOPIC);
    config.connect_timeout_ms = wait_ms;
    config.options = weir_connectors::kafka::KafkaOptions(
        options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    KafkaSink::new("out", &config).unwrap()
}

#[test]
fn produce_request_errors_are_retried_and_every_row_arrives_once() {
    let cluster = cluster();
    let mut sink = sink(&cluster, &[], 2_000);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );
    assert_eq!(
        sink.write(&Lane::new("t", 0), &batch(0, 50))
            .unwrap()
            .accepted,
        50
    );
    sink.prepare(&Lane::new("t", 0), 1)
        .expect("librdkafka retries retriable request errors");
    // The idempotent producer writes each row exactly once despite the retries.
    assert_eq!(
        values_in_topic(&cluster.bootstrap_servers(), 50),
        (0..50).collect::<Vec<_>>()
    );
}

#[test]
fn a_row_too_large_for_kafka_is_rejected_and_the_others_are_written() {
    let cluster = cluster();
    let mut sink = sink(&cluster, &[("message.max.bytes", "1000")], 2_000);
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![0, 1, 2])),
            Arc::new(StringArray::from(vec![
                "small",
                &"x".repeat(5_000),
                "small",
            ])),
        ],
    )
    .unwrap();
    let out = sink.write(&Lane::new("t", 0), &batch).unwrap();
    assert_eq!(out.accepted, 2);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].0, 1, "the large row is the one rejected");
    assert!(
        out.rejected[0].1.contains("too large"),
        "{}",
        out.rejected[0].1
    );
    sink.prepare(&Lane::new("t", 0), 1).unwrap();
    assert_eq!(values_in_topic(&cluster.bootstrap_servers(), 2), [0, 2]);
}

#[test]
fn a_broker_down_makes_prepare_transient_and_nothing_is_lost_once_it_is_back() {
    let cluster = cluster();
    // Deliveries time out (1 s) before one wait for acknowledgements ends (5 s): the failed
    // messages must be kept and sent again.
    let mut sink = sink(
        &cluster,
        &[
            ("message.timeout.ms", "1000"),
            ("reconnect.backoff.max.ms", "300"),
        ],
        5_000,
    );
    cluster.broker_down(1).unwrap();
    assert_eq!(
        sink.write(&Lane::new("t", 0), &batch(0, 30))
            .unwrap()
            .accepted,
        30
    );
    let err = sink
        .prepare(&Lane::new("t", 0), 1)
        .expect_err("the broker is down");
    eprintln!("{err}");
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");

    cluster.broker_up(1).unwrap();
    // What the executor does: retry a transient error until it passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sink.prepare(&Lane::new("t", 0), 1) {
            Ok(()) => break,
            Err(e) if e.class() == ErrorClass::Transient && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => panic!("prepare after the broker came back: {e}"),
        }
    }
    let mut values = values_in_topic(&cluster.bootstrap_servers(), 30);
    values.dedup(); // at-least-once: a row may be written twice, none may be missing
    assert_eq!(values, (0..30).collect::<Vec<_>>());
}

#[test]
fn a_reader_rides_out_a_broker_outage_without_gap_or_duplicate() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.max.ms", "300")
        .create()
        .unwrap();
    let send = |from: i32, to: i32| {
        for i in from..to {
            let payload = format!("{i}");
            producer
                .send(
                    BaseRecord::<(), _>::to(TOPIC)
                        .partition(0)
                        .payload(&payload),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    send(0, 20);
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut config = KafkaSourceConfig::new(brokers, &[TOPIC], "weir");
    config.connect_timeout_ms = 2_000;
    config
        .options
        .insert("reconnect.backoff.max.ms".into(), "300".into());
    let mut source = KafkaSource::new(config).unwrap();
    assert_eq!(source.partitions().unwrap().len(), 2);
    let mut reader = source.open(&Arc::from(TOPIC), 0, 0).unwrap();

    let mut offsets = Vec::new();
    let mut read = |reader: &mut dyn PartitionReader, until: usize, within: Duration| {
        let deadline = Instant::now() + within;
        while offsets.len() < until && Instant::now() < deadline {
            match reader.read(7, Duration::from_millis(100)) {
                Ok(ReadResult::Batch(b)) => offsets.extend(b.messages.iter().map(|m| m.offset)),
                Ok(_) => {}
                Err(e) => panic!("a broker outage is not a reader error: {e}"),
            }
        }
        offsets.clone()
    };
    assert_eq!(read(reader.as_mut(), 20, Duration::from_secs(20)).len(), 20);

    cluster.broker_down(1).unwrap();
    send(20, 40); // queued in the producer until the broker is back
    let during = read(reader.as_mut(), 40, Duration::from_secs(2));
    assert_eq!(
        during.len(),
        20,
        "nothing new can arrive while the broker is down"
    );

    cluster.broker_up(1).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let after = read(reader.as_mut(), 40, Duration::from_secs(30));
    assert_eq!(after, (0..40).collect::<Vec<_>>());
}
