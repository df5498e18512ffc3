//! Keyed state over unknown partitioning (ARCHITECTURE.md, "Co-location"): a window, session,
//! GROUP BY or projection whose keys are not known to be co-located runs in two phases where
//! it can and is refused, naming `partition_key`, where it cannot; a declared partition key
//! that the topic is not keyed by is detected at run time.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::cli::{stderr, weir};
use common::kafka::{brokers, create_topic};
use common::{assert_rows_match, batch_sql, rows, schema, Event, Rng};
use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir::config::ValidatedPipeline;
use weir::connectors::{read_jsonl_dir, JsonlFileSource, JsonlSourceConfig};
use weir::operators::{Projection, ProjectionOperator, SqlOptions};
use weir::pipeline::Pipeline;
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::Shutdown;

const SCHEMA_NO_KEY: &str = r#"[schema]
event_time = "ts"
fields = [
  { name = "key", type = "string" },
  { name = "region", type = "string" },
  { name = "seq", type = "int64" },
  { name = "v", type = "int64" },
  { name = "x", type = "float64" },
  { name = "ts", type = "timestamp" },
]
"#;

fn file_with(source: &str, body: &str, schema: &str) -> String {
    format!(
        r#"name = "colocation"
{body}
{source}
{schema}
[[sinks]]
type = "null"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#
    )
}

const KAFKA_GROUP: &str = r#"[source]
type = "kafka"
brokers = "127.0.0.1:1"
topics = ["trades"]
group_id = "g"
"#;

const JSONL_ROUND_ROBIN: &str = r#"[source]
type = "jsonl"
path = "in.jsonl"
partitions = 4
"#;

