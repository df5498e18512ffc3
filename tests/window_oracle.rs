//! The streaming window equals DataFusion batch SQL over the same events, for any batching,
//! partitioning and stop/crash-and-restart points: grouped by the partition key (`key`, one
//! phase) and by a column whose groups span partitions (`region`, two phases: partials per
//! partition merged by the global stage).

use crate::common;

use std::time::Duration;

use common::*;
use weir::operators::{AggregateConfig, LatePolicy, TumbleConfig};
use weir::pipeline::Pipeline;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::{EpochParticipant, Guarantee, RunSummary, Shutdown, SinkWriter, WriteOutcome};

const WINDOW_MS: i64 = 10_000;
const DISORDER_MS: u64 = 3_000;

/// The group key columns the tests run with: the partition key, and one spanning partitions.
const KEYS: [&str; 2] = ["key", "region"];

fn window(key: &str) -> TumbleConfig {
    let agg = |function: &str, column: Option<&str>, alias: &str, distinct: bool| AggregateConfig {
        function: function.into(),
        column: column.map(Into::into),
        alias: Some(alias.into()),
        distinct,
        sql: None,
    };
    TumbleConfig {
        size_ms: WINDOW_MS,
        keys: vec![key.into()],
        time_column: None,
        max_out_of_orderness_ms: DISORDER_MS as i64,
        allowed_lateness_ms: 0,
        late_policy: LatePolicy::Dlq,
        aggregates: vec![
            agg("count", None, "n", false),
            agg("sum", Some("v"), "sum_v", false),
            agg("min", Some("v"), "min_v", false),
            agg("max", Some("v"), "max_v", false),
            agg("avg", Some("x"), "avg_x", false),
            agg("min", Some("x"), "min_x", false),
            agg("max", Some("x"), "max_x", false),
            agg("stddev", Some("x"), "stddev_x", false),
            agg("count", Some("v"), "distinct_v", true),
        ],
    }
}

const ORACLE: &str = "SELECT {key}, \
    CAST(date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS BIGINT) AS window_start, \
    CAST(date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS BIGINT) + 10000 AS window_end, \
    count(*) AS n, sum(v) AS sum_v, min(v) AS min_v, max(v) AS max_v, avg(x) AS avg_x, \
    min(x) AS min_x, max(x) AS max_x, stddev(x) AS stddev_x, count(DISTINCT v) AS distinct_v \
    FROM events GROUP BY 1, 2";

fn oracle(events: &[&Event], key: &str) -> Vec<Row> {
    rows(&batch_sql(events, &ORACLE.replace("{key}", key)))
}

type Row = serde_json::Map<String, serde_json::Value>;

/// Match rows by (key, window_start); integers exactly, floats within 1e-9 relative.
fn assert_same_windows(stream: &[Row], oracle: &[Row], key: &str) {
    let index = |rows: &[Row]| -> std::collections::BTreeMap<(String, i64), Row> {
        let mut m = std::collections::BTreeMap::new();
        for r in rows {
            let k = (
                r[key].as_str().unwrap().to_string(),
                r["window_start"].as_i64().unwrap(),
            );
            assert!(
                m.insert(k.clone(), r.clone()).is_none(),
                "window {k:?} emitted twice"
            );
        }
        m
    };
    let (s, o) = (index(stream), index(oracle));
    assert_eq!(s.len(), o.len(), "window count differs");
    for (k, orow) in &o {
        let srow = s
            .get(k)
            .unwrap_or_else(|| panic!("window {k:?} missing from the stream"));
        for (col, ov) in orow {
            let sv = &srow[col];
            match (sv.as_i64(), ov.as_i64(), sv.as_f64(), ov.as_f64()) {
                (Some(a), Some(b), _, _) => assert_eq!(a, b, "{k:?} {col}"),
                (_, _, Some(a), Some(b)) => {
                    let tol = 1e-9 * a.abs().max(b.abs()).max(1e-12);
                    assert!((a - b).abs() <= tol, "{k:?} {col}: stream {a} vs batch {b}");
                }
                _ => assert_eq!(sv, ov, "{k:?} {col}"),
            }
        }
    }
}

fn source(events: &[Event], rng: &mut Rng) -> MemorySource {
    let mut src = MemorySource::new(
        "events",
        by_partition(events, |e| Some(e.json().into_bytes())),
    );
    src.read_sizes = Some((0..17).map(|_| 1 + rng.below(400) as usize).collect());
    src
}

#[test]
fn windows_equal_batch_sql_for_random_streams_batchings_and_partitionings() {
    for (seed, key) in (1..=5u64).flat_map(|s| KEYS.map(|k| (s, k))) {
        let mut rng = Rng(seed * 7919);
        let partitions = 1 + rng.below(6) as i32;
        let events = stream(
            seed,
            partitions,
            50 + rng.below(400),
            4_000 + rng.below(8_000) as usize,
            DISORDER_MS,
        );
        let sink = MemorySink::default();
        let dlq = MemoryDlq::default();
        let dir = tempfile::tempdir().unwrap();
        let summary = Pipeline::new("oracle")
            .source(source(&events, &mut rng))
            .schema(schema())
            .tumble(window(key))
            .sink(sink.clone())
            .dlq(dlq.clone())
            .checkpoint_dir(dir.path())
            .checkpoint_interval(Duration::from_millis(rng.below(5)))
            .batch(1 + rng.below(512) as usize, Duration::from_millis(5))
            .cpu_threads(1 + rng.below(2) as usize)
            .run(Shutdown::new())
            .unwrap();
        assert!(summary.finished);
        assert_eq!(
            summary.counters.late, 0,
            "seed {seed} by {key}: disorder within the bound is never late"
        );
        assert_eq!(summary.counters.consumed, events.len() as u64);
        let all: Vec<&Event> = events.iter().collect();
        let oracle = oracle(&all, key);
        assert!(!oracle.is_empty());
        assert_same_windows(&rows(&sink.committed()), &oracle, key);
    }
}

