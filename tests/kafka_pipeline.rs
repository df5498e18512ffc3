//! A real Kafka-protocol broker (tansu, started by `scripts/kafka.sh`): topic → tumbling
//! window → exactly-once JSONL sink equals a reference aggregation computed in the test from
//! the generator's truth (the window itself is held to DataFusion batch SQL in
//! `window_oracle.rs`), across
//! a stop in mid-stream and a restart; poison goes to the DLQ; the group's committed offsets
//! end at the end of the input.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{broker_is_apache_kafka, brokers, create_topic, produce, produce_part, unique};
use weir::connectors::{
    read_dlq_dir, read_jsonl_dir, EventGenerator, GeneratorConfig, JsonlDlq, JsonlDlqConfig,
    JsonlSink, JsonlSinkConfig, KafkaOffsetCommitter, KafkaSource, KafkaSourceConfig,
};
use weir::pipeline::Pipeline;
use weir_runtime::Shutdown;

/// A source config in `group` mode that joins fast: tansu completes a join after about half
/// of `session.timeout.ms` (~23 s with librdkafka's default of 45 s). 3 s rather than the
/// fastest 1 s: on a loaded 2-core machine a starved heartbeat must not lose a partition,
/// because these tests count every message read exactly once.
fn group_config(topic: &str, group: &str) -> KafkaSourceConfig {
    group_config_of(topic, group, Protocol::Classic)
}

/// The consumer group protocol of a test's workers.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    /// The classic protocol, with weir's default `cooperative-sticky` assignor.
    Classic,
    /// KIP-848's consumer protocol: the broker assigns, and times the sessions
    /// (`group.consumer.session.timeout.ms`, set short by `scripts/kafka.sh`).
    Consumer,
}

fn group_config_of(topic: &str, group: &str, protocol: Protocol) -> KafkaSourceConfig {
    let mut cfg = KafkaSourceConfig::new(brokers(), &[topic], group);
    match protocol {
        Protocol::Classic => {
            cfg.options
                .insert("session.timeout.ms".into(), "3000".into());
            cfg.options
                .insert("heartbeat.interval.ms".into(), "500".into());
        }
        Protocol::Consumer => {
            cfg.options
                .insert("group.protocol".into(), "consumer".into());
        }
    }
    cfg.connect_timeout_ms = 10_000;
    cfg
}

/// One worker run, stopped once it consumed `stop_after` messages.
fn run(
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    stop_after: u64,
) -> weir_runtime::RunSummary {
    let worker = start_worker(topic, group, dir, Protocol::Classic);
    wait_for(
        "the worker to consume enough",
        Duration::from_secs(120),
        || worker.metrics.snapshot().consumed >= stop_after,
    );
    worker.stop.trigger();
    worker.handle.join().unwrap().unwrap()
}

#[test]
fn topic_to_window_equals_batch_sql_across_a_stop_and_restart_and_commits_offsets() {
    let partitions = 4;
    let cfg = GeneratorConfig {
        seed: 9,
        sensors: 400,
        partitions: partitions as u32,
        events: Some(200_000),
        disorder_ms: 5_000,
        poison_ratio: 0.002,
        ..Default::default()
    };
    let truth = EventGenerator::new(&cfg);
    let topic = create_topic(partitions);
    let total = produce(&topic, &truth, partitions);
    let group = unique("weir-group");
    let dir = tempfile::tempdir().unwrap();

    let first = run(&topic, &group, dir.path(), total / 10);
    assert!(
        first.counters.consumed >= total / 10 && first.counters.consumed < total,
        "{:?}",
        first.counters
    );
    let second = run(&topic, &group, dir.path(), total - first.counters.consumed);
    assert_eq!(
        first.counters.consumed + second.counters.consumed,
        total,
        "every message read once across the restart"
    );

    assert_exact_output(dir.path(), &truth, partitions);

    // The group's offsets were committed after the checkpoints: at the end of every partition.
    let committer =
        KafkaOffsetCommitter::new(&KafkaSourceConfig::new(brokers(), &[&topic], &group)).unwrap();
    for p in 0..partitions {
        let end = truth.events_in_partition(p).unwrap() as i64 + 1;
        assert_eq!(
            committer.committed(&topic, p).unwrap(),
            Some(end),
            "partition {p}"
        );
    }
}

