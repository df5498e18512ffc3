//! The Kafka source, sink, DLQ and committer against a real Kafka-protocol broker.
//!
//! The broker's address comes from `WEIR_KAFKA_BROKERS`; start one with
//! `eval "$(scripts/kafka.sh start | sed "s/^/export /")"` (and `scripts/kafka.sh stop`
//! afterwards). Without it these tests fail: a skipped test would look like a passing one. Every test uses its own topics
//! and group.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::block_on;
use weir_connectors::kafka::{
    read_dlq_topic, KafkaDlq, KafkaDlqConfig, KafkaOffsetCommitter, KafkaSink, KafkaSinkConfig,
    KafkaSource, KafkaSourceConfig, DLQ_HEADERS,
};
use weir_connectors::DeadLetterRecord;
use weir_runtime::arrow::array::{Float64Array, Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::sink::EpochParticipant;
use weir_runtime::{
    DeadLetter, DlqWriter, ErrorKind, Lane, PartitionReader, RawMessage, ReadResult, SinkWriter,
    Source, Stage, OFFSET_COLUMN,
};

// ---------------------------------------------------------------------------------------------
// Support

fn brokers() -> String {
    match std::env::var("WEIR_KAFKA_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "WEIR_KAFKA_BROKERS is not set: these tests need a Kafka-protocol broker. Start one \
             with `export \"$(scripts/kafka.sh start)\"` from the workspace root (it prints \
             WEIR_KAFKA_BROKERS=127.0.0.1:PORT, also in .services/kafka.env), run the tests, \
             then `scripts/kafka.sh stop`."
        ),
    }
}

/// A name no other test (or earlier run against the same broker) uses.
fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "weir-{what}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn create_topic(partitions: i32) -> String {
    let name = unique("t");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = block_on(admin.create_topics(
        &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
        &options,
    ))
    .expect("create topic");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    name
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

/// One produced message: explicit partition, key, payload and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Produced {
    partition: i32,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: i64,
}

fn produce(topic: &str, messages: &[Produced]) {
    let p = producer();
    for m in messages {
        let mut r: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(m.partition)
            .timestamp(m.timestamp_ms);
        if let Some(k) = &m.key {
            r = r.key(k);
        }
        if let Some(v) = &m.payload {
            r = r.payload(v);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

fn source_config(topics: &[&str], group: &str) -> KafkaSourceConfig {
    let mut c = KafkaSourceConfig::new(brokers(), topics, group);
    c.connect_timeout_ms = 5_000;
    c
}

/// Reads until `n` messages came, failing after 20 s.
fn read_n(reader: &mut dyn PartitionReader, n: usize) -> Vec<RawMessage> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages arrived: {out:?}",
            out.len()
        );
        match reader
            .read(n - out.len(), Duration::from_millis(200))
            .expect("read")
        {
            ReadResult::Batch(b) => out.extend(b.messages),
            ReadResult::Idle => {}
            ReadResult::End => panic!("a Kafka partition never ends"),
        }
    }
    out
}

/// Every message of `topic` from the beginning, waiting until `n` came (at most 20 s).
fn consume_all(topic: &str, partitions: i32, n: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("check"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.expect("consume").detach());
        }
    }
    assert_eq!(out.len(), n, "messages of {topic}");
    // Nothing more than expected.
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    out
}

// ---------------------------------------------------------------------------------------------
// Source

