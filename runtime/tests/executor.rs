//! The executor with the runtime's own test doubles only (`testkit`): in-memory partitions,
//! an epoch-aware memory sink and DLQ that keep only what was committed. It follows a changing
//! assignment (what a consumer group does to it) without losing or duplicating a message,
//! answers a revocation only after the partition's checkpoint is stored and acknowledged,
//! pauses readers while downstream is full, and after a crash resumes from the checkpoints so
//! every message is exactly once in the output or in the DLQ. Its metrics count what the
//! sink and the DLQ got, and readiness follows the run: ready once the partitions are
//! restored, not while a fatal error drains.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use weir_runtime::arrow::array::{Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::Result;
use weir_runtime::executor::TaskFactory;
use weir_runtime::testkit::{json_message, MemoryDlq, MemorySink, MemorySource};
use weir_runtime::{
    Assignment, CheckpointStore, Decoded, Decoder, EpochParticipant, ErrorKind, Executor,
    ExecutorConfig, Guarantee, Lane, LocalCheckpointStore, Metrics, PartitionReader, PartitionTask,
    RawBatch, RawMessage, RowReject, Shutdown, SinkWriter, Source, TopicPartition, WriteOutcome,
    OFFSET_COLUMN,
};

const TOPIC: &str = "events";
/// Bound on every wait of these tests.
const LIMIT: Duration = Duration::from_secs(60);

/// The messages of `partitions` partitions, `per_partition` each: JSON events keyed by one
/// of 30 sensors, every 97th one not JSON at all (poison for the DLQ).
fn messages(partitions: i32, per_partition: i64) -> BTreeMap<i32, Vec<RawMessage>> {
    (0..partitions)
        .map(|p| {
            let messages = (0..per_partition)
                .map(|o| {
                    let sensor = format!("s{}", (o * 7 + i64::from(p)) % 30);
                    let payload = if o % 97 == 13 {
                        "{not json".to_string()
                    } else {
                        format!(r#"{{"event_id":"{p}-{o}","sensor_id":"{sensor}"}}"#)
                    };
                    json_message(o, &sensor, &payload)
                })
                .collect();
            (p, messages)
        })
        .collect()
}

fn is_poison(m: &RawMessage) -> bool {
    m.payload.as_deref() == Some(b"{not json".as_slice())
}

/// Reads `event_id` and `sensor_id`; anything that is not a JSON object is rejected.
struct EventDecoder(SchemaRef);

impl Decoder for EventDecoder {
    fn schema(&self) -> SchemaRef {
        self.0.clone()
    }

    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
        let (mut ids, mut sensors, mut offsets, mut rejects) = (vec![], vec![], vec![], vec![]);
        for m in &raw.messages {
            let value: Option<serde_json::Value> = m
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_slice(p).ok());
            let field = |k: &str| value.as_ref()?.get(k)?.as_str().map(str::to_string);
            match (field("event_id"), field("sensor_id")) {
                (Some(id), Some(sensor)) => {
                    ids.push(id);
                    sensors.push(sensor);
                    offsets.push(m.offset);
                }
                _ => rejects.push(RowReject {
                    offset: m.offset,
                    kind: ErrorKind::InvalidJson,
                    message: "not a JSON event".into(),
                }),
            }
        }
        let batch = RecordBatch::try_new(
            self.0.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(sensors)),
                Arc::new(weir_runtime::arrow::array::Int64Array::from(offsets)),
            ],
        )?;
        Ok(Decoded {
            batch: Some(batch),
            rejects,
        })
    }
}

fn tasks() -> TaskFactory {
    let schema = Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
    ]));
    Box::new(move |topic, partition| {
        Ok(PartitionTask::new(
            Arc::from("executor"),
            topic.clone(),
            partition,
            Box::new(EventDecoder(schema.clone())),
            Vec::new(),
        ))
    })
}

