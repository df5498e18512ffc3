//! Streaming SQL: each query's windows equal DataFusion batch SQL over the same events (TUMBLE
//! written as date_bin for the batch side), for random batchings and partitionings; queries
//! that cannot run as a stream are refused with a message naming the construct and position.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use weir::operators::{plan_sql, SqlOptions};
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
];

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

type Row = serde_json::Map<String, serde_json::Value>;

fn assert_rows_match(got: &[Row], want: &[Row], query: &str) {
    let canon = |r: &Row| -> (String, Vec<(String, serde_json::Value)>) {
        let mut exact = Vec::new();
        let mut floats = Vec::new();
        for (k, v) in r {
            match v {
                serde_json::Value::Number(n) if n.is_f64() => floats.push((k.clone(), v.clone())),
                _ => exact.push(format!("{k}={v}")),
            }
        }
        exact.sort();
        floats.sort_by(|a, b| a.0.cmp(&b.0));
        (exact.join(","), floats)
    };
    let index = |rows: &[Row]| {
        let mut m: BTreeMap<String, Vec<Vec<(String, serde_json::Value)>>> = BTreeMap::new();
        for r in rows {
            let (k, f) = canon(r);
            m.entry(k).or_default().push(f);
        }
        m
    };
    let (g, w) = (index(got), index(want));
    assert_eq!(got.len(), want.len(), "{query}: row count");
    for (k, wf) in &w {
        let gf = g
            .get(k)
            .unwrap_or_else(|| panic!("{query}: missing row {k}"));
        assert_eq!(gf.len(), wf.len(), "{query}: {k}");
        for (a, b) in gf.iter().zip(wf) {
            for ((ka, va), (_, vb)) in a.iter().zip(b) {
                let (x, y) = (va.as_f64().unwrap(), vb.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                    "{query}: {k} {ka}: {x} vs {y}"
                );
            }
        }
    }
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

#[test]
fn queries_that_cannot_run_as_a_stream_are_refused_with_construct_and_position() {
    let cases: &[(&str, &str)] = &[
        ("SELECT key, count(*) AS n FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE) ORDER BY n", "ORDER BY (line 1, column 94) cannot run over an unbounded stream"),
        ("SELECT key, count(*) FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE) LIMIT 5", "LIMIT"),
        ("SELECT e.key, count(*) FROM events e JOIN other o ON e.key = o.key GROUP BY e.key, TUMBLE(ts, INTERVAL '1' MINUTE)", "JOIN (line 1, column 43) is not supported in a streaming query"),
        ("SELECT keyz, count(*) FROM events GROUP BY keyz, TUMBLE(ts, INTERVAL '1' MINUTE)", "unknown column `keyz` in GROUP BY (line 1, column 44)"),
        ("SELECT key, frobnicate(v) FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)", "unknown function `frobnicate` (line 1, column 13)"),
        ("SELECT key, count(*) FROM events GROUP BY key, TUMBLE(v, INTERVAL '1' MINUTE)", "TUMBLE on `v` (line 1, column 55): a window needs a timestamp column"),
        ("SELECT key, count(*) FROM events GROUP BY key", "a streaming GROUP BY needs a window"),
        ("SELECT key, x FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)", "column `x` (line 1, column 13) must be in GROUP BY or inside an aggregate"),
        ("SELECT * FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)", "`*` (line 1, column 8) is not supported with GROUP BY"),
        ("SELECT key, count(*) FROM sensors GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)", "unknown table `sensors` (line 1, column 27): the source is registered as `events`"),
        ("SELEC key FROM events", "SQL syntax error"),
        ("SELECT key, count(*) FROM events GROUP BY key, HOP(ts, INTERVAL '5' MINUTE, INTERVAL '1' MINUTE)", "HOP (line 1, column 48): size 60000 ms is shorter than slide 300000 ms"),
        ("SELECT key, count(*) FROM events GROUP BY key, TUMBLE(ts, 60)", "window size `60` (line 1, column 59) must be an INTERVAL"),
        ("SELECT key, count(*), sum(v) OVER () FROM events GROUP BY key, TUMBLE(ts, INTERVAL '1' MINUTE)", "window function `sum(v) OVER ()` (line 1, column 23) (OVER) is not supported"),
        ("DELETE FROM events", "only a SELECT query can run as a stream"),
        ("SELECT region, count(*) FROM events GROUP BY region, TUMBLE(ts, INTERVAL '1' MINUTE)", "GROUP BY [region] does not include the partition key `key`"),
    ];
    let mut wrong = Vec::new();
    for (q, expected) in cases {
        match plan_sql(q, "events", &schema(), &SqlOptions::default()) {
            Ok(_) => wrong.push(format!("{q}\n  planned, expected: {expected}")),
            Err(err) if !err.contains(expected) => {
                wrong.push(format!("{q}\n  got:      {err}\n  expected: {expected}"))
            }
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