/// The windows in `dir/out` are exactly once each and equal a reference aggregation over the
/// valid events of `truth`; every poison message is in `dir/dlq`.
fn assert_exact_output(dir: &std::path::Path, truth: &EventGenerator, partitions: i32) {
    // Windows: exactly once each, equal to the reference over the valid events.
    let mut stream: Vec<(String, i64, i64, String, String)> = read_jsonl_dir(dir.join("out"))
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["sensor_id"].as_str().unwrap().to_string(),
                window_start(&r["window_start"]),
                r["readings"].as_i64().unwrap(),
                format!("{:.9}", r["avg_temp"].as_f64().unwrap()),
                format!("{:.2}", r["max_temp"].as_f64().unwrap()),
            )
        })
        .collect();
    stream.sort();
    let mut oracle = Vec::new();
    let mut expected_poison = 0;
    let events: Vec<_> = (0..partitions)
        .flat_map(|p| (0..truth.events_in_partition(p).unwrap() as i64).map(move |o| (p, o)))
        .filter_map(|(p, o)| {
            let e = truth.event(p, o).unwrap();
            if e.poison.is_some() {
                expected_poison += 1;
                None
            } else {
                Some(e)
            }
        })
        .collect();
    let mut groups: std::collections::BTreeMap<(String, i64), (i64, f64, f64)> = Default::default();
    for e in &events {
        let start = e.event_time_ms - e.event_time_ms.rem_euclid(60_000);
        let g = groups
            .entry((e.sensor_id(), start))
            .or_insert((0, 0.0, f64::MIN));
        g.0 += 1;
        g.1 += e.temperature();
        g.2 = g.2.max(e.temperature());
    }
    for ((sensor, start), (n, sum, max)) in groups {
        oracle.push((
            sensor,
            start,
            n,
            format!("{:.9}", sum / n as f64),
            format!("{max:.2}"),
        ));
    }
    oracle.sort();
    assert_eq!(stream.len(), oracle.len(), "window count");
    for (s, o) in stream.iter().zip(&oracle) {
        assert_eq!((&s.0, s.1, s.2, &s.4), (&o.0, o.1, o.2, &o.4));
        let (a, b): (f64, f64) = (s.3.parse().unwrap(), o.3.parse().unwrap());
        assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{s:?} vs {o:?}");
    }
    assert_eq!(
        read_dlq_dir(dir.join("dlq")).unwrap().len(),
        expected_poison
    );
}

fn window_start(v: &serde_json::Value) -> i64 {
    // The JSONL sink writes timestamps as arrow formats them: "2023-11-14T22:13:00".
    match v {
        serde_json::Value::Number(n) => n.as_i64().unwrap(),
        serde_json::Value::String(s) => chrono_like_parse(s),
        other => panic!("window_start {other}"),
    }
}

/// Parse "YYYY-MM-DDTHH:MM:SS" (UTC) to epoch millis.
fn chrono_like_parse(s: &str) -> i64 {
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|x| x.parse::<f64>().unwrap() as i64)
        .collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000
}

/// A sink whose `prepare` (the step that makes output durable) waits until the test says so.
struct GatedSink {
    gate: std::sync::mpsc::Receiver<()>,
    prepares: Arc<std::sync::atomic::AtomicUsize>,
}

impl weir_runtime::EpochParticipant for GatedSink {
    fn prepare(&mut self, _p: &weir_runtime::Lane, _e: u64) -> weir_runtime::error::Result<()> {
        self.prepares
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.gate
            .recv()
            .map_err(|_| weir_runtime::WeirError::sink("gated", "gate closed"))
    }
}