/// Every valid message of `input` is exactly once in the committed rows of `sink`, and every
/// poison one exactly once in the committed letters of `dlq`, with its original bytes.
fn assert_exactly_once(input: &BTreeMap<i32, Vec<RawMessage>>, sink: &MemorySink, dlq: &MemoryDlq) {
    let mut rows = BTreeMap::new();
    for batch in sink.committed() {
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let sensors = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            let previous = rows.insert(ids.value(i).to_string(), sensors.value(i).to_string());
            assert!(previous.is_none(), "{} written twice", ids.value(i));
        }
    }
    let mut dead = BTreeMap::new();
    for letter in dlq.committed.lock().unwrap().iter() {
        let at = (letter.partition, letter.offset);
        assert_eq!(letter.kind, ErrorKind::InvalidJson);
        assert!(
            dead.insert(at, letter.payload.clone()).is_none(),
            "{at:?} dead-lettered twice"
        );
    }
    let (mut expected_rows, mut expected_dead) = (BTreeMap::new(), BTreeMap::new());
    for (p, messages) in input {
        for m in messages {
            if is_poison(m) {
                expected_dead.insert((*p, m.offset), m.payload.clone());
            } else {
                let sensor = String::from_utf8(m.key.clone().unwrap()).unwrap();
                expected_rows.insert(format!("{p}-{}", m.offset), sensor);
            }
        }
    }
    assert_eq!(rows.len(), expected_rows.len(), "rows in the sink");
    assert_eq!(rows, expected_rows);
    assert_eq!(dead, expected_dead);
    assert!(!expected_dead.is_empty());
}

