//! The executor following a changing assignment (what a consumer group does to it), and
//! pausing readers when downstream is full, with in-memory partitions: revocations and
//! reassignments in the middle of the stream lose and duplicate nothing, every revoked
//! partition is checkpointed and acknowledged before its revocation is answered.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use support::{tasks, wait_for};
use weir_connectors::{
    EventGenerator, GeneratorConfig, JsonlDlq, JsonlDlqConfig, JsonlSink, JsonlSinkConfig,
};
use weir_runtime::error::Result;
use weir_runtime::testkit::MemorySource;
use weir_runtime::{
    Assignment, CheckpointStore, EpochParticipant, Executor, ExecutorConfig, Guarantee,
    LocalCheckpointStore, Metrics, PartitionReader, Shutdown, SinkWriter, Source, TopicPartition,
    WriteOutcome,
};

/// In-memory partitions whose assignment the test drives, recording acknowledgements.
struct ScriptedSource {
    inner: MemorySource,
    feed: Option<Receiver<Assignment>>,
    acks: Arc<Mutex<Vec<(i32, i64)>>>,
}

impl Source for ScriptedSource {
    fn name(&self) -> &str {
        "scripted"
    }
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        self.inner.partitions()
    }
    fn assignments(&mut self) -> Result<Option<Receiver<Assignment>>> {
        Ok(self.feed.take())
    }
    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        self.inner.open(topic, partition, next_offset)
    }
    fn acknowledge(&mut self, _topic: &Arc<str>, partition: i32, next_offset: i64) -> Result<()> {
        self.acks.lock().unwrap().push((partition, next_offset));
        Ok(())
    }
}

/// Bound on every wait of these tests.
const LIMIT: Duration = Duration::from_secs(60);

fn generator() -> GeneratorConfig {
    GeneratorConfig {
        seed: 5,
        sensors: 30,
        partitions: 3,
        events: Some(30_000),
        disorder_ms: 200,
        poison_ratio: 0.01,
        ..Default::default()
    }
}

fn memory_source(g: &GeneratorConfig) -> MemorySource {
    let truth = EventGenerator::new(g);
    let partitions: BTreeMap<i32, _> = (0..g.partitions as i32)
        .map(|p| {
            let n = truth.events_in_partition(p).unwrap() as usize;
            (p, truth.messages(p, 0, n))
        })
        .collect();
    let mut source = MemorySource::new("events", partitions);
    source.unbounded = true; // a Kafka topic does not end
    source.read_sizes = Some(vec![7, 50, 13, 101]);
    source
}

fn config() -> ExecutorConfig {
    let mut config = ExecutorConfig::new("e2e");
    config.cpu_threads = 2;
    config.max_rows = 64;
    config.linger = Duration::from_millis(2);
    config.checkpoint_interval = Duration::from_millis(5);
    config
}

fn sinks(dir: &std::path::Path) -> (Vec<Box<dyn SinkWriter>>, JsonlDlq) {
    let sink = JsonlSink::new(
        "out",
        &JsonlSinkConfig {
            path: dir.join("out"),
        },
    )
    .unwrap();
    let dlq = JsonlDlq::new(&JsonlDlqConfig {
        path: dir.join("dlq"),
    })
    .unwrap();
    (vec![Box::new(sink)], dlq)
}

fn tp(p: i32) -> TopicPartition {
    (Arc::from("events"), p)
}

fn assign(feed: &Sender<Assignment>, parts: &[i32]) -> Vec<TopicPartition> {
    let (done, answer) = bounded(1);
    feed.send(Assignment::Assigned {
        partitions: parts.iter().map(|p| tp(*p)).collect(),
        done,
    })
    .unwrap();
    answer.recv_timeout(Duration::from_secs(30)).unwrap()
}

fn revoke(feed: &Sender<Assignment>, parts: &[i32], lost: bool) {
    let (done, answer) = bounded(1);
    feed.send(Assignment::Revoked {
        partitions: parts.iter().map(|p| tp(*p)).collect(),
        lost,
        done,
    })
    .unwrap();
    answer.recv_timeout(Duration::from_secs(30)).unwrap();
}

