//! Poison messages reach the DLQ with their bytes and reason, the counters add up, and a
//! keyed projection sees every key's events in the order they were produced.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use weir::connectors::{
    read_dlq_dir, EventGenerator, GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig,
    SqliteSink, SqliteSinkConfig,
};
use weir::operators::{Projection, ProjectionOperator};
use weir::pipeline::Pipeline;
use weir_runtime::dlq::ErrorKind;
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::Shutdown;

#[test]
fn every_poison_message_is_dead_lettered_with_its_bytes_and_reason_and_the_counters_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GeneratorConfig {
        seed: 7,
        sensors: 300,
        partitions: 3,
        events: Some(30_000),
        disorder_ms: 2_000,
        late_ratio: 0.01,
        poison_ratio: 0.03,
        ..Default::default()
    };
    let truth = EventGenerator::new(&cfg);
    let db = dir.path().join("out.sqlite");
    let summary = Pipeline::new("poison")
        .source(GeneratorSource::new(cfg.clone()).unwrap())
        .schema(weir::iot_schema())
        .filter("temperature > -15")
        .tumble(weir::demo_window(60_000))
        .sink(
            SqliteSink::new(
                "sqlite",
                &SqliteSinkConfig {
                    path: db.clone(),
                    table: "w".into(),
                    key_columns: vec!["sensor_id".into(), "window_start".into()],
                    create_table: true,
                },
            )
            .unwrap(),
        )
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.path().join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_dir(dir.path().join("ckpt"))
        .batch(1000, Duration::from_millis(10))
        .run(Shutdown::new())
        .unwrap();
    assert!(summary.finished);

    let letters = read_dlq_dir(dir.path().join("dlq")).unwrap();
    let mut seen = std::collections::HashSet::new();
    let (mut poison, mut late) = (0u64, 0u64);
    for l in &letters {
        assert!(
            seen.insert((l.letter.partition, l.letter.offset)),
            "dead-lettered twice: {}/{}",
            l.letter.partition,
            l.letter.offset
        );
        let event = truth.event(l.letter.partition, l.letter.offset).unwrap();
        let original = truth.message(l.letter.partition, l.letter.offset).unwrap();
        assert_eq!(
            l.letter.payload, original.payload,
            "original bytes of {}/{}",
            l.letter.partition, l.letter.offset
        );
        assert_eq!(l.letter.key, original.key);
        assert!(!l.letter.message.is_empty());
        match event.poison {
            Some(kind) => {
                assert_eq!(
                    l.letter.kind,
                    kind.error_kind(),
                    "{}/{}: {}",
                    l.letter.partition,
                    l.letter.offset,
                    l.letter.message
                );
                poison += 1;
            }
            None => {
                assert_eq!(
                    l.letter.kind,
                    ErrorKind::Late,
                    "{}/{}: {}",
                    l.letter.partition,
                    l.letter.offset,
                    l.letter.message
                );
                assert!(
                    event.late,
                    "an on-time event was called late: {}/{}",
                    l.letter.partition, l.letter.offset
                );
                late += 1;
            }
        }
    }
    // Every poison message of the input is there.
    let mut expected_poison = 0;
    let (mut filtered, mut accepted_late) = (0u64, 0u64);
    for p in 0..3 {
        for o in 0..truth.events_in_partition(p).unwrap() as i64 {
            let e = truth.event(p, o).unwrap();
            if e.poison.is_some() {
                expected_poison += 1;
                continue;
            }
            if e.late && !seen.contains(&(p, o)) && e.temperature() > -15.0 {
                accepted_late += 1; // the first events of a partition have no watermark yet
            }
            if !seen.contains(&(p, o)) && e.temperature() <= -15.0 {
                filtered += 1;
            }
        }
    }
    assert_eq!(poison, expected_poison);
    assert!(
        late > 0 && accepted_late <= 3,
        "late {late}, accepted late {accepted_late}"
    );

    let c = summary.counters;
    assert_eq!(c.consumed, 30_000);
    assert_eq!(c.dlq, letters.len() as u64);
    assert_eq!(c.filtered, filtered);
    assert_eq!(
        c.consumed,
        c.aggregated + c.dlq + c.late_dropped + c.filtered,
        "{c:?}"
    );
    // What the windows counted is what was aggregated.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let readings: i64 = conn
        .query_row("SELECT sum(readings) FROM w", [], |r| r.get(0))
        .unwrap();
    assert_eq!(readings as u64, c.aggregated);
}

