//! `[schema.metadata]` on a real Kafka-protocol broker (started by `scripts/kafka.sh`): the
//! message key, the timestamp the producer set (here the event time), topic, partition,
//! offset and named headers (as strings, or as bytes when declared binary) become columns that
//! a projection's SQL reads and the sink writes; a message whose string header is not UTF-8
//! is dead-lettered naming the header.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::{brokers, create_topic, unique};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir::config::ValidatedPipeline;
use weir::connectors::{read_dlq_dir, read_jsonl_dir};
use weir::pipeline::Pipeline;
use weir_runtime::Shutdown;

/// 2026-01-05T14:40:00Z in epoch milliseconds.
const T: i64 = 1_767_624_000_000;

/// One message: key, timestamp, headers (name, value), payload.
type Message = (String, i64, Vec<(&'static str, Vec<u8>)>, String);

fn produce(topic: &str, messages: &[Message]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (key, ts, headers, payload) in messages {
        let mut h = OwnedHeaders::new();
        for (name, value) in headers {
            h = h.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(0)
            .key(key.as_bytes())
            .timestamp(*ts)
            .headers(h)
            .payload(payload.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn pipeline(topic: &str, dir: &Path) -> String {
    format!(
        r#"name = "{name}"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
assignment = "manual"

[schema]
event_time = "broker_time"
fields = [{{ name = "order_id", type = "string" }}]

[schema.metadata]
key = "order_key"
timestamp = "broker_time"
topic = "source_topic"
partition = "source_partition"
offset = "source_offset"
headers = {{ correlation_id = "correlation-id", tenant = "tenant", trace = {{ header = "trace-bin", type = "binary" }} }}

[[operators]]
type = "project"
columns = [
  {{ expr = "order_id", name = "order_id" }},
  {{ expr = "order_key", name = "order_key" }},
  {{ expr = "correlation_id", name = "correlation_id" }},
  {{ expr = "upper(tenant)", name = "tenant" }},
  {{ expr = "broker_time", name = "broker_time" }},
  {{ expr = "source_topic", name = "source_topic" }},
  {{ expr = "source_partition", name = "source_partition" }},
  {{ expr = "source_offset", name = "source_offset" }},
  {{ expr = "trace", name = "trace" }},
  {{ expr = "trace IS NOT NULL", name = "has_trace" }},
]

[[sinks]]
type = "jsonl"
path = "{out}"

[dlq]
type = "jsonl"
path = "{dlq}"

[checkpoint]
dir = "{checkpoints}"
interval_ms = 100

[batch]
max_rows = 50
linger_ms = 20
"#,
        name = unique("metadata"),
        brokers = brokers(),
        group = unique("weir-metadata"),
        out = dir.join("out").display(),
        dlq = dir.join("dlq").display(),
        checkpoints = dir.join("checkpoints").display(),
    )
}

#[test]
fn key_timestamp_position_and_headers_of_each_message_reach_the_sink_as_columns() {
    let topic = create_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let n = 40;
    let mut messages: Vec<Message> = (0..n)
        .map(|i| {
            let mut headers = vec![("correlation-id", format!("corr-{i}").into_bytes())];
            if i % 2 == 0 {
                headers.push(("tenant", b"acme".to_vec()));
            } else {
                // Not UTF-8: a binary column holds it as it is.
                headers.push(("trace-bin", vec![0xff, 0x00, i as u8]));
            }
            (
                format!("key-{i}"),
                T + i * 1000,
                headers,
                format!(r#"{{"order_id":"o{i}","other":{{"x":1}}}}"#),
            )
        })
        .collect();
    // Offset n: a header that is not UTF-8.
    messages.push((
        "bad".into(),
        T,
        vec![("correlation-id", vec![0xff, 0xfe])],
        r#"{"order_id":"bad"}"#.into(),
    ));
    produce(&topic, &messages);

    let cfg = ValidatedPipeline::parse(&pipeline(&topic, dir.path()), Path::new("p.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let executor = Pipeline::from_config(&cfg).unwrap().build().unwrap();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let started = Instant::now();
    let rows = loop {
        let rows = read_jsonl_dir(dir.path().join("out")).unwrap_or_default();
        let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap_or_default();
        if rows.len() >= n as usize && !dlq.is_empty() {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out: {} rows, {} dead letters",
            rows.len(),
            dlq.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    stop.trigger();
    handle.join().unwrap().unwrap();

    assert_eq!(rows.len(), n as usize);
    for (i, row) in rows.iter().enumerate() {
        let i = i as i64;
        let mut row = row.clone();
        let time = row
            .as_object_mut()
            .unwrap()
            .remove("broker_time")
            .unwrap_or_else(|| panic!("row {i} has no broker_time"));
        assert_eq!(common::epoch_millis(&time), T + i * 1000, "row {i}");
        let mut want = serde_json::json!({
            "order_id": format!("o{i}"),
            "order_key": format!("key-{i}"),
            "correlation_id": format!("corr-{i}"),
            "source_topic": topic,
            "source_partition": 0,
            "source_offset": i,
        });
        if i % 2 == 0 {
            want["tenant"] = "ACME".into();
            want["has_trace"] = false.into();
        } else {
            want["trace"] = format!("ff00{:02x}", i).into();
            want["has_trace"] = true.into();
        }
        assert_eq!(row, want, "row {i}");
    }
    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].letter.offset, n);
    assert_eq!(dlq[0].letter.kind.as_str(), "wrong_type");
    assert!(
        dlq[0]
            .letter
            .message
            .contains("`correlation_id`: header `correlation-id` is not UTF-8"),
        "{}",
        dlq[0].letter.message
    );
}