/// Wraps the memory sink and interrupts the run at its `at`-th write: a graceful stop
/// (shutdown, drain, checkpoint) or a crash (a fatal error: nothing after the last checkpoint
/// is kept).
struct Interrupt {
    inner: MemorySink,
    writes: usize,
    at: usize,
    crash: bool,
    shutdown: Shutdown,
}

impl EpochParticipant for Interrupt {
    fn recover(&mut self, p: &weir_runtime::Lane, c: Option<u64>) -> Result<()> {
        self.inner.recover(p, c)
    }
    fn prepare(&mut self, p: &weir_runtime::Lane, e: u64) -> Result<()> {
        self.inner.prepare(p, e)
    }
    fn commit(&mut self, p: &weir_runtime::Lane, e: u64) -> Result<()> {
        self.inner.commit(p, e)
    }
}

impl SinkWriter for Interrupt {
    fn name(&self) -> &str {
        "interrupt"
    }
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }
    fn write(&mut self, p: &weir_runtime::Lane, batch: &RecordBatch) -> Result<WriteOutcome> {
        self.writes += 1;
        if self.writes == self.at {
            if self.crash {
                return Err(WeirError::sink("interrupt", "simulated crash"));
            }
            self.shutdown.trigger();
        }
        self.inner.write(p, batch)
    }
}

fn run_once(
    events: &[Event],
    key: &str,
    seed: u64,
    sink: impl SinkWriter + 'static,
    dlq: MemoryDlq,
    dir: &std::path::Path,
    shutdown: Shutdown,
) -> Result<RunSummary> {
    let mut rng = Rng(seed);
    Pipeline::new("restart")
        .source(source(events, &mut rng))
        .schema(schema())
        .tumble(window(key))
        .sink(sink)
        .dlq(dlq)
        .checkpoint_dir(dir)
        .checkpoint_interval(Duration::from_millis(rng.below(3)))
        .batch(64 + rng.below(256) as usize, Duration::from_millis(5))
        .cpu_threads(2)
        .run(shutdown)
}

#[test]
fn stop_or_crash_and_restart_from_checkpoint_gives_the_uninterrupted_output() {
    // Fewer seeds spanning partitions: each of their runs merges every partition's partials.
    let cases = (1..=24u64)
        .map(|s| (s, KEYS[0]))
        .chain((1..=12u64).map(|s| (s, KEYS[1])));
    for (seed, key) in cases {
        let mut rng = Rng(seed ^ 0xdead_beef);
        let partitions = 1 + rng.below(4) as i32;
        let mut events = stream(
            seed,
            partitions,
            30 + rng.below(100),
            3_000 + rng.below(3_000) as usize,
            DISORDER_MS,
        );
        // Some late events too, so DLQ output is part of what must match.
        for e in events.iter_mut().filter(|e| e.offset % 97 == 13) {
            e.ts -= 60_000;
        }

        let straight = MemorySink::default();
        let straight_dlq = MemoryDlq::default();
        let dir = tempfile::tempdir().unwrap();
        run_once(
            &events,
            key,
            seed,
            straight.clone(),
            straight_dlq.clone(),
            dir.path(),
            Shutdown::new(),
        )
        .unwrap();

        let sink = MemorySink::default();
        let dlq = MemoryDlq::default();
        let dir = tempfile::tempdir().unwrap();
        let mut interruptions = 0;
        for attempt in 0..200 {
            let shutdown = Shutdown::new();
            let wrapper = Interrupt {
                inner: sink.clone(),
                writes: 0,
                at: 1 + rng.below(if attempt == 0 { 3 } else { 12 }) as usize,
                crash: rng.below(2) == 0,
                shutdown: shutdown.clone(),
            };
            match run_once(
                &events,
                key,
                seed + attempt,
                wrapper,
                dlq.clone(),
                dir.path(),
                shutdown.clone(),
            ) {
                Ok(s) if s.finished => break,
                Ok(_) => interruptions += 1,
                Err(e) => {
                    assert!(e.to_string().contains("simulated crash"), "{e}");
                    interruptions += 1;
                }
            }
            assert!(attempt < 199, "seed {seed} by {key}: never finished");
        }
        assert!(
            interruptions > 0,
            "seed {seed} by {key}: the run was never interrupted"
        );
        // Integers exact, floats within 1e-9 relative (stddev's state merge at a checkpoint
        // changes the order of float operations); any window missing or twice fails.
        assert_same_windows(&rows(&sink.committed()), &rows(&straight.committed()), key);
        let letters = dead_letters;
        let late = letters(&straight_dlq);
        assert!(
            !late.is_empty(),
            "seed {seed} by {key}: expected late events"
        );
        assert_eq!(
            letters(&dlq),
            late,
            "seed {seed} by {key}: dead letters differ"
        );
    }
}
