//! The streaming-SQL corpus: every `tests/sql_corpus/*.toml` holds a query, its input (events
//! written out, or a seeded generator spec) and the expected output rows. Each case is run
//! with random batch sizes, straight and with a stop and a resume from the checkpoint store,
//! and both runs must give the expected rows. The expected rows are themselves checked
//! against an independent computation: DataFusion batch SQL over the same events for
//! tumbling and hopping windows (windows assigned with `date_bin` in SQL), and for session
//! windows a reference sessionizer written here, whose sessions DataFusion then aggregates.
//! Each query also runs over a larger generated stream with some late events, streaming
//! against that oracle, and the late events (and only they) must reach the DLQ.
//!
//! `tests/sql_errors/*.toml` holds queries weir must refuse, with the exact error text.
//!
//! `WEIR_BLESS=1` writes the oracle's rows as `expected` into a case that has none (never
//! the streaming output: expected rows come from the oracle only).

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use datafusion::arrow::array::{ArrayRef, Int64Array, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use weir::operators::{plan_sql, SqlOptions, SqlPlan, WindowKind};
use weir::pipeline::Pipeline;
use weir_runtime::error::Result;
use weir_runtime::testkit::{MemoryDlq, MemorySink, MemorySource};
use weir_runtime::{PartitionReader, ReadResult, Shutdown, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The streaming query over table `events` (tests/common schema).
    query: String,
    /// Watermark bound; the inputs stay within it, so no event is late.
    #[serde(default = "default_disorder")]
    max_out_of_orderness_ms: i64,
    /// Events written out (partition = order of first appearance of the key % partitions).
    #[serde(default)]
    events: Vec<InlineEvent>,
    #[serde(default = "one")]
    partitions: i32,
    /// Or a seeded generator (tests/common `stream`).
    #[serde(default)]
    generate: Option<Generate>,
    #[serde(default)]
    expected: Option<Vec<toml::Table>>,
}

fn default_disorder() -> i64 {
    300
}

fn one() -> i32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InlineEvent {
    key: String,
    #[serde(default = "region")]
    region: String,
    #[serde(default)]
    v: i64,
    #[serde(default)]
    x: f64,
    ts: i64,
}

fn region() -> String {
    "r0".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Generate {
    seed: u64,
    partitions: i32,
    keys: u64,
    events: usize,
    disorder_ms: u64,
}

fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn case_events(case: &Case) -> Vec<Event> {
    if let Some(g) = &case.generate {
        return stream(g.seed, g.partitions, g.keys, g.events, g.disorder_ms);
    }
    let mut key_index: HashMap<String, i32> = HashMap::new();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut seqs: HashMap<String, i64> = HashMap::new();
    case.events
        .iter()
        .map(|e| {
            let next = key_index.len() as i32;
            let p = *key_index.entry(e.key.clone()).or_insert(next) % case.partitions;
            let offset = offsets.entry(p).or_default();
            let seq = seqs.entry(e.key.clone()).or_default();
            *seq += 1;
            *offset += 1;
            Event {
                partition: p,
                offset: *offset - 1,
                key: e.key.clone(),
                region: e.region.clone(),
                seq: *seq,
                v: e.v,
                x: e.x,
                ts: e.ts,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The oracle

/// Where the window call is in the query text: `(start, end)` byte range.
pub(crate) fn window_call_span(query: &str) -> (usize, usize) {
    let lower = query.to_ascii_lowercase();
    let start = ["tumble(", "hop(", "session("]
        .iter()
        .filter_map(|w| lower.find(w))
        .min()
        .expect("query has a window call");
    let mut depth = 0;
    for (i, c) in query[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (start, start + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced window call in {query}");
}

/// The events as a table with a row id, for the session reference.
fn events_with_rid(events: &[&Event]) -> RecordBatch {
    let base = events_batch(events);
    let mut fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("rid", DataType::Int64, false));
    let mut cols = base.columns().to_vec();
    cols.push(Arc::new(Int64Array::from_iter_values(
        0..events.len() as i64,
    )));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// Indices of the events that pass `filter` (a WHERE clause), evaluated by DataFusion.
fn passing(events: &[Event], filter: Option<&str>) -> std::collections::HashSet<usize> {
    let all: Vec<&Event> = events.iter().collect();
    let filter = filter.unwrap_or("true");
    let kept = concat(run_sql(
        vec![("events", events_with_rid(&all))],
        &format!("SELECT rid FROM events WHERE {filter}"),
    ));
    kept.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .iter()
        .map(|&r| r as usize)
        .collect()
}

fn key_value(e: &Event, column: &str) -> String {
    match column {
        "key" => e.key.clone(),
        "region" => e.region.clone(),
        "seq" => e.seq.to_string(),
        "v" => e.v.to_string(),
        other => panic!("the session reference does not group by `{other}`"),
    }
}

/// Sessions computed the simple way: per key, sort by time, start a new session whenever
/// the next event is `gap` or more after the previous one. Returns (rid, start, end).
fn reference_sessions(
    events: &[&Event],
    rids: &[i64],
    keys: &[String],
    gap: i64,
) -> Vec<(i64, i64, i64)> {
    let mut by_key: BTreeMap<Vec<String>, Vec<(i64, i64)>> = BTreeMap::new();
    for &rid in rids {
        let e = events[rid as usize];
        let k = keys.iter().map(|c| key_value(e, c)).collect();
        by_key.entry(k).or_default().push((e.ts, rid));
    }
    let mut out = Vec::new();
    for (_, mut evs) in by_key {
        evs.sort();
        let mut i = 0;
        while i < evs.len() {
            let mut j = i;
            while j + 1 < evs.len() && evs[j + 1].0 - evs[j].0 < gap {
                j += 1;
            }
            let (start, end) = (evs[i].0, evs[j].0 + gap);
            out.extend(evs[i..=j].iter().map(|&(_, rid)| (rid, start, end)));
            i = j + 1;
        }
    }
    out
}

pub(crate) fn run_sql(tables: Vec<(&str, RecordBatch)>, sql: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        for (name, batch) in tables {
            let table =
                datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])
                    .unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
        ctx.sql(sql)
            .await
            .unwrap_or_else(|e| panic!("oracle query {sql}: {e}"))
            .collect()
            .await
            .unwrap()
    })
}

/// The query's result as batch computation: the window assigned to every event in a table
/// `windowed` (one row per event and window), then the query with its window call replaced
/// by `window_start, window_end`, run by DataFusion over `windowed`.
fn oracle(events: &[Event], query: &str, plan: &SqlPlan) -> Vec<Row> {
    let all: Vec<&Event> = events.iter().collect();
    let with_rid = events_with_rid(&all);
    let filter = plan.filter.clone().unwrap_or_else(|| "true".into());
    let epoch = "TIMESTAMP '1970-01-01T00:00:00'";
    if plan.window.kind == WindowKind::Continuous {
        return rows(&run_sql(vec![("events", with_rid)], query));
    }
    let windowed: RecordBatch = match plan.window.kind {
        WindowKind::Continuous => unreachable!("handled above"),
        WindowKind::Tumble { size_ms } => concat(run_sql(
            vec![("events", with_rid)],
            &format!(
                "SELECT *, date_bin(INTERVAL '{size_ms} milliseconds', ts, {epoch}) AS window_start, \
                 date_bin(INTERVAL '{size_ms} milliseconds', ts, {epoch}) + INTERVAL '{size_ms} milliseconds' AS window_end \
                 FROM events WHERE {filter}"
            ),
        )),
        WindowKind::Hop { slide_ms, size_ms } => {
            let n = (size_ms + slide_ms - 1) / slide_ms;
            concat(run_sql(
                vec![("events", with_rid)],
                &format!(
                    "SELECT *, to_timestamp_millis(CAST(window_start AS BIGINT) + {size_ms}) AS window_end FROM ( \
                       SELECT e.*, to_timestamp_millis(CAST(date_bin(INTERVAL '{slide_ms} milliseconds', e.ts, {epoch}) AS BIGINT) - ks.k * {slide_ms}) AS window_start \
                       FROM events e CROSS JOIN (SELECT unnest(range(0, {n})) AS k) ks WHERE {filter}) w \
                     WHERE CAST(ts AS BIGINT) < CAST(window_start AS BIGINT) + {size_ms}"
                ),
            ))
        }
        WindowKind::Session { gap_ms } => {
            let kept = concat(run_sql(
                vec![("events", with_rid.clone())],
                &format!("SELECT rid FROM events WHERE {filter}"),
            ));
            let rids: Vec<i64> = kept
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec();
            let sessions = reference_sessions(&all, &rids, &plan.window.keys, gap_ms);
            let picked: Vec<&Event> = sessions.iter().map(|s| all[s.0 as usize]).collect();
            let base = events_with_rid(&picked);
            let mut fields: Vec<Field> = base
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
            fields.push(Field::new("window_start", ts.clone(), false));
            fields.push(Field::new("window_end", ts, false));
            let mut cols: Vec<ArrayRef> = base.columns().to_vec();
            cols.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                sessions.iter().map(|s| s.1),
            )));
            cols.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                sessions.iter().map(|s| s.2),
            )));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
        }
    };
    let (a, b) = window_call_span(query);
    let batch_query = format!("{}window_start, window_end{}", &query[..a], &query[b..]);
    let batch_query = replace_from(&batch_query);
    rows(&run_sql(vec![("windowed", windowed)], &batch_query))
}

