//! The transactional Kafka sink (Kafka to Kafka exactly-once) on librdkafka's mock cluster:
//! the worker crashes in the middle of transactions several times and restarts from the
//! checkpoints stored inside the transactions. What is and is not verified: see
//! `crashes_inside_transactions`.

use crate::support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use support::tasks;
use weir_connectors::kafka::{
    AssignmentMode, KafkaOffsetCommitter, KafkaSinkConfig, KafkaSource, KafkaSourceConfig,
    KafkaTxnOptions, KafkaTxnStore,
};
use weir_connectors::{EventGenerator, GeneratorConfig, JsonlDlq, JsonlDlqConfig};
use weir_runtime::testkit::MemorySink;
use weir_runtime::{Executor, ExecutorConfig, Shutdown, SinkWriter};

/// Topic and group names of one test.
#[derive(Clone)]
struct Names {
    input: String,
    output: String,
    checkpoints: String,
    group: String,
}

impl Names {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let n = |what: &str| format!("weir-eos-{what}-{tag}-{}-{nanos}", std::process::id());
        Self {
            input: n("in"),
            output: n("out"),
            checkpoints: n("ckpt"),
            group: n("group"),
        }
    }
}

fn produce(brokers: &str, names: &Names, truth: &EventGenerator, partitions: i32) -> u64 {
    support::produce_generated(brokers, &names.input, truth, partitions, (0, 1))
}

fn source_config(brokers: &str, names: &Names) -> KafkaSourceConfig {
    let mut config = KafkaSourceConfig::new(brokers, &[&names.input], &names.group);
    config.assignment = AssignmentMode::Manual;
    config.connect_timeout_ms = 5_000;
    config
}

/// One run of the worker; `crash_after` makes a second sink fail on its Nth write (the
/// process dies in the middle of a transaction). Runs until the group offsets reach `ends`.
fn run(
    brokers: &str,
    names: &Names,
    dir: &std::path::Path,
    crash_after: Option<usize>,
    ends: &[i64],
) -> (bool, u64) {
    let mut sink = KafkaSinkConfig::new(brokers, &names.output);
    sink.key_column = Some("sensor_id".into());
    sink.transactional_id = Some(names.output.clone());
    sink.checkpoint_topic = Some(names.checkpoints.clone());
    sink.connect_timeout_ms = 10_000;
    let store = KafkaTxnStore::connect(
        "out",
        &sink,
        KafkaTxnOptions {
            group_id: names.group.clone(),
            pipeline: "eos".into(),
        },
    )
    .unwrap();
    let mut sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(store.clone())];
    if let Some(n) = crash_after {
        sinks.push(Box::new(MemorySink {
            fail_after_writes: Some(n),
            ..Default::default()
        }));
    }
    let mut config = ExecutorConfig::new("eos");
    config.cpu_threads = 2;
    config.max_rows = 100;
    config.linger = Duration::from_millis(5);
    config.checkpoint_interval = Duration::from_millis(50);
    let executor = Executor::new(
        config,
        Box::new(KafkaSource::new(source_config(brokers, names)).unwrap()),
        tasks(),
        sinks,
        Box::new(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.join("dlq"),
            })
            .unwrap(),
        ),
        store.checkpoint_store(),
    );
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let committer = KafkaOffsetCommitter::new(&source_config(brokers, names)).unwrap();
    let started = Instant::now();
    loop {
        if handle.is_finished() {
            let result = handle.join().unwrap();
            assert!(crash_after.is_some(), "only a crash ends a run: {result:?}");
            assert!(result.is_err());
            return (false, metrics.snapshot().consumed);
        }
        let done = (0..ends.len() as i32)
            .all(|p| committer.committed(&names.input, p).unwrap() == Some(ends[p as usize]));
        if done {
            eprintln!(
                "run with crash_after {crash_after:?} reached the end after {:?}",
                started.elapsed()
            );
            stop.trigger();
            let summary = handle.join().unwrap().unwrap();
            return (true, summary.counters.consumed);
        }
        assert!(started.elapsed() < Duration::from_secs(90), "run timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every message of the output topic, as a consumer with this `isolation.level` sees it.
fn output_rows(
    brokers: &str,
    names: &Names,
    partitions: i32,
    isolation: &str,
) -> Vec<serde_json::Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "check")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&names.output, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut rows = Vec::new();
    let mut eof = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eof < partitions {
        assert!(Instant::now() < deadline, "output not read to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => rows.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    rows
}

/// The protocol of the transactional sink, on librdkafka's mock cluster, which does not hide
/// aborted transactions from `read_committed` readers (measured: both isolation levels see
/// the same messages), so exactly-once output is verified on Apache Kafka instead
/// (`tests/two_topics.rs`, 10 SIGKILLs). This checks the protocol itself: transactions begin, carry the
/// rows, the checkpoint and the group offset, commit; a crash leaves its transaction open
/// and the restart fences it and resumes from the checkpoint stored in the checkpoint topic.
fn crashes_inside_transactions(brokers: &str, names: &Names) {
    let partitions = 3;
    let g = GeneratorConfig {
        seed: 11,
        sensors: 40,
        partitions: partitions as u32,
        events: Some(12_000),
        disorder_ms: 200,
        poison_ratio: 0.01,
        ..Default::default()
    };
    let truth = EventGenerator::new(&g);
    let total = produce(brokers, names, &truth, partitions);
    let ends: Vec<i64> = (0..partitions)
        .map(|p| truth.events_in_partition(p).unwrap() as i64)
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let mut consumed = Vec::new();
    for crash_after in [20, 20, 20] {
        let (ended, n) = run(brokers, names, dir.path(), Some(crash_after), &ends);
        assert!(!ended, "the crash came before the end");
        consumed.push(n);
    }
    let (ended, last) = run(brokers, names, dir.path(), None, &ends);
    assert!(ended);
    // Each restart resumed from a checkpoint read back from the checkpoint topic: the last
    // run did not start from the beginning.
    assert!(
        last < total,
        "the last run read {last} of {total}: no checkpoint was restored"
    );
    assert!(consumed.iter().sum::<u64>() + last >= total);

    // Every valid event reached the output topic (at least once, as these brokers show it).
    let rows = output_rows(brokers, names, partitions, "read_committed");
    let ids: std::collections::BTreeSet<String> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    let valid = (0..partitions)
        .flat_map(|p| (0..ends[p as usize]).map(move |o| (p, o)))
        .filter(|(p, o)| truth.event(*p, *o).unwrap().poison.is_none())
        .count();
    assert_eq!(ids.len(), valid);
}

#[test]
fn the_transactional_sink_commits_rows_checkpoint_and_offset_together_across_crashes() {
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(3).unwrap();
    let names = Names::new("mock");
    cluster.create_topic(&names.input, 3, 1).unwrap();
    cluster.create_topic(&names.output, 3, 1).unwrap();
    cluster.create_topic(&names.checkpoints, 2, 1).unwrap();
    crashes_inside_transactions(&cluster.bootstrap_servers(), &names);
}
