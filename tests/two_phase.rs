//! Two-phase windows (GROUP BY keys that span partitions) with a partition that has no input:
//! it must not hold the output back, and once it has followed the others' watermark its own
//! events behind it are late. The oracle checks of two-phase windows (straight, stopped,
//! crashed) are in `window_oracle.rs` and the SQL corpus.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::Receiver;
use weir::operators::SqlOptions;
use weir::pipeline::Pipeline;
use weir_runtime::error::Result;
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::{Assignment, PartitionReader, RawMessage, Shutdown, Source, TopicPartition};

const WINDOW_MS: i64 = 200;
const DISORDER_MS: i64 = 300;
const QUERY: &str = "SELECT region, window_start, count(*) AS n, sum(v) AS s FROM events \
                     GROUP BY region, TUMBLE(ts, INTERVAL '200' MILLISECOND)";
const ORACLE: &str = "SELECT region, \
    CAST(date_bin(INTERVAL '200 milliseconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS BIGINT) AS window_start, \
    count(*) AS n, sum(v) AS s FROM events GROUP BY 1, 2";

fn pipeline(source: impl Source + 'static, sink: &MemorySink, dlq: &MemoryDlq) -> Pipeline {
    let options = SqlOptions {
        max_out_of_orderness_ms: DISORDER_MS,
        ..Default::default()
    };
    Pipeline::new("two-phase")
        .source(source)
        .schema(schema())
        .sql(QUERY, &options)
        .unwrap()
        .sink(sink.clone())
        .dlq(dlq.clone())
        .checkpoint_interval(Duration::from_millis(20))
        .batch(64, Duration::from_millis(5))
        .idle_timeout(Duration::from_millis(300))
        .cpu_threads(2)
}

/// (region, window_start) → (n, s), each window at most once.
fn windows(rows: &[Row]) -> BTreeMap<(String, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for r in rows {
        let start = match &r["window_start"] {
            serde_json::Value::String(_) => panic!("window_start as text: {r:?}"),
            v => v.as_i64().unwrap(),
        };
        let k = (r["region"].as_str().unwrap().to_string(), start);
        let v = (r["n"].as_i64().unwrap(), r["s"].as_i64().unwrap());
        assert!(out.insert(k.clone(), v).is_none(), "window {k:?} twice");
    }
    out
}

#[test]
fn an_idle_partition_does_not_hold_back_windows_that_span_partitions_and_its_late_events_are_dead_lettered(
) {
    // Partitions 0 and 1 carry the events; partition 2 has none and never ends.
    let events = stream(7, 2, 20, 3_000, DISORDER_MS as u64);
    let mut parts = by_partition(&events, |e| Some(e.json().into_bytes()));
    parts.insert(2, Vec::new());
    let mut live = MemorySource::new("events", parts.clone());
    live.unbounded = true;

    // What the two active partitions' watermarks close: every window ending at or before
    // the smaller of their watermarks.
    let watermark = (0..2)
        .map(|p| {
            events
                .iter()
                .filter(|e| e.partition == p)
                .map(|e| e.ts)
                .max()
                .unwrap()
                - DISORDER_MS
        })
        .min()
        .unwrap();
    let all: Vec<&Event> = events.iter().collect();
    let oracle = windows(&rows(&batch_sql(&all, ORACLE)));
    let closed: BTreeMap<_, _> = oracle
        .iter()
        .filter(|((_, start), _)| start + WINDOW_MS <= watermark)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert!(closed.len() > 10 && closed.len() < oracle.len());

    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let run = {
        let p = pipeline(live, &sink, &dlq).checkpoint_dir(dir.path());
        let shutdown = shutdown.clone();
        thread::spawn(move || p.run(shutdown))
    };
    // Without idleness, partition 2 would report no watermark and nothing would be emitted
    // before the (never coming) end of input.
    let deadline = Instant::now() + Duration::from_secs(60);
    while windows(&rows(&sink.committed())).len() < closed.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(400)); // nothing more may come
    shutdown.trigger();
    let summary = run.join().unwrap().unwrap();
    assert!(!summary.finished);
    assert_eq!(
        windows(&rows(&sink.committed())),
        closed,
        "windows emitted while partition 2 was idle"
    );

    // Partition 2 followed the others' watermark, and its checkpoint kept it: an event it
    // now gets for the first window is late. The input then ends, and every other window
    // comes out exactly once.
    let late = Event {
        partition: 2,
        offset: 0,
        key: "k2".into(),
        region: "r2".into(),
        seq: 1,
        v: 1,
        x: 0.0,
        ts: events.iter().map(|e| e.ts).min().unwrap(),
    };
    parts.insert(
        2,
        vec![RawMessage {
            offset: 0,
            key: Some(b"k2".to_vec()),
            payload: Some(late.json().into_bytes()),
            timestamp_ms: None,
            headers: Vec::new(),
        }],
    );
    let summary = pipeline(MemorySource::new("events", parts), &sink, &dlq)
        .checkpoint_dir(dir.path())
        .run(Shutdown::new())
        .unwrap();
    assert!(summary.finished);
    assert_eq!(windows(&rows(&sink.committed())), oracle);
    assert_eq!(dead_letters(&dlq), [(2, 0, "late".to_string())]);
}