fn replace_from(q: &str) -> String {
    let lower = q.to_ascii_lowercase();
    let i = lower.find("from events").expect("query reads `events`");
    format!("{}FROM windowed{}", &q[..i], &q[i + "from events".len()..])
}

pub(crate) fn concat(batches: Vec<RecordBatch>) -> RecordBatch {
    let schema = batches[0].schema();
    datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

// ---------------------------------------------------------------------------------------
// Streaming runs

/// A source that stops the run (graceful shutdown: drain, checkpoint) at its `at`-th read.
struct StopAt {
    inner: MemorySource,
    reads: Arc<AtomicUsize>,
    at: usize,
    shutdown: Shutdown,
}

struct StopAtReader {
    inner: Box<dyn PartitionReader>,
    reads: Arc<AtomicUsize>,
    at: usize,
    shutdown: Shutdown,
}

impl Source for StopAt {
    fn name(&self) -> &str {
        "stop-at"
    }
    fn partitions(&mut self) -> Result<Vec<(Arc<str>, i32)>> {
        self.inner.partitions()
    }
    fn open(&mut self, topic: &Arc<str>, p: i32, next: i64) -> Result<Box<dyn PartitionReader>> {
        Ok(Box::new(StopAtReader {
            inner: self.inner.open(topic, p, next)?,
            reads: self.reads.clone(),
            at: self.at,
            shutdown: self.shutdown.clone(),
        }))
    }
}

impl PartitionReader for StopAtReader {
    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult> {
        if self.shutdown.is_triggered() {
            return Ok(ReadResult::Idle);
        }
        if self.reads.fetch_add(1, Ordering::SeqCst) + 1 >= self.at {
            self.shutdown.trigger();
            return Ok(ReadResult::Idle);
        }
        self.inner.read(max_rows, linger)
    }
}

const MAX_ROWS: usize = 10_000;

fn source(events: &[Event], sizes: &[usize]) -> MemorySource {
    let mut src = MemorySource::new(
        "events",
        by_partition(events, |e| Some(e.json().into_bytes())),
    );
    src.read_sizes = Some(sizes.to_vec());
    src
}

/// How many reads the memory source makes over all partitions before it ends.
fn total_reads(events: &[Event], sizes: &[usize]) -> usize {
    let mut per: BTreeMap<i32, usize> = BTreeMap::new();
    for e in events {
        *per.entry(e.partition).or_default() += 1;
    }
    per.values()
        .map(|&len| {
            let (mut pos, mut reads) = (0, 0);
            while pos < len {
                pos += sizes[reads % sizes.len()].clamp(1, MAX_ROWS);
                reads += 1;
            }
            reads
        })
        .sum()
}

fn run(
    query: &str,
    ooo: i64,
    src: impl Source + 'static,
    (sink, dlq): (&MemorySink, &MemoryDlq),
    dir: &Path,
    interval_ms: u64,
    shutdown: Shutdown,
) -> weir_runtime::RunSummary {
    let options = SqlOptions {
        max_out_of_orderness_ms: ooo,
        ..Default::default()
    };
    Pipeline::new("corpus")
        .source(src)
        .schema(schema())
        .sql(query, &options)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .sink(sink.clone())
        .dlq(dlq.clone())
        .checkpoint_dir(dir)
        .checkpoint_interval(Duration::from_millis(interval_ms))
        .batch(MAX_ROWS, Duration::from_millis(5))
        .cpu_threads(2)
        .run(shutdown)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

/// What one run produced: output rows and dead letters as (partition, offset, kind), sorted.
struct Output {
    rows: Vec<Row>,
    letters: Vec<(i32, i64, String)>,
}

fn output(sink: &MemorySink, dlq: &MemoryDlq) -> Output {
    let letters = dead_letters(dlq);
    Output {
        rows: rows(&sink.committed()),
        letters,
    }
}

/// For a GROUP BY without a window the output is an upsert stream: the last row of each key
/// (a key lives in one partition, whose output keeps its order) is the key's final value.
fn final_rows(plan: &SqlPlan, mut out: Output) -> Output {
    if plan.window.kind != WindowKind::Continuous {
        return out;
    }
    let mut last: BTreeMap<String, Row> = BTreeMap::new();
    for r in out.rows {
        let k: Vec<String> = plan.window.keys.iter().map(|c| r[c].to_string()).collect();
        last.insert(k.join("\u{1}"), r);
    }
    out.rows = last.into_values().collect();
    out
}

/// Straight run and stop-and-resume run, with random batch sizes; returns both outputs.
fn straight_and_restarted(
    query: &str,
    ooo: i64,
    events: &[Event],
    rng: &mut Rng,
) -> (Output, Output) {
    let sizes: Vec<usize> = (0..13).map(|_| 1 + rng.below(40) as usize).collect();
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let src = source(events, &sizes);
    let s = run(
        query,
        ooo,
        src,
        (&sink, &dlq),
        dir.path(),
        rng.below(3),
        Shutdown::new(),
    );
    assert!(s.finished);
    let straight = output(&sink, &dlq);

    let sizes: Vec<usize> = (0..13).map(|_| 1 + rng.below(40) as usize).collect();
    let at = 1 + rng.below(total_reads(events, &sizes) as u64) as usize;
    let (sink, dlq) = (MemorySink::default(), MemoryDlq::default());
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let stop = StopAt {
        inner: source(events, &sizes),
        reads: Arc::new(AtomicUsize::new(0)),
        at,
        shutdown: shutdown.clone(),
    };
    let first = run(
        query,
        ooo,
        stop,
        (&sink, &dlq),
        dir.path(),
        rng.below(3),
        shutdown,
    );
    assert!(
        !first.finished,
        "{query}: the run was not stopped at read {at}"
    );
    let src = source(events, &sizes);
    let second = run(
        query,
        ooo,
        src,
        (&sink, &dlq),
        dir.path(),
        rng.below(3),
        Shutdown::new(),
    );
    assert!(second.finished);
    (straight, output(&sink, &dlq))
}

fn toml_rows(expected: &[toml::Table]) -> Vec<Row> {
    expected
        .iter()
        .map(|t| {
            serde_json::to_value(t)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        })
        .collect()
}

/// `expected = [...]` as TOML, one inline table a line, for blessing a new case.
fn bless(path: &Path, rows: &[Row]) {
    let mut sorted: Vec<String> = rows
        .iter()
        .map(|r| {
            let t: toml::Table =
                serde_json::from_value(serde_json::Value::Object(r.clone())).unwrap();
            // a table inside a value displays as an inline table
            format!("  {},", toml::Value::Table(t))
        })
        .collect();
    sorted.sort();
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str(&format!("expected = [\n{}\n]\n", sorted.join("\n")));
    std::fs::write(path, text).unwrap();
}

/// Case `file` of the corpus gives its expected rows, straight and after a restart.
fn expected_rows_straight_and_after_a_restart(file: &str) {
    let (n, path) = case_path("sql_corpus", file);
    {
        let name = path.file_name().unwrap().to_string_lossy();
        let case: Case = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let q = case.query.trim();
        let plan = plan_sql(q, "events", &schema(), &SqlOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let events = case_events(&case);
        let want = oracle(&events, q, &plan);
        assert!(!want.is_empty(), "{name}: the oracle gives no rows");
        let Some(expected) = &case.expected else {
            if std::env::var("WEIR_BLESS").is_ok() {
                bless(&path, &want);
                return;
            }
            panic!("{name}: no `expected` rows (WEIR_BLESS=1 writes the oracle's)");
        };
        let expected = toml_rows(expected);
        let label = format!("{name} (expected vs oracle)");
        assert_rows_match(&expected, &want, &label);

        let mut rng = Rng(0x5eed + n as u64);
        let (straight, resumed) =
            straight_and_restarted(q, case.max_out_of_orderness_ms, &events, &mut rng);
        let (straight, resumed) = (final_rows(&plan, straight), final_rows(&plan, resumed));
        assert_eq!(
            straight.letters,
            vec![],
            "{name}: no event of the corpus is late"
        );
        assert_eq!(
            resumed.letters,
            vec![],
            "{name}: no event of the corpus is late"
        );
        assert_rows_match(&straight.rows, &expected, &format!("{name} (straight)"));
        assert_rows_match(
            &resumed.rows,
            &expected,
            &format!("{name} (stopped and resumed)"),
        );
    }
}

/// Over a larger generated stream with some events moved two minutes back (after the first
/// 50 of their partition, so the watermark is well past every window or session they could
/// join): those and only those are dead-lettered as late, straight and after a restart, and
/// the windows equal the oracle over the other events.
/// Case `file` over a larger generated stream with late events.
fn equals_the_oracle_over_a_larger_generated_stream_with_late_events(file: &str) {
    let (n, path) = case_path("sql_corpus", file);
    {
        let name = path.file_name().unwrap().to_string_lossy();
        let case: Case = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let q = case.query.trim();
        let plan = plan_sql(q, "events", &schema(), &SqlOptions::default()).unwrap();
        let mut rng = Rng(0xb16 + n as u64);
        let partitions = 1 + rng.below(4) as i32;
        let mut events = stream(1_000 + n as u64, partitions, 8, 1_500, 1_000);
        let moved = |e: &Event| e.offset > 50 && e.offset % 97 == 13;
        for e in events.iter_mut().filter(|e| moved(e)) {
            e.ts -= 120_000;
        }
        // Late are the moved events that pass WHERE (the others are filtered before the window).
        let kept = passing(&events, plan.filter.as_deref());
        let mut late: Vec<(i32, i64, String)> = events
            .iter()
            .enumerate()
            .filter(|(i, e)| moved(e) && kept.contains(i))
            .map(|(_, e)| (e.partition, e.offset, "late".to_string()))
            .collect();
        late.sort();
        let on_time: Vec<Event> = events.iter().filter(|e| !moved(e)).cloned().collect();
        // Without a window nothing is late: the moved events count like any other.
        let continuous = plan.window.kind == WindowKind::Continuous;
        let want = oracle(if continuous { &events } else { &on_time }, q, &plan);
        assert!(!want.is_empty(), "{name}: the oracle gives no rows");
        let (straight, resumed) = straight_and_restarted(q, 1_000, &events, &mut rng);
        let (straight, resumed) = (final_rows(&plan, straight), final_rows(&plan, resumed));
        if plan.window.kind == WindowKind::Continuous {
            late.clear(); // no window, so nothing is ever late
        }
        assert!(!late.is_empty() || plan.window.kind == WindowKind::Continuous);
        assert_eq!(straight.letters, late, "{name}: late events (straight)");
        assert_eq!(
            resumed.letters, late,
            "{name}: late events (stopped and resumed)"
        );
        assert_rows_match(
            &straight.rows,
            &want,
            &format!("{name} (generated, straight)"),
        );
        assert_rows_match(
            &resumed.rows,
            &want,
            &format!("{name} (generated, stopped and resumed)"),
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorCase {
    query: String,
    /// The whole error message, exactly.
    error: String,
}

/// Case `file` of the error corpus is refused with its exact error.
fn refused_with_its_exact_error(file: &str) {
    let (_, path) = case_path("sql_errors", file);
    let case: ErrorCase = toml::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected = case.error.trim();
    match plan_sql(
        case.query.trim(),
        "events",
        &schema(),
        &SqlOptions::default(),
    ) {
        Ok(_) => panic!("{file}: planned, expected: {expected}"),
        Err(e) => assert_eq!(e, expected, "{file}"),
    }
}

/// The path of `file` in `tests/<dir>` and its index in the sorted directory (the seed of
/// its random batch sizes and generated stream).
fn case_path(dir: &str, file: &str) -> (usize, PathBuf) {
    let files = corpus(dir);
    let n = files
        .iter()
        .position(|p| p.file_name().is_some_and(|f| f == file))
        .unwrap_or_else(|| panic!("tests/{dir}/{file} does not exist"));
    (n, files[n].clone())
}

/// The file names in `tests/<dir>` that `listed` leaves out.
fn unlisted(dir: &str, listed: &[&str]) -> Vec<String> {
    corpus(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|f| !listed.contains(&f.as_str()))
        .collect()
}

/// One test module per corpus file, so a failure names its case.
macro_rules! corpus_cases {
    ($($name:ident => $file:literal,)+) => {
        $(
            mod $name {
                #[test]
                fn gives_its_expected_rows_straight_and_after_a_restart() {
                    super::expected_rows_straight_and_after_a_restart($file);
                }

                #[test]
                fn equals_the_oracle_over_a_larger_stream_with_late_events() {
                    super::equals_the_oracle_over_a_larger_generated_stream_with_late_events($file);
                }
            }
        )+

        #[test]
        fn every_corpus_file_has_its_test_case() {
            let listed = [$($file),+];
            assert!(listed.len() >= 30, "the corpus has {} queries", listed.len());
            let missing = unlisted("sql_corpus", &listed);
            assert!(missing.is_empty(), "add to corpus_cases!: {missing:?}");
        }
    };
}

/// One test per refused query.
macro_rules! error_cases {
    ($($name:ident => $file:literal,)+) => {
        mod refused {
            $(
                #[test]
                fn $name() {
                    super::refused_with_its_exact_error($file);
                }
            )+
        }

        #[test]
        fn every_error_file_has_its_test_case() {
            let listed = [$($file),+];
            assert!(listed.len() >= 10, "the error corpus has {} queries", listed.len());
            let missing = unlisted("sql_errors", &listed);
            assert!(missing.is_empty(), "add to error_cases!: {missing:?}");
        }
    };
}

corpus_cases! {
    q01_tumble_count => "01_tumble_count.toml",
    q02_tumble_sum_min_max => "02_tumble_sum_min_max.toml",
    q03_tumble_where_avg => "03_tumble_where_avg.toml",
    q04_tumble_two_keys => "04_tumble_two_keys.toml",
    q05_tumble_having => "05_tumble_having.toml",
    q06_tumble_computed_arg => "06_tumble_computed_arg.toml",
    q07_tumble_count_distinct => "07_tumble_count_distinct.toml",
    q08_tumble_stddev_var => "08_tumble_stddev_var.toml",
    q09_tumble_percentile => "09_tumble_percentile.toml",
    q10_tumble_approx_distinct => "10_tumble_approx_distinct.toml",
    q11_tumble_first_last => "11_tumble_first_last.toml",
    q12_tumble_bool => "12_tumble_bool.toml",
    q13_tumble_case => "13_tumble_case.toml",
    q14_tumble_scalar_functions => "14_tumble_scalar_functions.toml",
    q15_tumble_window_end_only => "15_tumble_window_end_only.toml",
    q16_tumble_spread => "16_tumble_spread.toml",
    q17_tumble_filter_clause => "17_tumble_filter_clause.toml",
    q18_tumble_minute => "18_tumble_minute.toml",
    q19_hop_count => "19_hop_count.toml",
    q20_hop_sum_avg => "20_hop_sum_avg.toml",
    q21_hop_where_min_max => "21_hop_where_min_max.toml",
    q22_hop_non_multiple => "22_hop_non_multiple.toml",
    q23_hop_having => "23_hop_having.toml",
    q24_hop_last_value => "24_hop_last_value.toml",
    q25_hop_distinct => "25_hop_distinct.toml",
    q26_hop_stddev_bool => "26_hop_stddev_bool.toml",
    q27_session_count => "27_session_count.toml",
    q28_session_sum_avg => "28_session_sum_avg.toml",
    q29_session_where => "29_session_where.toml",
    q30_session_having => "30_session_having.toml",
    q31_session_first_last => "31_session_first_last.toml",
    q32_session_two_keys => "32_session_two_keys.toml",
    q33_session_stats => "33_session_stats.toml",
    q34_session_bridge_inline => "34_session_bridge_inline.toml",
    q35_hop_inline => "35_hop_inline.toml",
    q36_group_upsert_count => "36_group_upsert_count.toml",
    q37_group_upsert_read_model => "37_group_upsert_read_model.toml",
    q38_tumble_region_two_phase => "38_tumble_region_two_phase.toml",
    q39_hop_region_having_two_phase => "39_hop_region_having_two_phase.toml",
    q40_tumble_region_stats_two_phase => "40_tumble_region_stats_two_phase.toml",
}

error_cases! {
    q01_order_by => "01_order_by.toml",
    q02_limit => "02_limit.toml",
    q03_join => "03_join.toml",
    q04_unknown_group_column => "04_unknown_group_column.toml",
    q05_unknown_function => "05_unknown_function.toml",
    q06_tumble_non_timestamp => "06_tumble_non_timestamp.toml",
    q07_no_window => "07_no_window.toml",
    q08_ungrouped_column => "08_ungrouped_column.toml",
    q09_wildcard => "09_wildcard.toml",
    q10_unknown_table => "10_unknown_table.toml",
    q11_syntax => "11_syntax.toml",
    q12_size_not_interval => "12_size_not_interval.toml",
    q13_over => "13_over.toml",
    q14_delete => "14_delete.toml",
    q15_without_partition_key => "15_without_partition_key.toml",
    q16_hop_size_below_slide => "16_hop_size_below_slide.toml",
    q17_hop_non_timestamp => "17_hop_non_timestamp.toml",
    q18_hop_zero_slide => "18_hop_zero_slide.toml",
    q19_hop_two_arguments => "19_hop_two_arguments.toml",
    q20_session_zero_gap => "20_session_zero_gap.toml",
    q21_session_non_timestamp => "21_session_non_timestamp.toml",
    q22_session_gap_not_interval => "22_session_gap_not_interval.toml",
    q23_two_windows => "23_two_windows.toml",
    q24_window_on_expression => "24_window_on_expression.toml",
    q25_unknown_column_in_aggregate => "25_unknown_column_in_aggregate.toml",
    q26_nested_aggregate => "26_nested_aggregate.toml",
    q27_aggregate_wrong_argument_type => "27_aggregate_wrong_argument_type.toml",
    q28_unknown_interval_unit => "28_unknown_interval_unit.toml",
    q29_having_without_window => "29_having_without_window.toml",
    q30_no_group_by => "30_no_group_by.toml",
    q31_upsert_without_partition_key => "31_upsert_without_partition_key.toml",
    q32_hop_too_many_windows => "32_hop_too_many_windows.toml",
    q33_interval_too_large => "33_interval_too_large.toml",
}