#[test]
fn readers_return_every_message_of_their_partition_in_offset_order_with_original_bytes() {
    let topic = create_topic(3);
    let mut produced = Vec::new();
    for i in 0..30i64 {
        let partition = (i % 3) as i32;
        let payload = match i {
            4 => None,                               // a tombstone
            7 => Some(vec![0xff, 0xfe, 0x00, 0x80]), // not UTF-8
            10 => Some(Vec::new()),                  // empty, not null
            _ => Some(format!("{{\"i\":{i}}}").into_bytes()),
        };
        let key = match i {
            5 => None,
            8 => Some(vec![0xc3, 0x28]),
            _ => Some(format!("k{i}").into_bytes()),
        };
        produced.push(Produced {
            partition,
            key,
            payload,
            timestamp_ms: 1_700_000_000_000 + i,
        });
    }
    produce(&topic, &produced);

    let mut source = KafkaSource::new(source_config(&[&topic], &unique("g"))).unwrap();
    let partitions = source.partitions().unwrap();
    let t: Arc<str> = Arc::from(topic.as_str());
    assert_eq!(partitions, [(t.clone(), 0), (t.clone(), 1), (t.clone(), 2)]);
    for (topic, p) in &partitions {
        let expected: Vec<&Produced> = produced.iter().filter(|m| m.partition == *p).collect();
        let mut reader = source.open(topic, *p, 0).unwrap();
        let got = read_n(reader.as_mut(), expected.len());
        let offsets: Vec<i64> = got.iter().map(|m| m.offset).collect();
        assert_eq!(
            offsets,
            (0..expected.len() as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.key, e.key, "partition {p} offset {}", g.offset);
            assert_eq!(g.payload, e.payload, "partition {p} offset {}", g.offset);
            assert_eq!(g.timestamp_ms, Some(e.timestamp_ms));
        }
        // Nothing more: idle within about the linger time.
        let started = Instant::now();
        let r = reader.read(100, Duration::from_millis(300)).unwrap();
        assert!(matches!(r, ReadResult::Idle), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[test]
fn a_batch_holds_at_most_max_rows_and_the_rest_follows_in_order() {
    let topic = create_topic(1);
    let produced: Vec<Produced> = (0..25)
        .map(|i| Produced {
            partition: 0,
            key: None,
            payload: Some(vec![i as u8]),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    produce(&topic, &produced);
    let mut source = KafkaSource::new(source_config(&[&topic], &unique("g"))).unwrap();
    source.partitions().unwrap();
    let mut reader = source.open(&Arc::from(topic.as_str()), 0, 0).unwrap();
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while all.len() < 25 && Instant::now() < deadline {
        if let ReadResult::Batch(b) = reader.read(10, Duration::from_millis(500)).unwrap() {
            assert!(b.len() <= 10, "batch of {}", b.len());
            all.extend(b.messages);
        }
    }
    let payloads: Vec<u8> = all.iter().map(|m| m.payload.as_ref().unwrap()[0]).collect();
    assert_eq!(payloads, (0..25u8).collect::<Vec<_>>());
}

#[test]
fn a_reader_resumes_at_its_next_offset() {
    let topic = create_topic(1);
    let produced: Vec<Produced> = (0..10)
        .map(|i| Produced {
            partition: 0,
            key: Some(vec![b'k']),
            payload: Some(format!("m{i}").into_bytes()),
            timestamp_ms: 1_700_000_000_000 + i,
        })
        .collect();
    produce(&topic, &produced);
    let t: Arc<str> = Arc::from(topic.as_str());
    let mut source = KafkaSource::new(source_config(&[&topic], &unique("g"))).unwrap();
    source.partitions().unwrap();
    for from in [4i64, 9, 1] {
        let mut reader = source.open(&t, 0, from).unwrap();
        let got = read_n(reader.as_mut(), (10 - from) as usize);
        assert_eq!(
            got.iter().map(|m| m.offset).collect::<Vec<_>>(),
            (from..10).collect::<Vec<_>>()
        );
        assert_eq!(
            got[0].payload.as_deref(),
            Some(format!("m{from}").as_bytes())
        );
        // Dropping the reader unassigns the partition, so it can be opened again.
    }
}

#[test]
fn a_paused_partition_is_not_fetched_and_resumes_where_it_stopped() {
    let topic = create_topic(1);
    let t: Arc<str> = Arc::from(topic.as_str());
    let mut source = KafkaSource::new(source_config(&[&topic], &unique("g"))).unwrap();
    source.partitions().unwrap();
    let mut reader = source.open(&t, 0, 0).unwrap();
    let messages = |range: std::ops::Range<i64>| -> Vec<Produced> {
        range
            .map(|i| Produced {
                partition: 0,
                key: None,
                payload: Some(format!("m{i}").into_bytes()),
                timestamp_ms: 1_700_000_000_000 + i,
            })
            .collect()
    };
    produce(&topic, &messages(0..3));
    assert_eq!(read_n(reader.as_mut(), 3).len(), 3);

    reader.set_paused(true).unwrap();
    produce(&topic, &messages(3..10));
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        match reader.read(100, Duration::from_millis(100)).unwrap() {
            ReadResult::Idle => {}
            other => panic!("a paused partition returned {other:?}"),
        }
    }
    reader.set_paused(false).unwrap();
    let got = read_n(reader.as_mut(), 7);
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        (3..10).collect::<Vec<_>>()
    );
}

#[test]
fn an_unreachable_broker_is_an_error_naming_it_within_the_timeout() {
    let mut config = KafkaSourceConfig::new("127.0.0.1:1", &["anything"], "g");
    config.connect_timeout_ms = 2_000;
    let started = Instant::now();
    let mut source = KafkaSource::new(config).unwrap();
    let err = source.partitions().unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(text.contains("2000 ms"), "{text}");

    let mut sink = KafkaSinkConfig::new("127.0.0.1:1", "anything");
    sink.connect_timeout_ms = 2_000;
    let started = Instant::now();
    let err = KafkaSink::new("out", &sink).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn a_missing_topic_is_an_error_naming_it() {
    let missing = unique("missing");
    let started = Instant::now();
    let mut source = KafkaSource::new(source_config(&[&missing], &unique("g"))).unwrap();
    let err = source.partitions().unwrap_err().to_string();
    eprintln!("{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );

    let mut sink = KafkaSinkConfig::new(brokers(), missing.clone());
    sink.connect_timeout_ms = 5_000;
    let err = KafkaSink::new("out", &sink).unwrap_err().to_string();
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );

    let mut dlq = KafkaDlqConfig::new(brokers(), missing.clone());
    dlq.connect_timeout_ms = 5_000;
    let err = KafkaDlq::new(&dlq).unwrap_err().to_string();
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Committer

#[test]
fn a_committed_offset_is_where_a_reader_without_checkpoint_starts_and_a_checkpoint_wins() {
    let topic = create_topic(2);
    let produced: Vec<Produced> = (0..20)
        .map(|i| Produced {
            partition: (i % 2) as i32,
            key: None,
            payload: Some(format!("m{i}").into_bytes()),
            timestamp_ms: 1_700_000_000_000 + i,
        })
        .collect();
    produce(&topic, &produced);
    let group = unique("g");
    let t: Arc<str> = Arc::from(topic.as_str());

    let committer = KafkaOffsetCommitter::new(&source_config(&[&topic], &group)).unwrap();
    assert_eq!(committer.committed(&topic, 0).unwrap(), None);
    committer.commit(&topic, 0, 6).unwrap();
    committer.commit(&topic, 1, 9).unwrap();
    assert_eq!(committer.committed(&topic, 0).unwrap(), Some(6));
    assert_eq!(committer.committed(&topic, 1).unwrap(), Some(9));
    // A commit never moves it backwards; only an explicit reset does.
    committer.commit(&topic, 1, 8).unwrap();
    assert_eq!(committer.committed(&topic, 1).unwrap(), Some(9));
    committer.reset(&[(&topic, 1, 8)]).unwrap();
    assert_eq!(committer.committed(&topic, 1).unwrap(), Some(8));

    // A new consumer of the group, without checkpoint (next_offset 0), starts there.
    let mut source = KafkaSource::new(source_config(&[&topic], &group)).unwrap();
    source.partitions().unwrap();
    let mut r0 = source.open(&t, 0, 0).unwrap();
    let got = read_n(r0.as_mut(), 4);
    assert_eq!(
        got.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    let mut r1 = source.open(&t, 1, 0).unwrap();
    assert_eq!(read_n(r1.as_mut(), 2)[0].offset, 8);
    drop(r0);
    // A checkpoint's offset wins over the group's.
    let mut r0 = source.open(&t, 0, 2).unwrap();
    assert_eq!(read_n(r0.as_mut(), 8)[0].offset, 2);

    // The source's own committer commits as the same group.
    source.committer().commit(&topic, 0, 10).unwrap();
    assert_eq!(committer.committed(&topic, 0).unwrap(), Some(10));

    // A group without commits starts at the beginning (auto.offset.reset=earliest).
    let mut fresh = KafkaSource::new(source_config(&[&topic], &unique("g"))).unwrap();
    fresh.partitions().unwrap();
    let mut r = fresh.open(&t, 1, 0).unwrap();
    assert_eq!(read_n(r.as_mut(), 10)[0].offset, 0);
}

#[test]
fn a_committer_rejects_a_negative_offset() {
    let topic = create_topic(1);
    let committer = KafkaOffsetCommitter::new(&source_config(&[&topic], &unique("g"))).unwrap();
    let err = committer.commit(&topic, 0, -1).unwrap_err().to_string();
    assert!(err.contains("negative offset -1"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Sink

fn output_batch(ids: &[Option<&str>], avgs: &[f64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sensor_id", DataType::Utf8, true),
        Field::new("avg", DataType::Float64, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids.to_vec())),
            Arc::new(Float64Array::from(avgs.to_vec())),
            Arc::new(Int64Array::from((0..ids.len() as i64).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

#[test]
fn sink_rows_come_back_as_json_messages_keyed_by_the_column() {
    let topic = create_topic(3);
    let mut config = KafkaSinkConfig::new(brokers(), topic.clone());
    config.key_column = Some("sensor_id".into());
    config.connect_timeout_ms = 5_000;
    let mut sink = KafkaSink::new("out", &config).unwrap();
    assert_eq!(sink.guarantee(), weir_runtime::Guarantee::AtLeastOnce);

    let ids: Vec<Option<String>> = (0..40)
        .map(|i| (i != 7).then(|| format!("sensor-{}", i % 5)))
        .collect();
    let id_refs: Vec<Option<&str>> = ids.iter().map(|s| s.as_deref()).collect();
    let avgs: Vec<f64> = (0..40).map(|i| i as f64 / 2.0).collect();
    let batch = output_batch(&id_refs[..25], &avgs[..25]);
    let out = sink.write(&Lane::new("t", 0), &batch).unwrap();
    assert_eq!((out.accepted, out.rejected.len()), (25, 0));
    let out = sink
        .write(
            &Lane::new("t", 1),
            &output_batch(&id_refs[25..], &avgs[25..]),
        )
        .unwrap();
    assert_eq!(out.accepted, 15);
    sink.prepare(&Lane::new("t", 0), 1).unwrap();
    sink.commit(&Lane::new("t", 0), 1).unwrap();

    let messages = consume_all(&topic, 3, 40);
    let mut rows: Vec<(Option<String>, serde_json::Value, i32)> = messages
        .iter()
        .map(|m| {
            let key = m.key().map(|k| String::from_utf8(k.to_vec()).unwrap());
            let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            (key, value, m.partition())
        })
        .collect();
    rows.sort_by(|a, b| {
        a.1["avg"]
            .as_f64()
            .partial_cmp(&b.1["avg"].as_f64())
            .unwrap()
    });
    let mut partition_of_key: BTreeMap<String, i32> = BTreeMap::new();
    for (i, (key, value, partition)) in rows.iter().enumerate() {
        let object = value.as_object().unwrap();
        assert!(!object.contains_key(OFFSET_COLUMN), "{value}");
        assert_eq!(value["avg"].as_f64(), Some(i as f64 / 2.0));
        assert_eq!(key.as_deref(), ids[i].as_deref(), "row {i}");
        assert_eq!(
            value.get("sensor_id").and_then(|v| v.as_str()),
            ids[i].as_deref()
        );
        if let Some(k) = key {
            let p = *partition_of_key.entry(k.clone()).or_insert(*partition);
            assert_eq!(p, *partition, "one key, one partition");
        }
    }
}

#[test]
fn deleted_rows_become_tombstones_of_their_key() {
    let topic = create_topic(1);
    let mut config = KafkaSinkConfig::new(brokers(), topic.clone());
    config.key_column = Some("sensor_id".into());
    config.connect_timeout_ms = 5_000;
    let mut sink = KafkaSink::new("out", &config).unwrap();
    let rows = output_batch(&[Some("a"), Some("b"), Some("c")], &[1.0, 2.0, 3.0]);
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(weir_runtime::arrow::array::BooleanArray::from(
        vec![Some(false), Some(true), None],
    )));
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        weir_runtime::DELETED_COLUMN,
        DataType::Boolean,
        true,
    ));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    assert_eq!(sink.write(&Lane::new("t", 0), &batch).unwrap().accepted, 3);
    sink.prepare(&Lane::new("t", 0), 1).unwrap();

    let messages = consume_all(&topic, 1, 3);
    let got: Vec<(Vec<u8>, Option<serde_json::Value>)> = messages
        .iter()
        .map(|m| {
            let value = m.payload().map(|p| serde_json::from_slice(p).unwrap());
            (m.key().unwrap().to_vec(), value)
        })
        .collect();
    assert_eq!(got[1], (b"b".to_vec(), None), "b is a tombstone");
    for (i, key) in [(0, "a"), (2, "c")] {
        let value = got[i].1.as_ref().unwrap();
        assert_eq!(got[i].0, key.as_bytes());
        assert!(value.get(weir_runtime::DELETED_COLUMN).is_none(), "{value}");
    }

    // Without a key there is nothing to delete: an error, not a silent upsert.
    let mut unkeyed = KafkaSink::new(
        "out",
        &KafkaSinkConfig {
            key_column: None,
            ..config
        },
    )
    .unwrap();
    let err = unkeyed
        .write(&Lane::new("t", 0), &batch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 1 deletes its key"), "{err}");
}

#[test]
fn a_key_column_that_is_not_in_the_output_is_a_clear_error() {
    let topic = create_topic(1);
    let mut config = KafkaSinkConfig::new(brokers(), topic);
    config.key_column = Some("device".into());
    let mut sink = KafkaSink::new("out", &config).unwrap();
    let err = sink
        .write(&Lane::new("t", 0), &output_batch(&[Some("a")], &[1.0]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"device\"") && err.contains("sensor_id"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// DLQ

#[test]
fn a_dlq_topic_reads_back_one_record_per_id_with_replay_marks_applied() {
    let topic = create_topic(2);
    let mut config = KafkaDlqConfig::new(brokers(), topic.clone());
    config.connect_timeout_ms = 10_000;
    let mut dlq = KafkaDlq::for_pipeline(&config, "iot").unwrap();
    let letter = |offset: i64, time_ms: i64| DeadLetter {
        pipeline: Arc::from("iot"),
        topic: Arc::from("readings"),
        partition: 1,
        offset,
        key: Some(format!("k{offset}").into_bytes()),
        payload: Some(vec![0xff, offset as u8]),
        kind: ErrorKind::WrongType,
        message: format!("field `x` at {offset}"),
        stage: Stage::Decode,
        attempts: 1,
        time_ms,
        first_failure_ms: time_ms,
    };
    let lane = Lane::new("readings", 1);
    // Written twice (at-least-once: a rerun after a crash), then a replay marks offset 1 and
    // offset 2 fails again.
    let (a, b) = (letter(1, 1_000), letter(2, 1_000));
    dlq.write(&lane, &[a.clone(), b.clone()]).unwrap();
    dlq.write(&lane, std::slice::from_ref(&a)).unwrap();
    dlq.prepare(&lane, 1).unwrap();
    dlq.commit(&lane, 1).unwrap();
    let mut b2 = letter(2, 2_000);
    b2.attempts = 2;
    b2.first_failure_ms = 1_000;
    dlq.write(&lane, &[b2.clone()]).unwrap();
    dlq.mark_replayed(&lane, &[a.id()]).unwrap();
    dlq.prepare(&lane, 2).unwrap();
    let before = read_dlq_topic(&config).unwrap();
    assert!(
        before.iter().all(|r| r.replayed_ms.is_none()),
        "marks are sent at commit: {before:?}"
    );
    dlq.commit(&lane, 2).unwrap();
    let back = read_dlq_topic(&config).unwrap();
    assert_eq!(back.len(), 2, "{back:?}");
    let got_a = back.iter().find(|r| r.id == a.id()).unwrap();
    assert!(got_a.replayed_ms.is_some());
    assert_eq!(
        DeadLetterRecord {
            replayed_ms: None,
            ..got_a.clone()
        },
        DeadLetterRecord::of_letter(&a)
    );
    let got_b = back.iter().find(|r| r.id == b.id()).unwrap();
    assert_eq!(got_b, &DeadLetterRecord::of_letter(&b2));
}

#[test]
fn dead_letters_come_back_with_original_key_payload_and_headers() {
    let topic = create_topic(1);
    let mut config = KafkaDlqConfig::new(brokers(), topic.clone());
    config.connect_timeout_ms = 5_000;
    let mut dlq = KafkaDlq::new(&config).unwrap();
    let letters = vec![
        DeadLetter {
            pipeline: Arc::from("iot"),
            topic: Arc::from("readings"),
            partition: 2,
            offset: 41,
            key: Some(vec![0xff, 0x00, b'k']),
            payload: Some(b"{not json".to_vec()),
            kind: ErrorKind::InvalidJson,
            message: "expected value at line 1 column 2".into(),
            stage: Stage::Decode,
            attempts: 1,
            time_ms: 1_700_000_000_123,
            first_failure_ms: 1_700_000_000_123,
        },
        DeadLetter {
            pipeline: Arc::from("iot"),
            topic: Arc::from("readings"),
            partition: 0,
            offset: 7,
            key: None,
            payload: None,
            kind: ErrorKind::NullPayload,
            message: "no payload".into(),
            stage: Stage::Operator("avg".into()),
            attempts: 3,
            time_ms: 1_700_000_000_456,
            first_failure_ms: 1_700_000_000_001,
        },
    ];
    dlq.write(&Lane::new("t", 0), &letters).unwrap();
    dlq.prepare(&Lane::new("t", 0), 1).unwrap();

    let messages = consume_all(&topic, 1, 2);
    for (m, letter) in messages.iter().zip(&letters) {
        assert_eq!(m.key(), letter.key.as_deref());
        assert_eq!(m.payload(), letter.payload.as_deref());
        let headers = m.headers().expect("headers");
        let got: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, DLQ_HEADERS);
        let get = |k: &str| got.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("weir.error.kind"), letter.kind.as_str());
        assert_eq!(get("weir.error.message"), letter.message);
        assert_eq!(get("weir.source.topic"), "readings");
        assert_eq!(get("weir.source.partition"), letter.partition.to_string());
        assert_eq!(get("weir.source.offset"), letter.offset.to_string());
        assert_eq!(get("weir.pipeline"), "iot");
        assert_eq!(get("weir.attempts"), letter.attempts.to_string());
        assert_eq!(get("weir.time_ms"), letter.time_ms.to_string());
        assert_eq!(get("weir.dlq.id"), letter.id());
        assert_eq!(
            get("weir.first_failure_ms"),
            letter.first_failure_ms.to_string()
        );
    }
    let stage = |m: &rdkafka::message::OwnedMessage| {
        let h = m.headers().unwrap();
        let v = h
            .iter()
            .find(|h| h.key == "weir.stage")
            .unwrap()
            .value
            .unwrap();
        String::from_utf8(v.to_vec()).unwrap()
    };
    assert_eq!(stage(&messages[0]), "decode");
    assert_eq!(stage(&messages[1]), "operator:avg");
}
