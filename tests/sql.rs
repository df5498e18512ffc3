//! Streaming SQL: each query's windows equal DataFusion batch SQL over the same events (TUMBLE
//! written as date_bin for the batch side), for random batchings and partitionings. The file
//! corpora (queries with expected rows, refused queries with their errors) are in
//! `tests/sql_corpus.rs`.

use crate::common;

use std::time::Duration;

use common::*;
use weir::operators::SqlOptions;
use weir::pipeline::Pipeline;
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::Shutdown;

const W: &str = "TUMBLE(ts, INTERVAL '10' SECOND)";
const BIN: &str = "date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')";

/// (streaming query, its batch equivalent); `{W}` is the window, `{WS}`/`{WE}` its bounds.
const CORPUS: &[&str] = &[
    "SELECT key, window_start, window_end, count(*) AS n FROM events GROUP BY key, {W}",
    "SELECT key, window_start, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM events GROUP BY key, {W}",
    "SELECT key, window_start, avg(x) AS a FROM events WHERE v > 0 GROUP BY key, {W}",
    "SELECT key, region, window_start, count(*) AS n, avg(x) AS a FROM events GROUP BY key, region, {W}",
    "SELECT key, window_start, min(x) AS lo, count(*) AS n FROM events WHERE region IN ('r1', 'r2') GROUP BY key, {W}",
    "SELECT key, window_start, max(x) - min(x) AS spread FROM events GROUP BY key, {W}",
    "SELECT key, window_start, count(*) AS n FROM events GROUP BY key, {W} HAVING count(*) > 3",
    "SELECT key, window_start, avg(x * 2 + 1) AS a2 FROM events GROUP BY key, {W}",
    "SELECT key, window_start, count(DISTINCT v % 10) AS d FROM events GROUP BY key, {W}",
    "SELECT key, window_start, stddev(x) AS sd, var(x) AS vr FROM events GROUP BY key, {W}",
    "SELECT key, window_start, bool_and(v > -900) AS all_big, bool_or(v > 900) AS any_big FROM events GROUP BY key, {W}",
    "SELECT upper(key) AS k, window_start, round(avg(x), 2) AS a FROM events GROUP BY key, {W}",
    "SELECT key, window_start, CASE WHEN sum(v) > 0 THEN 'up' ELSE 'down' END AS trend FROM events GROUP BY key, {W}",
    "SELECT key, window_end, sum(v) AS s FROM events WHERE region <> 'r3' AND x > -100 GROUP BY key, {W} HAVING sum(v) <> 0",
    // Groups spanning partitions (the partition key is `key`): two phases.
    "SELECT region, window_start, count(*) AS n, avg(x) AS a, count(DISTINCT key) AS keys FROM events GROUP BY region, {W}",
    "SELECT region, window_end, sum(v) AS s FROM events WHERE v > 0 GROUP BY region, {W} HAVING count(*) > 5",
];

#[test]
fn explain_shows_when_a_window_runs_in_two_phases() {
    let plan = |q: &str| {
        weir::operators::plan_sql(&streaming(q), "events", &schema(), &SqlOptions::default())
            .unwrap()
    };
    let by_region = plan("SELECT region, count(*) AS n FROM events GROUP BY region, {W}");
    assert!(by_region.two_phase);
    assert!(
        by_region.explain().contains(
            "two-phase: each partition sends a closed window's partial state; a global stage"
        ),
        "{}",
        by_region.explain()
    );
    let by_key = plan("SELECT key, count(*) AS n FROM events GROUP BY key, {W}");
    assert!(!by_key.two_phase && !by_key.explain().contains("two-phase"));
}

fn streaming(q: &str) -> String {
    q.replace("{W}", W)
}

fn batch(q: &str) -> String {
    q.replace(
        "window_start",
        &format!("CAST({BIN} AS BIGINT) AS window_start"),
    )
    .replace(
        "window_end",
        &format!("CAST({BIN} AS BIGINT) + 10000 AS window_end"),
    )
    .replace("{W}", BIN)
}

#[test]
fn every_corpus_query_equals_batch_sql() {
    for (i, q) in CORPUS.iter().enumerate() {
        let seed = 100 + i as u64;
        let mut rng = Rng(seed);
        let partitions = 1 + rng.below(4) as i32;
        let events = stream(seed, partitions, 40, 3_000, 2_000);
        let mut src = MemorySource::new(
            "events",
            by_partition(&events, |e| Some(e.json().into_bytes())),
        );
        src.read_sizes = Some((0..11).map(|_| 1 + rng.below(300) as usize).collect());
        let sink = MemorySink::default();
        let dir = tempfile::tempdir().unwrap();
        let options = SqlOptions {
            max_out_of_orderness_ms: 2_000,
            ..Default::default()
        };
        let summary = Pipeline::new("sql")
            .source(src)
            .schema(schema())
            .sql(&streaming(q), &options)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .sink(sink.clone())
            .dlq(MemoryDlq::default())
            .checkpoint_dir(dir.path())
            .checkpoint_interval(Duration::from_millis(rng.below(4)))
            .cpu_threads(2)
            .run(Shutdown::new())
            .unwrap();
        assert_eq!(summary.counters.late, 0);
        let all: Vec<&Event> = events.iter().collect();
        let want = rows(&batch_sql(&all, &batch(q)));
        assert!(!want.is_empty(), "{q}");
        assert_rows_match(&rows(&sink.committed()), &want, q);
    }
}