fn check(text: &str) -> Vec<String> {
    match ValidatedPipeline::parse(text, Path::new("pipeline.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors,
    }
}

#[test]
fn a_group_by_without_a_window_over_kafka_without_partition_key_is_refused_naming_partition_key() {
    let errors = check(&file_with(
        KAFKA_GROUP,
        r#"sql = "SELECT region, count(*) AS n, sum(v) AS volume FROM events GROUP BY region""#,
        SCHEMA_NO_KEY,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("sql: ") && e.contains("partition_key")),
        "{errors:?}"
    );
}

#[test]
fn a_window_over_a_kafka_group_without_partition_key_is_refused_naming_partition_key() {
    let errors = check(&file_with(
        KAFKA_GROUP,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_NO_KEY,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("source.assignment: ") && e.contains("partition_key")),
        "{errors:?}"
    );
}

#[test]
fn a_window_over_manually_assigned_kafka_without_partition_key_passes_check_in_two_phases() {
    let source = KAFKA_GROUP.replace(
        "group_id = \"g\"",
        "group_id = \"g\"\nassignment = \"manual\"",
    );
    let errors = check(&file_with(
        &source,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_NO_KEY,
    ));
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn a_session_over_round_robin_jsonl_is_refused_naming_partition_key_and_the_round_robin() {
    let errors = check(&file_with(
        JSONL_ROUND_ROBIN,
        r#"sql = "SELECT key, count(*) AS n FROM events GROUP BY key, SESSION(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_NO_KEY,
    ));
    assert!(
        errors.iter().any(|e| e.starts_with("sql: ")
            && e.contains("partition_key")
            && e.contains("round-robin")),
        "{errors:?}"
    );
}

#[test]
fn a_partition_key_declared_over_round_robin_jsonl_is_refused() {
    let schema = SCHEMA_NO_KEY.replace(
        "event_time = \"ts\"",
        "event_time = \"ts\"\npartition_key = \"key\"",
    );
    let errors = check(&file_with(
        JSONL_ROUND_ROBIN,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        &schema,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("schema.partition_key: ") && e.contains("key_field")),
        "{errors:?}"
    );
}

#[test]
fn a_partition_key_other_than_the_sources_key_field_is_refused() {
    let source =
        JSONL_ROUND_ROBIN.replace("partitions = 4", "partitions = 4\nkey_field = \"region\"");
    let schema = SCHEMA_NO_KEY.replace(
        "event_time = \"ts\"",
        "event_time = \"ts\"\npartition_key = \"key\"",
    );
    let errors = check(&file_with(
        &source,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        &schema,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("schema.partition_key: ") && e.contains("`region`")),
        "{errors:?}"
    );
}

/// Events in time order with random keys: spread round-robin, every partition's event time
/// only goes forward, so no event is late and the batch result is the truth.
fn ordered_events(n: usize, keys: u64) -> Vec<Event> {
    let mut rng = Rng(77);
    (0..n)
        .map(|i| {
            let k = rng.below(keys);
            Event {
                partition: 0,
                offset: i as i64,
                key: format!("k{k}"),
                region: format!("r{}", k % 3),
                seq: i as i64,
                v: rng.below(100) as i64,
                x: 0.5,
                ts: 1_700_000_000_000 + 25 * i as i64,
            }
        })
        .collect()
}

#[test]
fn a_window_over_round_robin_jsonl_without_partition_key_equals_batch_sql() {
    let dir = tempfile::tempdir().unwrap();
    let events = ordered_events(6_000, 30);
    let mut f = std::fs::File::create(dir.path().join("in.jsonl")).unwrap();
    for e in &events {
        writeln!(f, "{}", e.json()).unwrap();
    }
    drop(f);
    let query = "SELECT key, window_start, count(*) AS n, sum(v) AS total FROM events \
                 GROUP BY key, TUMBLE(ts, INTERVAL '1' SECOND)";
    let sink = MemorySink::default();
    Pipeline::new("round-robin")
        .source(
            JsonlFileSource::new(JsonlSourceConfig {
                path: dir.path().join("in.jsonl"),
                partitions: 4,
                key_field: None,
            })
            .unwrap(),
        )
        .schema(weir::operators::SchemaConfig {
            partition_key: None,
            ..schema()
        })
        .sql(query, &SqlOptions::default())
        .unwrap()
        .sink(sink.clone())
        .dlq(MemoryDlq::default())
        .checkpoint_dir(dir.path().join("checkpoints"))
        .run(Shutdown::new())
        .unwrap();
    let all: Vec<&Event> = events.iter().collect();
    let want = rows(&batch_sql(
        &all,
        "SELECT key, CAST(date_bin(INTERVAL '1' SECOND, ts, TIMESTAMP '1970-01-01') AS BIGINT) AS window_start, \
         count(*) AS n, sum(v) AS total FROM events GROUP BY 1, 2",
    ));
    assert!(want.len() > 100);
    assert_rows_match(&rows(&sink.committed()), &want, query);
}

struct Count;

impl Projection for Count {
    type Event = serde_json::Value;
    type State = i64;
    type Row<'a> = serde_json::Value;

    fn key(&self, e: &serde_json::Value) -> String {
        e["key"].as_str().unwrap_or_default().to_string()
    }
    fn apply(&self, n: &mut i64, _: serde_json::Value) -> Result<(), weir::operators::EventError> {
        *n += 1;
        Ok(())
    }
    fn row<'a>(&'a self, key: &'a str, n: &'a i64) -> serde_json::Value {
        serde_json::json!({"key": key, "n": n})
    }
    fn row_schema(&self) -> SchemaRef {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]))
    }
}