impl weir_runtime::SinkWriter for GatedSink {
    fn name(&self) -> &str {
        "gated"
    }
    fn guarantee(&self) -> weir_runtime::Guarantee {
        weir_runtime::Guarantee::ExactlyOnce
    }
    fn write(
        &mut self,
        _p: &weir_runtime::Lane,
        b: &datafusion::arrow::record_batch::RecordBatch,
    ) -> weir_runtime::error::Result<weir_runtime::WriteOutcome> {
        Ok(weir_runtime::WriteOutcome {
            accepted: b.num_rows(),
            rejected: Vec::new(),
        })
    }
}

#[test]
fn the_committed_group_offset_never_passes_output_that_is_not_durable() {
    let cfg = GeneratorConfig {
        seed: 3,
        sensors: 50,
        partitions: 1,
        events: Some(5_000),
        ..Default::default()
    };
    let truth = EventGenerator::new(&cfg);
    let topic = create_topic(1);
    let total = produce(&topic, &truth, 1);
    let group = unique("weir-gated");
    let dir = tempfile::tempdir().unwrap();
    let (open, gate) = std::sync::mpsc::channel();
    let prepares = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let executor = Pipeline::new("gated")
        .source(KafkaSource::new(group_config(&topic, &group)).unwrap())
        .schema(weir::iot_schema())
        .tumble(weir::demo_window(60_000))
        .sink(GatedSink {
            gate,
            prepares: prepares.clone(),
        })
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.path().join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.path().join("checkpoints"))
        .checkpoint_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let committer =
        KafkaOffsetCommitter::new(&KafkaSourceConfig::new(brokers(), &[&topic], &group)).unwrap();

    // Everything is read and the first checkpoint waits on the sink: nothing may be committed.
    let started = Instant::now();
    while prepares.load(std::sync::atomic::Ordering::SeqCst) == 0
        || metrics.snapshot().consumed < total
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            metrics.snapshot()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        committer.committed(&topic, 0).unwrap(),
        None,
        "committed before the sink was durable"
    );
    assert_eq!(metrics.checkpoints(), 0);

    // Open the gate: checkpoints complete, and only then the offset is committed.
    stop.trigger();
    for _ in 0..1_000 {
        if open.send(()).is_err() {
            break;
        }
    }
    drop(open);
    let summary = handle.join().unwrap().unwrap();
    assert!(summary.checkpoints >= 1);
    assert_eq!(committer.committed(&topic, 0).unwrap(), Some(total as i64));
}

/// A worker of the `kafka-e2e` pipeline running in a thread, in group mode, writing into the
/// shared `dir` (checkpoints, JSONL output, DLQ), as workers on one machine would.
struct Worker {
    metrics: Arc<weir_runtime::Metrics>,
    stop: Shutdown,
    handle: std::thread::JoinHandle<weir_runtime::error::Result<weir_runtime::RunSummary>>,
}

fn start_worker(topic: &str, group: &str, dir: &std::path::Path, protocol: Protocol) -> Worker {
    let executor = Pipeline::new("kafka-e2e")
        .source(KafkaSource::new(group_config_of(topic, group, protocol)).unwrap())
        .schema(weir::iot_schema())
        .tumble(weir::demo_window(60_000))
        .filter("sensor_id <> '__flush'")
        .sink(
            JsonlSink::new(
                "jsonl",
                &JsonlSinkConfig {
                    path: dir.join("out"),
                },
            )
            .unwrap(),
        )
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.join("checkpoints"))
        .checkpoint_interval(Duration::from_millis(200))
        .batch(1_000, Duration::from_millis(20))
        .cpu_threads(2)
        .build()
        .unwrap();
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    Worker {
        metrics,
        stop,
        handle,
    }
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn two_workers_share_the_partitions_and_one_takes_over_from_the_others_checkpoints() {
    two_workers_case(Protocol::Classic);
}