#[derive(Deserialize)]
struct SeqEvent {
    key: String,
    seq: i64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct SeqState {
    events: i64,
    last: i64,
    out_of_order: i64,
}

#[derive(Serialize)]
struct SeqRow<'a> {
    key: &'a str,
    events: i64,
    last: i64,
    out_of_order: i64,
}

/// Records, per key, whether events arrive in the order they were produced; fails on purpose
/// for `seq % fail_every == 0` (an `Err`) and panics for `seq % panic_every == 0`.
struct SeqProjection {
    fail_every: i64,
    panic_every: i64,
}

impl Projection for SeqProjection {
    type Event = SeqEvent;
    type State = SeqState;
    type Row<'a> = SeqRow<'a>;

    fn key(&self, e: &SeqEvent) -> String {
        e.key.clone()
    }

    fn apply(&self, s: &mut SeqState, e: SeqEvent) -> Result<(), weir::operators::EventError> {
        if e.seq % self.panic_every == 0 {
            s.out_of_order += 1_000_000; // must not survive: the panic discards this fold
            panic!("boom at {}", e.seq);
        }
        if e.seq % self.fail_every == 0 {
            return Err(format!("refused seq {}", e.seq).into());
        }
        if e.seq <= s.last {
            s.out_of_order += 1;
        }
        s.last = e.seq;
        s.events += 1;
        Ok(())
    }

    fn row<'a>(&'a self, key: &'a str, s: &'a SeqState) -> SeqRow<'a> {
        SeqRow {
            key,
            events: s.events,
            last: s.last,
            out_of_order: s.out_of_order,
        }
    }

    fn row_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("events", DataType::Int64, false),
            Field::new("last", DataType::Int64, false),
            Field::new("out_of_order", DataType::Int64, false),
        ]))
    }
}

#[test]
fn a_projection_sees_each_keys_events_in_produced_order_and_failures_go_to_the_dlq() {
    let events = stream(11, 4, 150, 20_000, 0);
    let mut rng = Rng(3);
    let mut src = MemorySource::new(
        "seq",
        by_partition(&events, |e| Some(e.json().into_bytes())),
    );
    src.read_sizes = Some((0..13).map(|_| 1 + rng.below(300) as usize).collect());
    let sink = MemorySink::default();
    let dlq = MemoryDlq::default();
    let dir = tempfile::tempdir().unwrap();
    let summary = Pipeline::new("seq")
        .source(src)
        .schema(schema())
        .operator("seq", |input| {
            Ok(Box::new(ProjectionOperator::new(
                "seq",
                SeqProjection {
                    fail_every: 37,
                    panic_every: 101,
                },
                input,
            )) as _)
        })
        .sink(sink.clone())
        .dlq(dlq.clone())
        .checkpoint_dir(dir.path())
        .checkpoint_interval(Duration::from_millis(1))
        .cpu_threads(2)
        .run(Shutdown::new())
        .unwrap();
    assert!(summary.finished);

    // The last upsert of each key is its final state.
    let mut last: HashMap<String, serde_json::Map<String, serde_json::Value>> = HashMap::new();
    for r in rows(&sink.committed()) {
        last.insert(r["key"].as_str().unwrap().to_string(), r);
    }
    let mut expected: HashMap<&str, (i64, i64)> = HashMap::new();
    let mut expected_rejects = 0;
    for e in &events {
        if e.seq % 101 == 0 || e.seq % 37 == 0 {
            expected_rejects += 1;
            continue;
        }
        let x = expected.entry(e.key.as_str()).or_default();
        x.0 += 1;
        x.1 = x.1.max(e.seq);
    }
    assert_eq!(last.len(), expected.len());
    for (key, (n, max)) in expected {
        let r = &last[key];
        assert_eq!(
            r["out_of_order"].as_i64(),
            Some(0),
            "key {key} saw events out of order"
        );
        assert_eq!(r["events"].as_i64(), Some(n), "key {key}");
        assert_eq!(r["last"].as_i64(), Some(max), "key {key}");
    }
    let letters = dlq.committed.lock().unwrap().clone();
    assert_eq!(letters.len(), expected_rejects);
    assert!(letters.iter().all(|l| l.kind == ErrorKind::OperatorError));
    assert!(letters.iter().any(|l| l.message.contains("panicked: boom")));
    assert!(letters.iter().any(|l| l.message.contains("refused seq")));
    let c = summary.counters;
    assert_eq!(
        c.consumed,
        c.aggregated + c.dlq + c.late_dropped + c.filtered,
        "{c:?}"
    );
}
