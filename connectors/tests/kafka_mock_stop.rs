//! A stop with the broker down is bounded (issue 10, point 9), over librdkafka's in-process
//! mock cluster: the worker follows a consumer group over 4 partitions, reads everything,
//! the broker goes down, and the stop is sent. The last checkpoints are stored (they are the
//! truth), the group commits of all partitions wait under one `commit_timeout_ms` together,
//! and the run ends successfully, reporting that the group's offsets lag the checkpoints.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use support::{tasks, wait_for};
use weir_connectors::kafka::{KafkaSource, KafkaSourceConfig};
use weir_connectors::{
    EventGenerator, GeneratorConfig, JsonlDlq, JsonlDlqConfig, JsonlSink, JsonlSinkConfig,
};
use weir_runtime::{
    CheckpointStore, Executor, ExecutorConfig, LocalCheckpointStore, Shutdown, SinkWriter,
};

const TOPIC: &str = "events";
const PARTITIONS: i32 = 4;

#[test]
fn a_stop_with_the_broker_down_ends_within_the_commit_bound_and_says_the_group_lags() {
    let g = GeneratorConfig {
        seed: 5,
        sensors: 40,
        partitions: PARTITIONS as u32,
        events: Some(4_000),
        disorder_ms: 200,
        poison_ratio: 0.0,
        ..Default::default()
    };
    let truth = EventGenerator::new(&g);
    let total: u64 = (0..PARTITIONS)
        .map(|p| truth.events_in_partition(p).unwrap())
        .sum();
    let cluster: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    support::produce_generated(&brokers, TOPIC, &truth, PARTITIONS, (0, 1));

    let mut source = KafkaSourceConfig::new(&brokers, &[TOPIC], "weir-mock-stop");
    source.connect_timeout_ms = 5_000;
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ] {
        source.options.insert(k.into(), v.into());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = ExecutorConfig::new("stop");
    config.cpu_threads = 2;
    config.max_rows = 500;
    config.linger = Duration::from_millis(10);
    // No checkpoint before the stop: only the stop's commits are left to make.
    config.checkpoint_interval = Duration::from_secs(600);
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
        Box::new(KafkaSource::new(source).unwrap()),
        tasks(),
        sinks,
        Box::new(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.path().join("dlq"),
            })
            .unwrap(),
        ),
        Arc::new(LocalCheckpointStore::new(dir.path().join("ckpt"), "stop")),
    );
    let metrics = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(executor.run(shutdown));
    });
    wait_for("everything read", Duration::from_secs(60), || {
        metrics.snapshot().consumed >= total
    });

    cluster.broker_down(1).unwrap();
    let stopped = Instant::now();
    stop.trigger();
    let bound = Duration::from_secs(30);
    let result = done
        .recv_timeout(bound)
        .unwrap_or_else(|_| panic!("the stop took more than {bound:?} with the broker down"));
    let took = stopped.elapsed();
    eprintln!("stop with the broker down took {took:?}");
    let summary = result.expect("a stop with the broker down still succeeds");

    // The checkpoints are stored at the end of every partition.
    let store = LocalCheckpointStore::new(dir.path().join("ckpt"), "stop");
    for p in 0..PARTITIONS {
        let c = store.load(TOPIC, p).unwrap().expect("a checkpoint");
        assert_eq!(
            c.next_offset,
            truth.events_in_partition(p).unwrap() as i64,
            "partition {p}"
        );
    }
    // The run says which group offsets lag, and where the checkpoints are.
    let mut lagging = summary.unacknowledged.clone();
    lagging.sort();
    let want: Vec<((Arc<str>, i32), i64)> = (0..PARTITIONS)
        .map(|p| {
            (
                (Arc::from(TOPIC), p),
                truth.events_in_partition(p).unwrap() as i64,
            )
        })
        .collect();
    assert_eq!(lagging, want);
}
