//! The whole executor over librdkafka's in-process mock cluster, following a consumer group,
//! while faults are injected: Fetch and OffsetCommit request errors, and the broker going
//! down and coming back in the middle of the stream. Every event must reach the exactly-once
//! JSONL sink or the DLQ once, the worker must keep going, and the group's committed offsets
//! must end at the end of every partition.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::{tasks, wait_for};
use weir_connectors::kafka::{KafkaOffsetCommitter, KafkaSource, KafkaSourceConfig};
use weir_connectors::{
    EventGenerator, GeneratorConfig, JsonlDlq, JsonlDlqConfig, JsonlSink, JsonlSinkConfig,
};
use weir_runtime::{
    CheckpointStore, Executor, ExecutorConfig, LocalCheckpointStore, Shutdown, SinkWriter,
};

const TOPIC: &str = "events";

fn produce(brokers: &str, truth: &EventGenerator, partitions: i32, part: (usize, usize)) -> u64 {
    support::produce_generated(brokers, TOPIC, truth, partitions, part)
}

fn source_config(brokers: &str) -> KafkaSourceConfig {
    let mut config = KafkaSourceConfig::new(brokers, &[TOPIC], "weir-mock");
    config.connect_timeout_ms = 5_000;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        ("reconnect.backoff.max.ms", "300"),
        ("retry.backoff.max.ms", "300"),
    ] {
        config.options.insert(k.into(), v.into());
    }
    config
}

#[test]
fn fetch_and_commit_errors_and_a_broker_outage_lose_and_duplicate_nothing() {
    let partitions = 3;
    let g = GeneratorConfig {
        seed: 17,
        sensors: 60,
        partitions: partitions as u32,
        events: Some(12_000),
        disorder_ms: 200,
        poison_ratio: 0.01,
        ..Default::default()
    };
    let truth = EventGenerator::new(&g);
    let total: u64 = (0..partitions)
        .map(|p| truth.events_in_partition(p).unwrap())
        .sum();
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let mut sent = produce(&brokers, &truth, partitions, (0, 3));

    // Fetch and OffsetCommit requests fail from the start.
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            // Not retried by librdkafka: the commit fails, a later checkpoint makes it good.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_COMMIT_OFFSET_SIZE,
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new("e2e");
    config.cpu_threads = 2;
    config.max_rows = 500;
    config.linger = Duration::from_millis(10);
    config.checkpoint_interval = Duration::from_millis(100);
    let sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(
        JsonlSink::new(
            "out",
            &JsonlSinkConfig {
                path: dir.path().join("out"),
            },
        )
        .unwrap(),
    )];
    let executor = Executor::new(
        config,
        Box::new(KafkaSource::new(source_config(&brokers)).unwrap()),
        tasks(),
        sinks,
        Box::new(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.path().join("dlq"),
            })
            .unwrap(),
        ),
        Arc::new(LocalCheckpointStore::new(dir.path().join("ckpt"), "e2e")),
    );
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let limit = Duration::from_secs(90);
    // Progress is read from the checkpoints: a partition the group declares lost (a session
    // that expires on a loaded machine) is re-read from its last checkpoint, so counts of
    // consumed messages may exceed what was sent; the output must not.
    let store = LocalCheckpointStore::new(dir.path().join("ckpt"), "e2e");
    let at_least = |store: &LocalCheckpointStore, part: (usize, usize)| {
        (0..partitions).all(|p| {
            let n = truth.events_in_partition(p).unwrap() as i64;
            let want = n * (part.0 as i64 + 1) / part.1 as i64;
            store
                .load(TOPIC, p)
                .unwrap()
                .is_some_and(|c| c.next_offset >= want)
        })
    };
    wait_for("the first third", limit, || at_least(&store, (0, 3)));

    // The broker goes down while the second third is produced, and comes back.
    cluster.broker_down(1).unwrap();
    let producer_brokers = brokers.clone();
    let g2 = g.clone();
    let producing = std::thread::spawn(move || {
        let truth = EventGenerator::new(&g2);
        produce(&producer_brokers, &truth, partitions, (1, 3))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!handle.is_finished(), "the worker survives the outage");
    cluster.broker_up(1).unwrap();
    sent += producing.join().unwrap();
    sent += produce(&brokers, &truth, partitions, (2, 3));
    assert_eq!(sent, total);
    wait_for("everything", limit, || at_least(&store, (2, 3)));
    stop.trigger();
    let summary = handle.join().unwrap().unwrap();
    assert!(summary.counters.consumed >= total);
    assert!(
        metrics.acknowledge_failures() > 0,
        "the injected commit errors failed some commits"
    );

    support::assert_exactly_once(&g, dir.path());
    let committer = KafkaOffsetCommitter::new(&source_config(&brokers)).unwrap();
    for p in 0..partitions {
        let end = truth.events_in_partition(p).unwrap() as i64;
        assert_eq!(
            committer.committed(TOPIC, p).unwrap(),
            Some(end),
            "partition {p}"
        );
    }
}