/// The same with KIP-848's consumer protocol, which Apache Kafka 4 serves and tansu does not.
#[test]
fn two_workers_take_over_with_the_consumer_group_protocol() {
    assert!(
        broker_is_apache_kafka(),
        "the consumer group protocol needs Apache Kafka (WEIR_TEST_BROKER=kafka)"
    );
    two_workers_case(Protocol::Consumer);
}

fn two_workers_case(protocol: Protocol) {
    let partitions = 6;
    let cfg = GeneratorConfig {
        seed: 21,
        sensors: 300,
        partitions: partitions as u32,
        events: Some(90_000),
        disorder_ms: 5_000,
        poison_ratio: 0.002,
        ..Default::default()
    };
    let truth = EventGenerator::new(&cfg);
    let topic = create_topic(partitions);
    let group = unique("weir-two-workers");
    let dir = tempfile::tempdir().unwrap();
    let total: u64 = (0..partitions)
        .map(|p| truth.events_in_partition(p).unwrap() + 1)
        .sum();
    let limit = Duration::from_secs(60);

    // A alone owns every partition and reads the first third.
    let mut sent = produce_part(&topic, &truth, partitions, (0, 3), true);
    let a = start_worker(&topic, &group, dir.path(), protocol);
    wait_for("A to own all partitions", limit, || {
        a.metrics.owned_partitions() == partitions as u64
    });
    wait_for("A to read the first third", limit, || {
        a.metrics.snapshot().consumed == sent
    });

    // B joins: the incremental rebalance moves some partitions from A to B, which resumes
    // them from A's checkpoints. Both read the second third.
    let b = start_worker(&topic, &group, dir.path(), protocol);
    wait_for("the group to split the partitions", limit, || {
        let (owned_a, owned_b) = (a.metrics.owned_partitions(), b.metrics.owned_partitions());
        owned_a > 0 && owned_b > 0 && owned_a + owned_b == partitions as u64
    });
    let (_, revoked_from_a) = a.metrics.assignments();
    assert!(revoked_from_a > 0, "A gave partitions to B");
    sent += produce_part(&topic, &truth, partitions, (1, 3), true);
    wait_for("A and B to read the second third", limit, || {
        a.metrics.snapshot().consumed + b.metrics.snapshot().consumed == sent
    });
    assert!(
        b.metrics.snapshot().consumed > 0,
        "B read part of the input"
    );

    // A stops (drains, checkpoints, commits, leaves the group): B takes every partition over.
    let a_owned_before = a.metrics.owned_partitions();
    a.stop.trigger();
    let summary_a = a.handle.join().unwrap().unwrap();
    wait_for("B to own all partitions", limit, || {
        b.metrics.owned_partitions() == partitions as u64
    });
    assert!(a_owned_before > 0);
    sent += produce_part(&topic, &truth, partitions, (2, 3), true);
    assert_eq!(sent, total);
    wait_for("B to read the rest", limit, || {
        summary_a.counters.consumed + b.metrics.snapshot().consumed == total
    });
    // Let B's last checkpoints land, then stop it.
    b.stop.trigger();
    let summary_b = b.handle.join().unwrap().unwrap();
    assert_eq!(
        summary_a.counters.consumed + summary_b.counters.consumed,
        total,
        "every message read once across both workers"
    );

    assert_exact_output(dir.path(), &truth, partitions);
    let committer =
        KafkaOffsetCommitter::new(&KafkaSourceConfig::new(brokers(), &[&topic], &group)).unwrap();
    for p in 0..partitions {
        let end = truth.events_in_partition(p).unwrap() as i64 + 1;
        assert_eq!(
            committer.committed(&topic, p).unwrap(),
            Some(end),
            "partition {p}"
        );
    }
}