fn config() -> ExecutorConfig {
    let mut config = ExecutorConfig::new("executor");
    config.cpu_threads = 2;
    config.max_rows = 64;
    config.linger = Duration::from_millis(2);
    config.checkpoint_interval = Duration::from_millis(5);
    config
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

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

fn tp(p: i32) -> TopicPartition {
    (Arc::from(TOPIC), p)
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
    let input = messages(3, 10_000);
    let total = 30_000u64;
    let mut source = MemorySource::new(TOPIC, input.clone());
    source.unbounded = true; // a Kafka topic does not end
    source.read_sizes = Some(vec![7, 50, 13, 101]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalCheckpointStore::new(
        dir.path().join("ckpt"),
        "executor",
    ));
    let (feed, changes) = unbounded();
    let acks = Arc::new(Mutex::new(Vec::new()));
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let executor = Executor::new(
        config(),
        Box::new(ScriptedSource {
            inner: source,
            feed: Some(changes),
            acks: acks.clone(),
        }),
        tasks(),
        vec![Box::new(sink.clone())],
        Box::new(dlq.clone()),
        store.clone(),
    );
    let metrics: Arc<Metrics> = executor.metrics();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = std::thread::spawn(move || executor.run(shutdown));
    let consumed = || metrics.snapshot().consumed;
    let stored = |p: i32| store.load(&Arc::from(TOPIC), p).unwrap();

    assert_eq!(assign(&feed, &[0, 1, 2]).len(), 3);
    assert_eq!(metrics.owned_partitions(), 3);
    // Revoke and give back partitions at several points of the stream.
    for (round, (take, threshold)) in [(vec![1], 0.1), (vec![0, 2], 0.3), (vec![0, 1, 2], 0.6)]
        .into_iter()
        .enumerate()
    {
        wait_for("progress", || consumed() as f64 >= threshold * total as f64);
        revoke(&feed, &take, false);
        assert_eq!(
            metrics.owned_partitions(),
            3 - take.len() as u64,
            "round {round}"
        );
        // Answered only after each revoked partition's checkpoint was stored and acknowledged.
        for p in &take {
            let checkpoint = stored(*p).unwrap();
            let acked = acks
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|a| a.0 == *p)
                .copied();
            assert_eq!(
                acked,
                Some((*p, checkpoint.next_offset)),
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
    wait_for("progress", || consumed() as f64 >= 0.8 * total as f64);
    let acked = acks.lock().unwrap().len();
    revoke(&feed, &[0], true);
    assert_eq!(metrics.owned_partitions(), 2);
    let last = stored(0).unwrap();
    assert!(
        acks.lock().unwrap()[acked..]
            .iter()
            .filter(|a| a.0 == 0)
            .all(|a| a.1 <= last.next_offset),
        "nothing past a lost partition's last checkpoint is acknowledged"
    );
    assert_eq!(assign(&feed, &[0]).len(), 1);

    wait_for("every partition read to its end", || {
        (0..3).all(|p| stored(p).map(|c| c.next_offset) == Some(10_000))
    });
    stop.trigger();
    let summary = handle.join().unwrap().unwrap();
    assert!(summary.counters.consumed >= total);
    assert_eq!(metrics.assignments(), (3 + 1 + 2 + 3 + 1, 1 + 2 + 3 + 1));
    assert_exactly_once(&input, &sink, &dlq);
}

/// A sink that takes its time, so that the channels fill.
struct SlowSink(Duration);

impl EpochParticipant for SlowSink {
    fn prepare(&mut self, _lane: &Lane, _epoch: u64) -> Result<()> {
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
    fn write(&mut self, _lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        std::thread::sleep(self.0);
        Ok(WriteOutcome {
            accepted: batch.num_rows(),
            rejected: Vec::new(),
        })
    }
}

#[test]
fn a_reader_pauses_its_partition_while_downstream_is_full_and_resumes_after() {
    let input = messages(3, 1_000);
    let mut source = MemorySource::new(TOPIC, input.clone());
    source.read_sizes = Some(vec![7, 50, 13, 101]);
    let pauses = source.pauses.clone();
    let dir = tempfile::tempdir().unwrap();
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let mut config = config();
    config.channel_capacity = 1;
    let executor = Executor::new(
        config,
        Box::new(source),
        tasks(),
        vec![
            Box::new(sink.clone()),
            Box::new(SlowSink(Duration::from_millis(40))),
        ],
        Box::new(dlq.clone()),
        Arc::new(LocalCheckpointStore::new(
            dir.path().join("ckpt"),
            "executor",
        )),
    );
    let metrics = executor.metrics();
    let summary = executor.run(Shutdown::new()).unwrap();
    assert!(summary.finished);
    assert_eq!(summary.counters.consumed, 3_000);
    assert_exactly_once(&input, &sink, &dlq);

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

#[test]
fn a_crash_and_restart_leaves_every_message_exactly_once_in_the_sink_or_the_dlq() {
    let input = messages(3, 1_000);
    let dir = tempfile::tempdir().unwrap();
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let run = |crash: Option<usize>| {
        let mut source = MemorySource::new(TOPIC, input.clone());
        source.read_sizes = Some(vec![7, 50, 13, 101]);
        let mut sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(sink.clone())];
        if crash.is_some() {
            sinks.push(Box::new(MemorySink {
                fail_after_writes: crash,
                ..Default::default()
            }));
        }
        let mut config = config();
        config.checkpoint_interval = Duration::from_millis(1);
        let executor = Executor::new(
            config,
            Box::new(source),
            tasks(),
            sinks,
            Box::new(dlq.clone()),
            Arc::new(LocalCheckpointStore::new(
                dir.path().join("ckpt"),
                "executor",
            )),
        );
        executor.run(Shutdown::new())
    };
    assert!(run(Some(25)).is_err(), "the injected crash stops the run");
    let partial: usize = sink.committed().iter().map(RecordBatch::num_rows).sum();
    assert!(
        partial > 0 && partial < 3_000,
        "the crash came after some checkpoints and before the end: {partial} rows"
    );
    // What the crash left staged is what a real crash loses: the restart redoes it.
    let summary = run(None).unwrap();
    assert!(summary.finished);
    assert_exactly_once(&input, &sink, &dlq);
}

/// A memory sink whose `prepare` of one lane from some epoch on waits, once armed, until the
/// test opens it: a drain that outlasts the group's wait for a revocation.
#[derive(Clone)]
struct HeldSink {
    inner: MemorySink,
    hold: Arc<Hold>,
}

#[derive(Default)]
struct Hold {
    /// The lane and the first epoch whose prepare waits, and whether one is waiting now.
    state: Mutex<(Option<(Lane, u64)>, bool)>,
    changed: std::sync::Condvar,
}

impl Hold {
    fn arm(&self, lane: Lane, from_epoch: u64) {
        *self.state.lock().unwrap() = (Some((lane, from_epoch)), false);
    }

    fn waiting(&self) -> bool {
        self.state.lock().unwrap().1
    }

    fn open(&self) {
        *self.state.lock().unwrap() = (None, false);
        self.changed.notify_all();
    }
}

impl EpochParticipant for HeldSink {
    fn recover(&mut self, lane: &Lane, committed: Option<u64>) -> Result<()> {
        self.inner.recover(lane, committed)
    }
    fn prepare(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        let held = |s: &(Option<(Lane, u64)>, bool)| {
            s.0.as_ref()
                .is_some_and(|(l, from)| l == lane && epoch >= *from)
        };
        let mut state = self.hold.state.lock().unwrap();
        if held(&state) {
            state.1 = true;
            while held(&state) {
                state = self.hold.changed.wait(state).unwrap();
            }
        }
        drop(state);
        self.inner.prepare(lane, epoch)
    }
    fn commit(&mut self, lane: &Lane, epoch: u64) -> Result<()> {
        self.inner.commit(lane, epoch)
    }
}

impl SinkWriter for HeldSink {
    fn name(&self) -> &str {
        "held"
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    fn write(&mut self, lane: &Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        self.inner.write(lane, batch)
    }
}

/// One committed output: the rows of both sinks and the letters of both DLQs together.
fn merged(sinks: &[&MemorySink], dlqs: &[&MemoryDlq]) -> (MemorySink, MemoryDlq) {
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    for s in sinks {
        let rows = s.committed();
        sink.state.lock().unwrap().committed.extend(rows);
    }
    for d in dlqs {
        let letters = d.committed.lock().unwrap().clone();
        dlq.committed.lock().unwrap().extend(letters);
    }
    (sink, dlq)
}

#[test]
fn a_late_revocation_does_not_overwrite_the_new_owners_checkpoint_or_output() {
    let input = messages(2, 5_000);
    let dir = tempfile::tempdir().unwrap();
    // Two workers on one checkpoint directory, each with its own store object.
    let store = |_: ()| {
        Arc::new(LocalCheckpointStore::new(
            dir.path().join("ckpt"),
            "executor",
        ))
    };
    let worker = |hold: Arc<Hold>| {
        let mut source = MemorySource::new(TOPIC, input.clone());
        source.unbounded = true;
        source.read_sizes = Some(vec![7, 50, 13, 101]);
        let (feed, changes) = unbounded();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
        let executor = Executor::new(
            config(),
            Box::new(ScriptedSource {
                inner: source,
                feed: Some(changes),
                acks: acks.clone(),
            }),
            tasks(),
            vec![Box::new(HeldSink {
                inner: sink.clone(),
                hold,
            })],
            Box::new(dlq.clone()),
            store(()),
        );
        let metrics = executor.metrics();
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let handle = std::thread::spawn(move || executor.run(shutdown));
        (feed, acks, sink, dlq, metrics, stop, handle)
    };
    let stored = |p: i32| store(()).load(TOPIC, p).unwrap();

    // A's second checkpoint of partition 0 stops before the store (its first is stored), and
    // the group revokes the partition meanwhile.
    let hold_a = Arc::new(Hold::default());
    hold_a.arm(Lane::new(TOPIC, 0), 2);
    let (feed_a, acks_a, sink_a, dlq_a, metrics_a, stop_a, handle_a) = worker(hold_a.clone());
    assert_eq!(assign(&feed_a, &[0, 1]).len(), 2);
    wait_for("A's sink to hold partition 0", || hold_a.waiting());
    let (revoked, released) = bounded(1);
    feed_a
        .send(Assignment::Revoked {
            partitions: vec![tp(0)],
            lost: false,
            done: revoked,
        })
        .unwrap();
    let acked_by_a = |p: i32| acks_a.lock().unwrap().iter().filter(|a| a.0 == p).count();
    let acks_before = acked_by_a(0);
    let last_of_a = stored(0).unwrap();

    // The group stops waiting and gives the partition to B, which reads it to its end.
    let (feed_b, _acks_b, sink_b, dlq_b, metrics_b, stop_b, handle_b) =
        worker(Arc::new(Hold::default()));
    assert_eq!(assign(&feed_b, &[0]).len(), 1);
    wait_for("B to checkpoint partition 0 at its end", || {
        stored(0).is_some_and(|c| c.next_offset == 5_000)
    });
    let of_b = stored(0).unwrap();
    assert!(of_b.generation > last_of_a.generation, "B claimed the lane");

    // A's drain goes on: its checkpoint is refused, the partition dropped, the revocation
    // answered, and A goes on with partition 1.
    hold_a.open();
    released.recv_timeout(LIMIT).unwrap();
    assert_eq!(metrics_a.fenced_partitions(), 1);
    assert_eq!(stored(0), Some(of_b.clone()), "B's checkpoint survives");
    assert_eq!(acked_by_a(0), acks_before, "A acknowledged nothing after");
    wait_for("A to read partition 1 to its end", || {
        stored(1).is_some_and(|c| c.next_offset == 5_000)
    });

    stop_a.trigger();
    stop_b.trigger();
    handle_a.join().unwrap().unwrap();
    handle_b.join().unwrap().unwrap();
    assert_eq!(metrics_b.fenced_partitions(), 0);
    let last = stored(0).unwrap();
    assert_eq!(
        (last.generation, last.next_offset),
        (of_b.generation, 5_000),
        "B's checkpoint survives both stops"
    );
    // Every message once in what the two workers committed: A's staged epoch of partition 0
    // was never published, and B redid it.
    let (sink, dlq) = merged(&[&sink_a, &sink_b], &[&dlq_a, &dlq_b]);
    assert_exactly_once(&input, &sink, &dlq);
}

#[test]
fn the_metrics_of_a_run_count_each_sinks_rows_the_dead_letters_and_the_bytes_read() {
    let input = messages(3, 500);
    let dir = tempfile::tempdir().unwrap();
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let metrics = Arc::new(Metrics::default());
    let executor = Executor::new(
        config(),
        Box::new(MemorySource::new(TOPIC, input.clone())),
        tasks(),
        vec![Box::new(sink.clone())],
        Box::new(dlq.clone()),
        Arc::new(LocalCheckpointStore::new(
            dir.path().join("ckpt"),
            "executor",
        )),
    )
    .with_metrics(metrics.clone());
    let summary = executor.run(Shutdown::new()).unwrap();
    assert!(summary.finished);
    let written: usize = sink.committed().iter().map(RecordBatch::num_rows).sum();
    assert_eq!(metrics.sink_rows(), vec![(sink.name(), written as u64)]);
    let letters = dlq.committed.lock().unwrap().len() as u64;
    assert_eq!(
        metrics.dead_letters(),
        vec![(ErrorKind::InvalidJson, "decode", letters)]
    );
    assert_eq!(metrics.snapshot().dlq, letters);
    let bytes: usize = input
        .values()
        .flatten()
        .map(|m| m.payload.as_ref().map_or(0, Vec::len) + m.key.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(metrics.bytes_in(), bytes as u64);
    let [(_, checkpoints), (_, batches), _] = metrics.histograms();
    assert_eq!(checkpoints.read().1, metrics.checkpoints());
    assert!(batches.read().1 > 0);
    // The run is over: no partition is tracked, and it is not ready (but healthy).
    assert!(metrics.partitions().is_empty());
    assert!(!metrics.ready());
    assert!(metrics.healthy());
}

#[test]
fn a_run_that_fails_is_neither_ready_nor_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let failing = MemorySink {
        fail_after_writes: Some(3),
        ..Default::default()
    };
    let executor = Executor::new(
        config(),
        Box::new(MemorySource::new(TOPIC, messages(2, 500))),
        tasks(),
        vec![Box::new(failing)],
        Box::new(MemoryDlq::default()),
        Arc::new(LocalCheckpointStore::new(
            dir.path().join("ckpt"),
            "executor",
        )),
    )
    .with_metrics(metrics.clone());
    assert!(executor.run(Shutdown::new()).is_err());
    assert!(!metrics.ready());
    assert!(!metrics.healthy());
}

/// A partition reader that waits for `start` before its first batch, then, on every later
/// read, until `hold` closes: the test decides when input flows and how long a drain lasts.
struct GatedReader {
    inner: Box<dyn PartitionReader>,
    start: Receiver<()>,
    hold: Receiver<()>,
    started: bool,
}

impl PartitionReader for GatedReader {
    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<weir_runtime::ReadResult> {
        if !self.started {
            self.started = true;
            let _ = self.start.recv();
            return self.inner.read(max_rows, linger);
        }
        let _ = self.hold.recv();
        Ok(weir_runtime::ReadResult::End)
    }
}

struct GatedSource {
    inner: MemorySource,
    start: Receiver<()>,
    hold: Receiver<()>,
}

impl Source for GatedSource {
    fn name(&self) -> &str {
        "gated"
    }
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        self.inner.partitions()
    }
    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        Ok(Box::new(GatedReader {
            inner: self.inner.open(topic, partition, next_offset)?,
            start: self.start.clone(),
            hold: self.hold.clone(),
            started: false,
        }))
    }
}

#[test]
fn ready_once_partitions_are_restored_and_not_while_a_fatal_error_drains() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (start_tx, start) = unbounded();
    let (hold_tx, hold) = unbounded::<()>();
    let executor = Executor::new(
        config(),
        Box::new(GatedSource {
            inner: MemorySource::new(TOPIC, messages(1, 100)),
            start,
            hold,
        }),
        tasks(),
        vec![Box::new(MemorySink {
            fail_after_writes: Some(1),
            ..Default::default()
        })],
        Box::new(MemoryDlq::default()),
        Arc::new(LocalCheckpointStore::new(
            dir.path().join("ckpt"),
            "executor",
        )),
    )
    .with_metrics(metrics.clone());
    let run = std::thread::spawn(move || executor.run(Shutdown::new()));
    wait_for("the partition to be restored", || metrics.ready());
    assert!(metrics.healthy());
    // Input flows; the first write fails for good: the run drains while the reader is held.
    start_tx.send(()).unwrap();
    wait_for("the fatal error", || {
        metrics.state() == weir_runtime::metrics::RunState::Failing
    });
    assert!(!metrics.ready(), "not ready while a fatal error drains");
    assert!(!metrics.healthy());
    drop(hold_tx);
    assert!(run.join().unwrap().is_err());
    assert_eq!(metrics.state(), weir_runtime::metrics::RunState::Stopped);
    assert!(!metrics.ready());
}
