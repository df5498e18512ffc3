//! `[watermark] idle_advance_ms` and `max_future_ms` on a real Kafka-protocol broker (tansu,
//! started by `scripts/kafka.sh`), through pipeline files as a user writes them: a topic
//! whose input stopped still emits its last window, and a later event for it is late; trades
//! stamped far ahead of the wall clock go to the DLQ and leave the valid ones on time.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka::{brokers, create_topic, unique};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use weir::config::ValidatedPipeline;
use weir::connectors::{read_dlq_dir, read_jsonl_dir};
use weir::pipeline::Pipeline;
use weir_runtime::{ErrorKind, RunSummary, Shutdown};

const SCHEMA: &str = r#"[schema]
table = "trades"
event_time = "trade_time"
partition_key = "symbol"
fields = [
  { name = "symbol", type = "string" },
  { name = "qty", type = "int64" },
  { name = "trade_time", type = "timestamp" },
]
"#;

/// Old trades (a replay: event time far behind the wall clock), aligned to 2 s windows.
const T0: i64 = 1_700_000_000_000;

fn trade(symbol: &str, qty: i64, time: i64) -> String {
    format!(r#"{{"symbol":"{symbol}","qty":{qty},"trade_time":{time}}}"#)
}

/// Produce `(partition, payload)` messages in order.
fn produce(topic: &str, messages: &[(i32, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (p, payload) in messages {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(*p)
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

/// The pipeline file for `topic` writing into `dir`, with `body` (operators or sql, and
/// `[watermark]`).
fn pipeline(topic: &str, dir: &Path, body: &str) -> String {
    format!(
        r#"name = "{name}"
{body}

[source]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
assignment = "manual"

{SCHEMA}

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
        name = unique("watermark"),
        brokers = brokers(),
        group = unique("weir-watermark"),
        out = dir.join("out").display(),
        dlq = dir.join("dlq").display(),
        checkpoints = dir.join("checkpoints").display(),
    )
}

struct Run {
    metrics: std::sync::Arc<weir_runtime::Metrics>,
    stop: Shutdown,
    handle: std::thread::JoinHandle<weir_runtime::error::Result<RunSummary>>,
}

fn start(toml: &str) -> Run {
    let cfg = ValidatedPipeline::parse(toml, Path::new("pipeline.toml")).unwrap_or_else(|e| {
        panic!("{e}");
    });
    let executor = Pipeline::from_config(&cfg).unwrap().build().unwrap();
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    Run {
        metrics,
        stop,
        handle,
    }
}

impl Run {
    fn finish(self) -> RunSummary {
        self.stop.trigger();
        self.handle.join().unwrap().unwrap()
    }
}

/// Wait (bounded) until `cond` holds; `what` and `state` say what was missing.
fn wait_for<S: std::fmt::Debug>(what: &str, mut state: impl FnMut() -> (bool, S)) {
    let started = Instant::now();
    loop {
        let (done, s) = state();
        if done {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (symbol, window start, trades, volume) of every window written, sorted.
fn windows(dir: &Path) -> Vec<(String, i64, i64, i64)> {
    let mut rows: Vec<_> = read_jsonl_dir(dir.join("out"))
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["symbol"].as_str().unwrap().to_string(),
                start_ms(&r["window_start"]),
                r["trades"].as_i64().unwrap(),
                r["volume"].as_i64().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// "2023-11-14T22:13:20" (UTC, as the JSONL sink writes it) in epoch milliseconds.
fn start_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().unwrap();
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<f64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|x| x.parse().unwrap())
        .collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1])
    } else {
        (d[0], d[1])
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400_000 + ((t[0] * 3600.0 + t[1] * 60.0 + t[2]) * 1000.0) as i64
}

#[test]
fn a_topic_whose_input_stopped_emits_its_last_window_and_a_later_event_for_it_is_late() {
    let topic = create_topic(2);
    let dir = tempfile::tempdir().unwrap();
    // 50 trades per symbol, one every 100 ms: windows of 2 s hold 20, 20 and the last 10.
    let mut messages = Vec::new();
    for i in 0..50 {
        messages.push((0, trade("AAA", 1, T0 + i * 100)));
        messages.push((1, trade("BBB", 2, T0 + i * 100)));
    }
    produce(&topic, &messages);
    let body = r#"
[watermark]
idle_advance_ms = 500

[[operators]]
type = "tumble"
size_ms = 2000
keys = ["symbol"]
aggregates = [
  { function = "count", alias = "trades" },
  { function = "sum", column = "qty", alias = "volume" },
]
"#;
    let run = start(&pipeline(&topic, dir.path(), body));
    let expected = vec![
        ("AAA".to_string(), T0, 20, 20),
        ("AAA".to_string(), T0 + 2_000, 20, 20),
        ("AAA".to_string(), T0 + 4_000, 10, 10),
        ("BBB".to_string(), T0, 20, 40),
        ("BBB".to_string(), T0 + 2_000, 20, 40),
        ("BBB".to_string(), T0 + 4_000, 10, 20),
    ];
    wait_for("the last windows of the idle partitions", || {
        let w = windows(dir.path());
        (w.len() >= expected.len(), w)
    });
    assert_eq!(windows(dir.path()), expected, "every window once, exact");

    // A trade of the last (closed) AAA window arriving now is late: to the DLQ with its bytes.
    let late = trade("AAA", 7, T0 + 4_950);
    produce(&topic, &[(0, late.clone())]);
    wait_for("the late trade in the DLQ", || {
        let d = read_dlq_dir(dir.path().join("dlq")).unwrap_or_default();
        (!d.is_empty(), d.len())
    });
    let summary = run.finish();
    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].letter.kind, ErrorKind::Late);
    assert_eq!(dlq[0].letter.payload.as_deref(), Some(late.as_bytes()));
    assert_eq!(summary.counters.late, 1);
    assert_eq!(summary.counters.consumed, 101);
    assert_eq!(windows(dir.path()), expected, "no window emitted twice");
}

#[test]
fn trades_stamped_far_ahead_of_the_wall_clock_go_to_the_dlq_and_no_valid_trade_is_late() {
    let topic = create_topic(1);
    let dir = tempfile::tempdir().unwrap();
    let now = weir_runtime::watermark::wall_clock_ms();
    // 373 valid trades, one a second over the last minutes, and three malformed ones
    // stamped 10 minutes ahead among them (after the 10th, 100th and 200th).
    let first = now - 400_000;
    let mut messages: Vec<(i32, String)> = (0..373)
        .map(|i| (0, trade("AAA", 1, first + i * 1_000)))
        .collect();
    for at in [200, 100, 10] {
        messages.insert(at, (0, trade("AAA", 1_000_000, now + 600_000)));
    }
    produce(&topic, &messages);
    let body = r#"
sql = "SELECT symbol, window_start, count(*) AS trades, sum(qty) AS volume FROM trades GROUP BY symbol, TUMBLE(trade_time, INTERVAL '1' MINUTE)"

[watermark]
max_future_ms = 60000
"#;
    let run = start(&pipeline(&topic, dir.path(), body));
    wait_for("every trade read and its dead letters stored", || {
        let c = run.metrics.snapshot();
        let d = read_dlq_dir(dir.path().join("dlq")).unwrap_or_default();
        (c.consumed == 376 && d.len() >= 3, (c, d.len()))
    });
    let summary = run.finish();
    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    for d in &dlq {
        assert_eq!(d.letter.kind, ErrorKind::FutureEventTime);
        assert!(
            d.letter
                .message
                .contains(&format!("event time {} ms", now + 600_000))
                && d.letter.message.contains("max_future_ms = 60000 ms"),
            "{}",
            d.letter.message
        );
    }
    assert_eq!(
        dlq.iter().map(|d| d.letter.offset).collect::<Vec<_>>(),
        vec![10, 101, 202]
    );
    assert_eq!(summary.counters.late, 0, "{:?}", summary.counters);
    assert_eq!(
        summary.counters.aggregated, 373,
        "every valid trade counted"
    );
}