/// A source that follows a consumer group.
struct GroupSource(Option<Receiver<Assignment>>);

impl Source for GroupSource {
    fn name(&self) -> &str {
        "group"
    }
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        Ok(Vec::new())
    }
    fn assignments(&mut self) -> Result<Option<Receiver<Assignment>>> {
        Ok(self.0.take())
    }
    fn open(&mut self, _: &Arc<str>, _: i32, _: i64) -> Result<Box<dyn PartitionReader>> {
        unreachable!("no partition is ever assigned")
    }
}

#[test]
fn a_window_spanning_partitions_over_a_consumer_group_is_refused_with_the_fix() {
    let (_tx, rx) = crossbeam_channel::unbounded();
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let err = pipeline(GroupSource(Some(rx)), &sink, &dlq)
        .checkpoint_dir(dir.path())
        .run(Shutdown::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs every partition in this worker")
            && err.contains("assignment = \"manual\""),
        "{err}"
    );
}

#[test]
fn a_bounded_input_run_again_when_longer_goes_on_with_the_later_windows() {
    // The second half of the stream comes an hour later: its windows all follow the first
    // run's, which its end of input emitted in full.
    let mut events = stream(11, 3, 30, 4_000, DISORDER_MS as u64);
    let half = |e: &Event| e.offset >= 600;
    for e in events.iter_mut().filter(|e| half(e)) {
        e.ts += 3_600_000;
    }
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let first: Vec<Event> = events.iter().filter(|e| !half(e)).cloned().collect();
    for input in [&first, &events] {
        let src = MemorySource::new(
            "events",
            by_partition(input, |e| Some(e.json().into_bytes())),
        );
        let summary = pipeline(src, &sink, &dlq)
            .checkpoint_dir(dir.path())
            .run(Shutdown::new())
            .unwrap();
        assert!(summary.finished);
    }
    let all: Vec<&Event> = events.iter().collect();
    assert_eq!(
        windows(&rows(&sink.committed())),
        windows(&rows(&batch_sql(&all, ORACLE)))
    );
    assert!(dlq.committed.lock().unwrap().is_empty());
}

/// A source whose partition `slow` takes `delay` for every read, as a reader thread does that
/// a loaded machine leaves without a core: it always has more to give, it is just late.
struct SlowPartition {
    inner: MemorySource,
    slow: i32,
    delay: Duration,
}

impl Source for SlowPartition {
    fn name(&self) -> &str {
        "slow"
    }
    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        self.inner.partitions()
    }
    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        from: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        let reader = self.inner.open(topic, partition, from)?;
        Ok(if partition == self.slow {
            Box::new(SlowReader(reader, self.delay))
        } else {
            reader
        })
    }
}

struct SlowReader(Box<dyn PartitionReader>, Duration);

impl PartitionReader for SlowReader {
    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<weir_runtime::ReadResult> {
        thread::sleep(self.1);
        self.0.read(max_rows, linger)
    }
}

#[test]
fn a_partition_whose_reader_is_slow_but_never_caught_up_is_not_idle() {
    // Partition 1 takes longer than the idle timeout for every batch, but never reports
    // that it has nothing to read: it is behind, not idle, so the window waits for it and
    // none of its events is late. (Declared idle, its watermark would follow partition 0's
    // and its own events would fall behind it.)
    let events = stream(23, 2, 10, 1_500, DISORDER_MS as u64);
    let parts = by_partition(&events, |e| Some(e.json().into_bytes()));
    let source = SlowPartition {
        inner: MemorySource::new("events", parts),
        slow: 1,
        delay: Duration::from_millis(120),
    };
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let summary = pipeline(source, &sink, &dlq)
        .idle_timeout(Duration::from_millis(50))
        .batch(64, Duration::from_millis(1))
        .checkpoint_dir(dir.path())
        .run(Shutdown::new())
        .unwrap();
    assert!(summary.finished);
    let letters = dead_letters(&dlq);
    assert!(
        letters.is_empty(),
        "{} events late, the first {:?}",
        letters.len(),
        letters.first()
    );
    let all: Vec<&Event> = events.iter().collect();
    assert_eq!(
        windows(&rows(&sink.committed())),
        windows(&rows(&batch_sql(&all, ORACLE)))
    );
}
