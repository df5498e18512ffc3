//! Helpers shared by the end-to-end tests: a seeded event stream with a known disorder bound,
//! rows as comparable JSON, and DataFusion batch SQL as the oracle.
#![allow(dead_code)]

pub mod cli;
pub mod kafka;

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use weir::operators::{FieldConfig, FieldType, SchemaConfig};
use weir_runtime::testkit::MemoryDlq;
use weir_runtime::RawMessage;

/// The `[schema]` of the generator's IoT readings in a pipeline file (insert it with `{IOT_SCHEMA}`
/// in a `format!`).
pub const IOT_SCHEMA: &str = r#"[schema]
table = "sensors"
event_time = "event_time"
partition_key = "sensor_id"
fields = [
  { name = "event_id", type = "string" },
  { name = "sensor_id", type = "string" },
  { name = "temperature", type = "float64" },
  { name = "humidity", type = "float64" },
  { name = "event_time", type = "timestamp" },
]
"#;

/// splitmix64: the tests' own deterministic randomness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One event of the test stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub region: String,
    pub seq: i64,
    pub v: i64,
    pub x: f64,
    pub ts: i64,
}

impl Event {
    pub fn json(&self) -> String {
        format!(
            r#"{{"key":"{}","region":"{}","seq":{},"v":{},"x":{},"ts":{}}}"#,
            self.key, self.region, self.seq, self.v, self.x, self.ts
        )
    }
}

pub fn schema() -> SchemaConfig {
    let f = |name: &str, field_type| FieldConfig::new(name, field_type);
    SchemaConfig {
        table: "events".into(),
        event_time: "ts".into(),
        partition_key: Some("key".into()),
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            f("key", FieldType::String),
            f("region", FieldType::String),
            f("seq", FieldType::Int64),
            f("v", FieldType::Int64),
            f("x", FieldType::Float64),
            // Some SQL corpus cases are stamped near the epoch (windows before 0).
            FieldConfig {
                any_epoch: true,
                ..f("ts", FieldType::Timestamp)
            },
        ],
    }
}

/// `events` events over `keys` keys in `partitions` partitions (key i lives in partition
/// i % partitions). Event time advances per partition and goes back by at most
/// `max_disorder_ms`, so with that bound no event is late.
pub fn stream(
    seed: u64,
    partitions: i32,
    keys: u64,
    events: usize,
    max_disorder_ms: u64,
) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut offsets = vec![0i64; partitions as usize];
    let mut clocks = vec![1_700_000_000_000i64; partitions as usize];
    let mut seqs = vec![0i64; keys as usize];
    let mut out = Vec::with_capacity(events);
    for _ in 0..events {
        let k = rng.below(keys);
        let p = (k % partitions as u64) as usize;
        clocks[p] += rng.below(40) as i64;
        let ts = clocks[p] - rng.below(max_disorder_ms + 1) as i64;
        seqs[k as usize] += 1;
        out.push(Event {
            partition: p as i32,
            offset: offsets[p],
            key: format!("k{k}"),
            region: format!("r{}", k % 7),
            seq: seqs[k as usize],
            v: rng.below(2_000) as i64 - 1_000,
            x: (rng.below(1_000_000) as f64) / 1000.0 - 300.0,
            ts,
        });
        offsets[p] += 1;
    }
    out
}

pub fn by_partition(
    events: &[Event],
    payload: impl Fn(&Event) -> Option<Vec<u8>>,
) -> BTreeMap<i32, Vec<RawMessage>> {
    let mut parts: BTreeMap<i32, Vec<RawMessage>> = BTreeMap::new();
    for e in events {
        parts.entry(e.partition).or_default().push(RawMessage {
            offset: e.offset,
            key: Some(e.key.as_bytes().to_vec()),
            payload: payload(e),
            timestamp_ms: None,
            headers: Vec::new(),
        });
    }
    parts
}

/// The events as one Arrow batch (the oracle's table).
pub fn events_batch(events: &[&Event]) -> RecordBatch {
    let s = schema().arrow_schema();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.key.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.region.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.seq))),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.v))),
        Arc::new(Float64Array::from_iter_values(events.iter().map(|e| e.x))),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            events.iter().map(|e| e.ts),
        )),
    ];
    RecordBatch::try_new(s, cols).unwrap()
}

/// Rows as JSON objects, timestamps as epoch millis, the offset column dropped.
pub fn rows(batches: &[RecordBatch]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut out = Vec::new();
    for b in batches {
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for (f, c) in b.schema().fields().iter().zip(b.columns()) {
            if f.name() == weir_runtime::OFFSET_COLUMN {
                continue;
            }
            let (dt, col) = match f.data_type() {
                DataType::Timestamp(_, _) => (DataType::Int64, cast(c, &DataType::Int64).unwrap()),
                other => (other.clone(), c.clone()),
            };
            fields.push(Field::new(f.name(), dt, true));
            cols.push(col);
        }
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let mut buf = Vec::new();
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        for line in buf.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap());
        }
    }
    out
}

/// Rows keyed by the values of `keys`, as sorted strings: for exact multiset comparison.
pub fn sorted_lines(rows: &[serde_json::Map<String, serde_json::Value>]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    v.sort();
    v
}

/// Run a SQL query over `events` registered as table `events`.
pub fn batch_sql(events: &[&Event], sql: &str) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        let table = datafusion::datasource::MemTable::try_new(
            schema().arrow_schema(),
            vec![vec![events_batch(events)]],
        )
        .unwrap();
        ctx.register_table("events", Arc::new(table)).unwrap();
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    })
}

pub type Row = serde_json::Map<String, serde_json::Value>;

/// The same rows in any order: exact for everything but floats, floats within 1e-9
/// relative (a checkpoint merges accumulator state, which changes float rounding).
pub fn assert_rows_match(got: &[Row], want: &[Row], query: &str) {
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

/// The test PostgreSQL (from `scripts/postgres.sh`).
pub fn pg_url() -> String {
    std::env::var("WEIR_PG_URL").unwrap_or_else(|_| {
        panic!("WEIR_PG_URL is not set: start PostgreSQL with `export \"$(scripts/postgres.sh start)\"` (scripts/test.sh does it)")
    })
}

/// Epoch millis of a timestamp as the JSONL sink writes it: a number, or arrow's
/// "YYYY-MM-DDTHH:MM:SS[.fff]" in UTC.
pub fn epoch_millis(v: &serde_json::Value) -> i64 {
    let s = match v {
        serde_json::Value::Number(n) => return n.as_i64().unwrap(),
        serde_json::Value::String(s) => s,
        other => panic!("not a timestamp: {other}"),
    };
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    ((days * 24 + t[0]) * 60 + t[1]) * 60_000 + t[2] * 1000 + ms
}

/// The committed dead letters of `dlq` as (partition, offset, kind), sorted.
pub fn dead_letters(dlq: &MemoryDlq) -> Vec<(i32, i64, String)> {
    let mut v: Vec<(i32, i64, String)> = dlq
        .committed
        .lock()
        .unwrap()
        .iter()
        .map(|l| (l.partition, l.offset, l.kind.as_str().to_string()))
        .collect();
    v.sort();
    v
}

/// A small bounded pipeline file named `name`: 2000 generated events over 2 partitions into
/// the null sink, checkpoints and a JSONL DLQ in the working directory, then `extra`
/// (more sections).
pub fn generator_pipeline(name: &str, extra: &str) -> String {
    format!(
        r#"name = "{name}"

[source]
type = "generator"
partitions = 2
sensors = 10
events = 2000

{IOT_SCHEMA}

[[sinks]]
type = "null"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"

{extra}"#
    )
}