#[test]
fn a_projection_over_a_source_without_declared_partition_key_is_refused() {
    let events = ordered_events(100, 5);
    let parts = common::by_partition(&events, |e| Some(e.json().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let err = Pipeline::new("projection")
        .source(MemorySource::new("events", parts))
        .schema(weir::operators::SchemaConfig {
            partition_key: None,
            ..schema()
        })
        .operator("counts", |input| {
            Ok(Box::new(ProjectionOperator::new("counts", Count, input)) as _)
        })
        .sink(MemorySink::default())
        .dlq(MemoryDlq::default())
        .checkpoint_dir(dir.path())
        .run(Shutdown::new())
        .expect_err("the projection is refused")
        .to_string();
    assert!(
        err.contains("`counts`") && err.contains("partition_key"),
        "{err}"
    );
}

// --- On the test broker ---------------------------------------------------------------------

const SYMBOLS: u64 = 40;

/// A trade: keyed by symbol (the topic's message key), grouped by side.
struct Trade {
    symbol: String,
    side: &'static str,
    qty: i64,
    ts: i64,
}

/// `n` trades in time order, each in partition `symbol % partitions`, then one trade per
/// partition far in the future so every real window closes.
fn produce_trades(topic: &str, n: usize, partitions: i32) -> Vec<Trade> {
    let mut rng = Rng(5);
    let trades: Vec<Trade> = (0..n)
        .map(|i| Trade {
            symbol: format!("S{}", rng.below(SYMBOLS)),
            side: if rng.below(2) == 0 { "buy" } else { "sell" },
            qty: 1 + rng.below(50) as i64,
            ts: 1_767_624_000_000 + 40 * i as i64,
        })
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let flush = (0..partitions).map(|p| Trade {
        symbol: format!("flush{p}"),
        side: "none",
        qty: 0,
        ts: 4_000_000_000_000,
    });
    for t in trades.iter().chain(flush.collect::<Vec<_>>().iter()) {
        let p = match t.symbol.strip_prefix("flush") {
            Some(p) => p.parse().unwrap(),
            None => (t.symbol[1..].parse::<u64>().unwrap() % partitions as u64) as i32,
        };
        let payload = format!(
            r#"{{"symbol":"{}","side":"{}","qty":{},"event_time":{}}}"#,
            t.symbol, t.side, t.qty, t.ts
        );
        let mut record = BaseRecord::to(topic)
            .partition(p)
            .key(t.symbol.as_str())
            .payload(payload.as_str());
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
    trades
}

fn trades_file(topic: &str, schema_extra: &str, sql: &str, assignment: &str) -> String {
    format!(
        r#"name = "trades"
sql = "{sql}"

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{topic}-group"
assignment = "{assignment}"

[schema]
table = "trades"
event_time = "event_time"
{schema_extra}
fields = [
  {{ name = "symbol", type = "string" }},
  {{ name = "side", type = "string" }},
  {{ name = "qty", type = "int64" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 200
"#,
        brokers = brokers()
    )
}

/// Run `weir run pipeline.toml` in `dir` until `done` holds of its output, then SIGTERM it.
fn run_until(dir: &Path, done: impl Fn(&Path) -> bool) -> std::process::Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "pipeline.toml"])
        .current_dir(dir)
        .env("WEIR_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !done(dir)
        && started.elapsed() < Duration::from_secs(90)
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_window_by_side_over_a_topic_keyed_by_symbol_without_partition_key_equals_the_truth() {
    let partitions = 4;
    let topic = create_topic(partitions);
    let trades = produce_trades(&topic, 8_000, partitions);
    let mut truth: std::collections::BTreeMap<(String, i64), (i64, i64)> = Default::default();
    for t in &trades {
        let w = truth
            .entry((t.side.to_string(), t.ts - t.ts.rem_euclid(60_000)))
            .or_default();
        w.0 += 1;
        w.1 += t.qty;
    }
    let dir = tempfile::tempdir().unwrap();
    // The flush trades (side "none") move every partition's watermark past the real
    // windows; their own window never closes.
    let sql = "SELECT side, window_start, count(*) AS n, sum(qty) AS volume FROM trades \
               GROUP BY side, TUMBLE(event_time, INTERVAL '1' MINUTE)";
    std::fs::write(
        dir.path().join("pipeline.toml"),
        trades_file(&topic, "", sql, "manual"),
    )
    .unwrap();
    let check = weir(&["run", "--check", "pipeline.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));
    let windows = |d: &Path| read_jsonl_dir(d.join("out")).map_or(0, |r| r.len());
    let out = run_until(dir.path(), |d| windows(d) >= truth.len());
    assert!(out.status.success(), "{}", stderr(&out));
    let mut got: std::collections::BTreeMap<(String, i64), (i64, i64)> = Default::default();
    for r in read_jsonl_dir(dir.path().join("out")).unwrap() {
        let start = common::epoch_millis(&r["window_start"]);
        let prev = got.insert(
            (r["side"].as_str().unwrap().to_string(), start),
            (r["n"].as_i64().unwrap(), r["volume"].as_i64().unwrap()),
        );
        assert!(prev.is_none(), "window emitted twice: {r:?}");
    }
    assert_eq!(got, truth);
}

#[test]
fn a_partition_key_the_topic_is_not_keyed_by_is_reported_and_strict_mode_fails_the_run() {
    let partitions = 4;
    let topic = create_topic(partitions);
    let trades = produce_trades(&topic, 2_000, partitions);
    let sql = "SELECT side, window_start, count(*) AS n FROM trades \
               GROUP BY side, TUMBLE(event_time, INTERVAL '1' MINUTE)";

    // Declared `side`, but the topic is keyed by symbol: every side is in every partition.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        trades_file(&topic, r#"partition_key = "side""#, sql, "manual"),
    )
    .unwrap();
    // Each partition emits its own (split) row per side and window: wait until every
    // partition did, so every partition was read.
    let split_rows: std::collections::BTreeSet<(u64, &str, i64)> = trades
        .iter()
        .map(|t| {
            let p = t.symbol[1..].parse::<u64>().unwrap() % partitions as u64;
            (p, t.side, t.ts - t.ts.rem_euclid(60_000))
        })
        .collect();
    let consumed = trades.len() + partitions as usize;
    let out = run_until(dir.path(), |d| {
        read_jsonl_dir(d.join("out")).map_or(0, |r| r.len()) >= split_rows.len()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("partition_key `side` = ") && err.contains("topic `"),
        "the first misplaced key is logged with its partitions: {err}\nstdout: {stdout}"
    );
    assert!(
        stdout.contains("value(s) of partition_key `side` were seen in more than one partition"),
        "{stdout} ({consumed} messages)"
    );

    let strict = tempfile::tempdir().unwrap();
    std::fs::write(
        strict.path().join("pipeline.toml"),
        trades_file(
            &topic,
            "partition_key = \"side\"\npartition_key_check = \"strict\"",
            sql,
            "manual",
        )
        // Its own group: the first run committed the topic's end for its group.
        .replace("-group\"", "-strict\""),
    )
    .unwrap();
    let out = run_until(strict.path(), |_| false);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "strict mode fails the run: {err}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains("partition_key `side` = ") && err.contains("strict"),
        "{err}"
    );
}

const KAFKA_TWO_TOPICS: &str = r#"[source]
type = "kafka"
brokers = "127.0.0.1:1"
topics = ["ta", "tb"]
group_id = "g"
"#;

const SCHEMA_KEYED: &str = r#"[schema]
event_time = "ts"
partition_key = "key"
fields = [
  { name = "key", type = "string" },
  { name = "region", type = "string" },
  { name = "seq", type = "int64" },
  { name = "v", type = "int64" },
  { name = "x", type = "float64" },
  { name = "ts", type = "timestamp" },
]
"#;

#[test]
fn a_window_by_the_partition_key_over_two_topics_in_a_group_is_refused_naming_the_topics() {
    let errors = check(&file_with(
        KAFKA_TWO_TOPICS,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_KEYED,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("source.assignment: ") && e.contains("topics ta, tb")),
        "{errors:?}"
    );
}

#[test]
fn a_window_by_the_partition_key_over_two_manually_assigned_topics_passes_check_in_two_phases() {
    let source = KAFKA_TWO_TOPICS.replace(
        "group_id = \"g\"",
        "group_id = \"g\"\nassignment = \"manual\"",
    );
    let errors = check(&file_with(
        &source,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_KEYED,
    ));
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn a_session_by_the_partition_key_over_two_topics_is_refused_naming_the_topics() {
    let errors = check(&file_with(
        KAFKA_TWO_TOPICS,
        r#"sql = "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, SESSION(ts, INTERVAL '1' MINUTE)""#,
        SCHEMA_KEYED,
    ));
    assert!(
        errors.iter().any(|e| e.starts_with("sql: ")
            && e.contains("several topics (ta, tb)")
            && e.contains("session")),
        "{errors:?}"
    );
}

#[test]
fn a_group_by_without_a_window_over_two_topics_is_refused_naming_the_topics() {
    let errors = check(&file_with(
        KAFKA_TWO_TOPICS,
        r#"sql = "SELECT key, count(*) AS n FROM events GROUP BY key""#,
        SCHEMA_KEYED,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("sql: ") && e.contains("several topics (ta, tb)")),
        "{errors:?}"
    );
}