#[test]
fn revocations_and_reassignments_mid_stream_lose_and_duplicate_nothing() {
    let g = generator();
    let truth = EventGenerator::new(&g);
    let total: u64 = (0..3).map(|p| truth.events_in_partition(p).unwrap()).sum();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalCheckpointStore::new(dir.path().join("ckpt"), "e2e"));
    let (feed, changes) = unbounded();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let (sinks, dlq) = sinks(dir.path());
    let executor = Executor::new(
        config(),
        Box::new(ScriptedSource {
            inner: memory_source(&g),
            feed: Some(changes),
            acks: acks.clone(),
        }),
        tasks(),
        sinks,
        Box::new(dlq),
        store.clone(),
    );
    let metrics: Arc<Metrics> = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let consumed = || metrics.snapshot().consumed;

    assert_eq!(assign(&feed, &[0, 1, 2]).len(), 3);
    assert_eq!(metrics.owned_partitions(), 3);
    // Revoke and give back partitions at several points of the stream.
    for (round, (take, threshold)) in [(vec![1], 0.1), (vec![0, 2], 0.3), (vec![0, 1, 2], 0.6)]
        .into_iter()
        .enumerate()
    {
        wait_for("progress", LIMIT, || {
            consumed() as f64 >= threshold * total as f64
        });
        revoke(&feed, &take, false);
        assert_eq!(
            metrics.owned_partitions(),
            3 - take.len() as u64,
            "round {round}"
        );
        // Answered only after each revoked partition's checkpoint was stored and acknowledged.
        for p in &take {
            let stored = store.load(&Arc::from("events"), *p).unwrap().unwrap();
            let acked = acks
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|a| a.0 == *p)
                .copied();
            assert_eq!(
                acked,
                Some((*p, stored.next_offset)),
                "round {round}, partition {p}"
            );
        }
        assert_eq!(assign(&feed, &take).len(), take.len());
        assert_eq!(metrics.owned_partitions(), 3);
    }
    // A partition already owned is not opened twice.
    assert!(assign(&feed, &[2]).is_empty());

    // Lost (this worker was evicted): stopped without a last checkpoint, its uncommitted
    // work discarded; the next owner (here: this worker again) redoes it from the last one.
    wait_for("progress", LIMIT, || {
        consumed() as f64 >= 0.8 * total as f64
    });
    let acked = acks.lock().unwrap().len();
    revoke(&feed, &[0], true);
    assert_eq!(metrics.owned_partitions(), 2);
    let stored = store.load(&Arc::from("events"), 0).unwrap().unwrap();
    let acks_after: Vec<(i32, i64)> = acks.lock().unwrap()[acked..].to_vec();
    assert!(
        acks_after
            .iter()
            .filter(|a| a.0 == 0)
            .all(|a| a.1 <= stored.next_offset),
        "a lost partition's last checkpoint was stored"
    );
    assert_eq!(assign(&feed, &[0]).len(), 1);

    // Re-read after the lost revocation: at least everything, once per message in output.
    wait_for("every partition read to its end", LIMIT, || {
        (0..3).all(|p| {
            store
                .load(&Arc::from("events"), p)
                .unwrap()
                .map(|c| c.next_offset)
                == Some(truth.events_in_partition(p).unwrap() as i64)
        })
    });
    stop.trigger();
    let summary = handle.join().unwrap().unwrap();
    assert!(summary.counters.consumed >= total);
    assert_eq!(metrics.assignments(), (3 + 1 + 2 + 3 + 1, 1 + 2 + 3 + 1));
    support::assert_exactly_once(&g, dir.path());
}

/// A sink that takes its time, so that the channels fill.
struct SlowSink(Duration);

impl EpochParticipant for SlowSink {
    fn prepare(&mut self, _partition: &weir_runtime::Lane, _epoch: u64) -> Result<()> {
        Ok(())
    }
}

impl SinkWriter for SlowSink {
    fn name(&self) -> &str {
        "slow"
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    fn write(
        &mut self,
        _partition: &weir_runtime::Lane,
        batch: &weir_runtime::arrow::record_batch::RecordBatch,
    ) -> Result<WriteOutcome> {
        std::thread::sleep(self.0);
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}

#[test]
fn a_reader_pauses_its_partition_while_downstream_is_full_and_resumes_after() {
    let g = GeneratorConfig {
        events: Some(3_000),
        ..generator()
    };
    let mut source = memory_source(&g);
    source.unbounded = false;
    let pauses = source.pauses.clone();
    let dir = tempfile::tempdir().unwrap();
    let (mut sinks, dlq) = sinks(dir.path());
    sinks.push(Box::new(SlowSink(Duration::from_millis(40))));
    let mut config = config();
    config.channel_capacity = 1;
    let executor = Executor::new(
        config,
        Box::new(source),
        tasks(),
        sinks,
        Box::new(dlq),
        Arc::new(LocalCheckpointStore::new(dir.path().join("ckpt"), "e2e")),
    );
    let metrics = executor.metrics();
    let summary = executor.run(Shutdown::new()).unwrap();
    assert!(summary.finished);
    assert_eq!(summary.counters.consumed, 3_000);
    support::assert_exactly_once(&g, dir.path());

    let pauses = pauses.lock().unwrap().clone();
    assert!(
        metrics.reader_pauses() > 0,
        "a full channel paused a reader"
    );
    assert_eq!(pauses.len() as u64, 2 * metrics.reader_pauses());
    // Per partition: pause, resume, pause, resume... never two pauses in a row.
    for p in 0..3 {
        let seq: Vec<bool> = pauses.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
        for (i, paused) in seq.iter().enumerate() {
            assert_eq!(*paused, i % 2 == 0, "partition {p}: {seq:?}");
        }
    }
}
