//! The files of examples/ as a user runs them:
//! - every `examples/*.toml` passes `weir run --check`;
//! - `weir generate` writes the records of `weir::generate::records` (deterministic by seed)
//!   and refuses bad flags naming them;
//! - each Kafka example runs end to end on the test broker (`WEIR_KAFKA_BROKERS`) and
//!   PostgreSQL (`WEIR_PG_URL`, a fresh database per test) over events written by
//!   `weir generate`, and its table equals DataFusion batch SQL over the same events: the
//!   example's own query with its window call replaced by windows assigned with `date_bin`
//!   (exact for decimals: OHLC and VWAP compare as decimal text); duplicates are those the
//!   generator made, late and malformed records are in the DLQ.
//!
//! Each topic ends with one event per partition stamped far in the future, so that the
//! watermark passes every window of the generated events (their windows stay open).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cli::{stderr, weir};
use common::kafka::{brokers, unique, FLUSH_TIME};
use common::{assert_rows_match, pg_url, Row};
use datafusion::arrow::array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use weir::connectors::read_dlq_dir;
use weir::generate::{records, Dataset, GenerateOptions, Label, Record};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// The variables the example files read: `--check` runs without them, as a new user's
/// shell has none, so every `${VAR}` needs a default that works on a fresh machine.
const EXAMPLE_ENV: [&str; 2] = ["WEIR_PG_URL", "WEIR_KAFKA_BROKERS"];

#[test]
fn every_example_pipeline_file_passes_check() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let dir = tempfile::tempdir().unwrap();
    for f in &files {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
        cmd.args(["run", "--check"]).arg(f).current_dir(dir.path());
        for k in EXAMPLE_ENV {
            cmd.env_remove(k);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        // Each file opens with what it shows, its guarantee and the commands to run it.
        let text = std::fs::read_to_string(f).unwrap();
        let head: String = text.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(
            head.contains("weir run") || head.contains("-- run"),
            "{}",
            f.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// weir generate

#[test]
fn generate_writes_the_records_of_its_seed_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &str, seed: &str| {
        vec![
            "generate".to_string(),
            "trades".into(),
            "--out".into(),
            out.into(),
            "--events".into(),
            "2000".into(),
            "--duplicate-ratio".into(),
            "0.05".into(),
            "--poison-ratio".into(),
            "0.01".into(),
            "--late-ratio".into(),
            "0.01".into(),
            "--seed".into(),
            seed.into(),
        ]
    };
    for (out, seed) in [("a.jsonl", "5"), ("b.jsonl", "5"), ("c.jsonl", "6")] {
        let a = args(out, seed);
        let o = weir(
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            dir.path(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("2000 records over 4 partitions"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_eq!(read("a.jsonl"), read("b.jsonl"));
    assert_ne!(read("a.jsonl"), read("c.jsonl"));
    let want: String = records(&GenerateOptions {
        events: 2000,
        duplicate_ratio: 0.05,
        poison_ratio: 0.01,
        late_ratio: 0.01,
        seed: 5,
        ..GenerateOptions::new(Dataset::Trades)
    })
    .iter()
    .map(|r| r.text() + "\n")
    .collect();
    assert_eq!(read("a.jsonl"), want);
}

#[test]
fn generate_refuses_bad_flags_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (
            &["generate", "stocks", "--out", "x"],
            "unknown data set `stocks`",
        ),
        (
            &["generate", "trades", "--out", "x", "--poison-ratio", "1.5"],
            "--poison-ratio: must be between 0 and 1, got 1.5",
        ),
        (
            &["generate", "orders", "--out", "x", "--late-ratio", "0.1"],
            "--late-ratio: orders are never late",
        ),
        (
            &["generate", "iot", "--out", "x", "--keys", "0"],
            "--keys: must be at least 1",
        ),
        (
            &["generate", "iot"],
            "either --topic (with --brokers) or --out FILE",
        ),
        (
            &["generate", "iot", "--out", "x", "--events", "many"],
            "invalid value 'many' for '--events <EVENTS>'",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("WEIR_KAFKA_BROKERS")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
        assert!(!dir.path().join("x").exists(), "{args:?} wrote a file");
    }
}

// ---------------------------------------------------------------------------------------------
// The Kafka examples end to end

/// A fresh database on the test server, and its URL.
fn fresh_database() -> String {
    let base = pg_url();
    let name = unique("examples").replace('-', "_");
    let mut client = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .unwrap();
    // postgres://user@host:port/db[?params]
    let (head, tail) = base.split_at(base.rfind('/').unwrap());
    let params = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{head}/{name}{params}")
}

/// `weir generate <args> --topic <topic>` on the test broker.
fn generate(topic: &str, opts: &GenerateOptions) {
    let args = [
        "generate".to_string(),
        opts.dataset.to_string(),
        "--topic".into(),
        topic.into(),
        "--brokers".into(),
        brokers(),
        "--events".into(),
        opts.events.to_string(),
        "--keys".into(),
        opts.keys.to_string(),
        "--partitions".into(),
        opts.partitions.to_string(),
        "--poison-ratio".into(),
        opts.poison_ratio.to_string(),
        "--late-ratio".into(),
        opts.late_ratio.to_string(),
        "--duplicate-ratio".into(),
        opts.duplicate_ratio.to_string(),
        "--disorder-ms".into(),
        opts.disorder_ms.to_string(),
        "--interval-ms".into(),
        opts.interval_ms.to_string(),
        "--seed".into(),
        opts.seed.to_string(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = weir(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    assert!(out.status.success(), "weir generate: {}", stderr(&out));
}

/// One event per partition stamped [`FLUSH_TIME`]: the watermark passes every real window.
fn flush(topic: &str, partitions: u32, payload: &dyn Fn(i32) -> String) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for p in 0..partitions as i32 {
        let body = payload(p);
        let key = format!("__flush{p}");
        producer
            .send(
                BaseRecord::<str, str>::to(topic)
                    .partition(p)
                    .key(&key)
                    .payload(&body),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// `weir run <example>` in `cwd` with `env`, until `table` in `url` holds `rows` rows (or
/// more, or 120 s passed), then SIGTERM; what it printed.
fn run_until_rows(
    example: &str,
    cwd: &Path,
    env: &[(&str, String)],
    url: &str,
    table: &str,
    rows: usize,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["run"])
        .arg(examples_dir().join(example))
        .current_dir(cwd)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("{example} exited ({status}): {}", stderr(&out));
        }
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT CASE WHEN to_regclass('\"{table}\"') IS NULL THEN 0 ELSE (SELECT count(*) FROM \"{table}\") END"
                ),
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n as usize >= rows || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{example}: {}", stderr(&out));
    out
}

/// Every row of `table` as JSON: numeric as its exact text, timestamps as epoch millis.
fn pg_rows(url: &str, table: &str) -> Vec<Row> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let columns: Vec<(String, String)> = client
        .query(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let select: Vec<String> = columns
        .iter()
        .map(|(c, t)| match t.as_str() {
            t if t.starts_with("timestamp") => {
                format!("(extract(epoch from \"{c}\") * 1000)::bigint::text")
            }
            _ => format!("\"{c}\"::text"),
        })
        .collect();
    let q = format!("SELECT {} FROM \"{table}\"", select.join(", "));
    client
        .query(&q, &[])
        .unwrap()
        .iter()
        .map(|r| {
            let mut row = Row::new();
            for (i, (c, t)) in columns.iter().enumerate() {
                let text: Option<String> = r.get(i);
                let v = match (text, t.as_str()) {
                    (None, _) => serde_json::Value::Null,
                    (Some(s), "numeric" | "text" | "character varying") => {
                        serde_json::Value::String(s)
                    }
                    (Some(s), "double precision" | "real") => {
                        serde_json::json!(s.parse::<f64>().unwrap())
                    }
                    (Some(s), _) => serde_json::json!(s.parse::<i64>().unwrap()),
                };
                row.insert(c.clone(), v);
            }
            row
        })
        .collect()
}

/// DataFusion result rows as [`pg_rows`] gives them.
fn df_rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Row::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let v = if c.is_null(i) {
                    serde_json::Value::Null
                } else {
                    match f.data_type() {
                        DataType::Decimal128(_, _) => serde_json::Value::String(
                            c.as_any()
                                .downcast_ref::<Decimal128Array>()
                                .unwrap()
                                .value_as_string(i),
                        ),
                        DataType::Utf8 => serde_json::Value::String(
                            c.as_any()
                                .downcast_ref::<StringArray>()
                                .unwrap()
                                .value(i)
                                .to_string(),
                        ),
                        DataType::Float64 => {
                            serde_json::json!(c
                                .as_any()
                                .downcast_ref::<Float64Array>()
                                .unwrap()
                                .value(i))
                        }
                        DataType::Int64 => {
                            serde_json::json!(c
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .value(i))
                        }
                        DataType::Timestamp(_, _) => {
                            let ms = datafusion::arrow::compute::cast(
                                c,
                                &DataType::Timestamp(TimeUnit::Millisecond, None),
                            )
                            .unwrap();
                            let ms =
                                datafusion::arrow::compute::cast(&ms, &DataType::Int64).unwrap();
                            serde_json::json!(ms
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap()
                                .value(i))
                        }
                        other => panic!("{}: no comparison for {other}", f.name()),
                    }
                };
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    out
}

/// The `sql` of an example file.
fn example_sql(file: &str) -> String {
    let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["sql"].as_str().unwrap().to_string()
}

/// `query` (reading `table`, with a TUMBLE or HOP call) over `events` in batch: every event
/// in each of its windows (`window_start`, `window_end` assigned with `date_bin`), then the
/// query with its window call replaced by those columns.
fn batch_oracle(query: &str, table: &str, events: RecordBatch) -> Vec<Row> {
    let (a, b) = crate::sql_corpus::window_call_span(query);
    let call = query[a..b].to_ascii_lowercase();
    let minutes = |s: &str| -> i64 {
        s.split("interval '")
            .skip(1)
            .map(|p| p[..p.find('\'').unwrap()].parse::<i64>().unwrap() * 60_000)
            .collect::<Vec<_>>()
            .first()
            .copied()
            .unwrap()
    };
    let epoch = "TIMESTAMP '1970-01-01T00:00:00'";
    let (slide, size) = if call.starts_with("hop(") {
        let parts: Vec<&str> = call.split("interval").skip(1).collect();
        (
            minutes(&format!("interval{}", parts[0])),
            minutes(&format!("interval{}", parts[1])),
        )
    } else {
        let s = minutes(&call);
        (s, s)
    };
    let n = (size + slide - 1) / slide;
    let windowed = crate::sql_corpus::concat(crate::sql_corpus::run_sql(
        vec![("events", events)],
        &format!(
            "SELECT *, to_timestamp_millis(CAST(window_start AS BIGINT) + {size}) AS window_end FROM ( \
               SELECT e.*, to_timestamp_millis(CAST(date_bin(INTERVAL '{slide} milliseconds', e.event_time, {epoch}) AS BIGINT) - ks.k * {slide}) AS window_start \
               FROM events e CROSS JOIN (SELECT unnest(range(0, {n})) AS k) ks) w \
             WHERE CAST(event_time AS BIGINT) < CAST(window_start AS BIGINT) + {size}"
        ),
    ));
    let q = format!("{}window_start, window_end{}", &query[..a], &query[b..]);
    let lower = q.to_ascii_lowercase();
    let from = format!("from {table}");
    let i = lower.find(&from).unwrap();
    let q = format!("{}FROM windowed{}", &q[..i], &q[i + from.len()..]);
    df_rows(&crate::sql_corpus::run_sql(
        vec![("windowed", windowed)],
        &q,
    ))
}

/// The string field `key` of a JSON payload.
fn field(payload: &[u8], key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

/// The records that reach the window: valid ones, and late ones not dead-lettered as late
/// (a late event in a partition's first batch finds no watermark yet); checks that every
/// dead letter is a poison or late record, each poison record once.
fn accepted<'a>(all: &'a [Record], dlq_dir: &Path, id: &str) -> Vec<&'a Record> {
    let dlq = read_dlq_dir(dlq_dir).unwrap();
    let poison = all.iter().filter(|r| r.label == Label::Poison).count();
    let mut late_ids = std::collections::BTreeSet::new();
    let mut refused = 0;
    for d in &dlq {
        if d.letter.kind.as_str() == "late" {
            let got = field(d.letter.payload.as_deref().unwrap(), id).unwrap();
            assert!(
                all.iter().any(|r| r.label == Label::Late
                    && field(r.payload.as_deref().unwrap(), id).as_deref() == Some(&got)),
                "{got} was dead-lettered as late but is not"
            );
            late_ids.insert(got);
        } else {
            refused += 1;
        }
    }
    assert_eq!(
        refused, poison,
        "every poison record once in the DLQ: {dlq:?}"
    );
    if all.iter().filter(|r| r.label == Label::Late).count() > 5 {
        assert!(!late_ids.is_empty(), "no late event reached the DLQ");
    }
    all.iter()
        .filter(|r| match r.label {
            Label::Valid => true,
            Label::Late => !late_ids.contains(&field(r.payload.as_deref().unwrap(), id).unwrap()),
            _ => false,
        })
        .collect()
}

fn trades_batch(trades: &[&Record]) -> RecordBatch {
    let vals: Vec<serde_json::Value> = trades
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap())
        .collect();
    // The price's exact text (serde_json would read a float) as ten-thousandths.
    let units = |r: &Record| -> i128 {
        let text = r.text();
        let at = text.find("\"price\":").unwrap() + 8;
        let raw = &text[at..at + text[at..].find(',').unwrap()];
        let (int, frac) = raw.split_once('.').unwrap();
        int.parse::<i128>().unwrap() * 10_000 + format!("{frac:0<4}").parse::<i128>().unwrap()
    };
    let s = |k: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            vals.iter().map(|v| v[k].as_str().unwrap().to_string()),
        ))
    };
    let schema = Schema::new(vec![
        Field::new("trade_id", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("price", DataType::Decimal128(18, 4), false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("side", DataType::Utf8, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    let cols: Vec<ArrayRef> = vec![
        s("trade_id"),
        s("symbol"),
        Arc::new(
            Decimal128Array::from_iter_values(trades.iter().map(|r| units(r)))
                .with_precision_and_scale(18, 4)
                .unwrap(),
        ),
        Arc::new(Int64Array::from_iter_values(
            vals.iter().map(|v| v["quantity"].as_i64().unwrap()),
        )),
        s("side"),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            vals.iter().map(|v| v["event_time"].as_i64().unwrap()),
        )),
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

fn trades_options() -> GenerateOptions {
    GenerateOptions {
        events: 4_000,
        keys: 6,
        partitions: 2,
        poison_ratio: 0.005,
        late_ratio: 0.005,
        duplicate_ratio: 0.03,
        interval_ms: 100,
        seed: 2026,
        ..GenerateOptions::new(Dataset::Trades)
    }
}

fn flush_trade(p: i32) -> String {
    format!(
        r#"{{"trade_id":"FLUSH{p}","symbol":"FLUSH{p}","price":1.0000,"quantity":1,"side":"buy","event_time":{FLUSH_TIME}}}"#
    )
}

/// A trading example (1-minute bars or the 5-minute hopping VWAP) over generated trades.
fn trading_example(file: &str, table_var: &str, opts: GenerateOptions) {
    let topic = unique("trades");
    generate(&topic, &opts);
    flush(&topic, opts.partitions, &flush_trade);
    let url = fresh_database();
    let all = records(&opts);
    let dups = all
        .iter()
        .filter(|r| matches!(r.label, Label::Duplicate(_)))
        .count();
    assert!(dups > 50, "{dups} duplicates");

    let sql = example_sql(file);
    // Every trade once (the generator knows the duplicates); late ones as the DLQ says.
    let dir = tempfile::tempdir().unwrap();
    let table = "bars";
    let env = [
        ("WEIR_KAFKA_BROKERS", brokers()),
        ("TRADES_TOPIC", topic.clone()),
        ("WEIR_PG_URL", url.clone()),
        (table_var, table.to_string()),
    ];
    // The oracle needs the DLQ, which needs the run: count the rows once it has run.
    let valid: Vec<&Record> = all.iter().filter(|r| r.label == Label::Valid).collect();
    let at_least = batch_oracle(&sql, "trades", trades_batch(&valid)).len();
    let out = run_until_rows(file, dir.path(), &env, &url, table, at_least);
    let dlq = dir
        .path()
        .join(file.trim_end_matches(".toml").replace('_', "-"))
        .join("dlq");
    let kept = accepted(&all, &dlq, "trade_id");
    let want = batch_oracle(&sql, "trades", trades_batch(&kept));
    let got = pg_rows(&url, table);
    assert!(want.len() > 20, "{file}: only {} windows", want.len());
    assert_rows_match(&got, &want, file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{dups} deduplicated")), "{stdout}");
}

#[test]
fn trading_bars_are_the_exact_ohlc_and_vwap_of_the_generated_trades() {
    trading_example("trading_bars.toml", "BARS_TABLE", trades_options());
}

#[test]
fn trading_vwap_is_the_exact_hopping_vwap_of_the_generated_trades() {
    // No late trades: one later than the bound is late for the hopping windows that have
    // closed and counts in those still open, which depends on where the watermark was.
    let opts = GenerateOptions {
        late_ratio: 0.0,
        ..trades_options()
    };
    trading_example("trading_vwap.toml", "VWAP_TABLE", opts);
}

/// OHLC and VWAP computed here with integers, against the bars the example wrote: decimals
/// exact to the last digit (the oracle above is DataFusion's own decimal arithmetic).
#[test]
fn trading_bars_equal_integer_arithmetic_over_the_trades() {
    let opts = GenerateOptions {
        late_ratio: 0.0,
        poison_ratio: 0.0,
        ..trades_options()
    };
    let topic = unique("trades-int");
    generate(&topic, &opts);
    flush(&topic, opts.partitions, &flush_trade);
    let url = fresh_database();
    let all = records(&opts);
    // (symbol, minute) -> (first (time, id, price), last, high, low, sum price*qty, qty, n)
    type Bar = (
        (i64, String, i128),
        (i64, String, i128),
        i128,
        i128,
        i128,
        i64,
        i64,
    );
    let mut bars: BTreeMap<(String, i64), Bar> = BTreeMap::new();
    for r in all.iter().filter(|r| r.label == Label::Valid) {
        let b = trades_batch(&[r]);
        let price = b
            .column(2)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap()
            .value(0);
        let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
        let (t, q, id) = (
            v["event_time"].as_i64().unwrap(),
            v["quantity"].as_i64().unwrap(),
            v["trade_id"].as_str().unwrap().to_string(),
        );
        let key = (
            v["symbol"].as_str().unwrap().to_string(),
            t - t.rem_euclid(60_000),
        );
        let e = bars.entry(key).or_insert((
            (i64::MAX, String::new(), 0),
            (i64::MIN, String::new(), 0),
            i128::MIN,
            i128::MAX,
            0,
            0,
            0,
        ));
        if (t, &id) < (e.0 .0, &e.0 .1) {
            e.0 = (t, id.clone(), price);
        }
        if (t, &id) > (e.1 .0, &e.1 .1) {
            e.1 = (t, id, price);
        }
        e.2 = e.2.max(price);
        e.3 = e.3.min(price);
        e.4 += price * i128::from(q);
        e.5 += q;
        e.6 += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("WEIR_KAFKA_BROKERS", brokers()),
        ("TRADES_TOPIC", topic),
        ("WEIR_PG_URL", url.clone()),
        ("BARS_TABLE", "bars".to_string()),
    ];
    run_until_rows(
        "trading_bars.toml",
        dir.path(),
        &env,
        &url,
        "bars",
        bars.len(),
    );
    let dec = |u: i128| weir::generate::decimal_text(u, 4);
    let mut got = BTreeMap::new();
    for r in pg_rows(&url, "bars") {
        let s = |k: &str| r[k].as_str().unwrap().to_string();
        got.insert(
            (s("symbol"), r["window_start"].as_i64().unwrap()),
            (
                s("open"),
                s("close"),
                s("high"),
                s("low"),
                s("vwap"),
                r["volume"].clone(),
                r["trades"].clone(),
            ),
        );
    }
    // The VWAP's digits as far as the column carries them (the scale of DataFusion's decimal
    // division), truncated like it.
    let vwap_scale = got.values().next().map_or(4, |g| {
        g.4.split_once('.').map_or(0, |(_, f)| f.len() as u32)
    });
    let want: BTreeMap<_, _> = bars
        .iter()
        .map(|(k, b)| {
            // The VWAP's digits as far as the column carries them, truncated like a decimal
            // division.
            let vwap = b.4 * 10i128.pow(vwap_scale) / 10_000 / i128::from(b.5);
            (
                k.clone(),
                (
                    dec(b.0 .2),
                    dec(b.1 .2),
                    dec(b.2),
                    dec(b.3),
                    weir::generate::decimal_text(vwap, vwap_scale),
                    serde_json::json!(b.5),
                    serde_json::json!(b.6),
                ),
            )
        })
        .collect();
    assert!(want.len() > 20, "only {} bars", want.len());
    assert_eq!(got, want);
}

fn iot_batch(readings: &[&Record]) -> RecordBatch {
    let vals: Vec<serde_json::Value> = readings
        .iter()
        .map(|r| serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap())
        .collect();
    let s = |k: &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            vals.iter().map(|v| v[k].as_str().unwrap().to_string()),
        ))
    };
    let f = |k: &str| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            vals.iter().map(|v| v[k].as_f64().unwrap()),
        ))
    };
    let schema = Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("sensor_id", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("temperature", DataType::Float64, false),
        Field::new("humidity", DataType::Float64, false),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]);
    let cols = vec![
        s("event_id"),
        s("sensor_id"),
        s("region"),
        f("temperature"),
        f("humidity"),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            vals.iter().map(|v| v["event_time"].as_i64().unwrap()),
        )) as ArrayRef,
    ];
    RecordBatch::try_new(Arc::new(schema), cols).unwrap()
}

fn iot_options() -> GenerateOptions {
    GenerateOptions {
        events: 4_000,
        keys: 40,
        partitions: 3,
        poison_ratio: 0.005,
        late_ratio: 0.005,
        interval_ms: 100,
        seed: 77,
        ..GenerateOptions::new(Dataset::Iot)
    }
}

fn flush_reading(p: i32) -> String {
    format!(
        r#"{{"event_id":"flush{p}","sensor_id":"__flush{p}","region":"__flush","temperature":0,"humidity":0,"event_time":{FLUSH_TIME}}}"#
    )
}

/// An IoT example over generated readings: its table equals `oracle_sql` (over `windowed`,
/// whose window is the example's) in batch.
fn iot_example(file: &str, table_var: &str, query: &str) {
    let opts = iot_options();
    let topic = unique("iot");
    generate(&topic, &opts);
    flush(&topic, opts.partitions, &flush_reading);
    let url = fresh_database();
    let all = records(&opts);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("WEIR_KAFKA_BROKERS", brokers()),
        ("IOT_TOPIC", topic),
        ("WEIR_PG_URL", url.clone()),
        (table_var, "windows".to_string()),
    ];
    let valid: Vec<&Record> = all.iter().filter(|r| r.label == Label::Valid).collect();
    let at_least = batch_oracle(query, "events", iot_batch(&valid)).len();
    run_until_rows(file, dir.path(), &env, &url, "windows", at_least);
    let dlq = dir
        .path()
        .join(file.trim_end_matches(".toml").replace('_', "-"))
        .join("dlq");
    let kept = accepted(&all, &dlq, "event_id");
    let want = batch_oracle(query, "events", iot_batch(&kept));
    assert!(want.len() > 10, "{file}: only {} windows", want.len());
    assert_rows_match(&pg_rows(&url, "windows"), &want, file);
}

#[test]
fn iot_kafka_windows_are_the_batch_averages_of_the_generated_readings() {
    iot_example(
        "iot_kafka.toml",
        "IOT_TABLE",
        "SELECT sensor_id, window_start, window_end, avg(temperature) AS avg_temp, max(temperature) AS max_temp, count(*) AS readings FROM events GROUP BY sensor_id, TUMBLE(event_time, INTERVAL '1' MINUTE)",
    );
}

#[test]
fn region_rollup_is_the_batch_rollup_of_the_generated_readings() {
    iot_example(
        "region_rollup.toml",
        "REGION_TABLE",
        &example_sql("region_rollup.toml"),
    );
}

// ---------------------------------------------------------------------------------------------
// The Rust examples, run here (not only compiled)

#[allow(dead_code)]
#[path = "../examples/order_projection.rs"]
mod order_projection_example;

/// Runs `run` on a thread until `done` holds (polled, at most 120 s), then stops it; what it
/// returned.
fn run_until<T: Send + 'static>(
    run: impl FnOnce(weir_runtime::Shutdown) -> T + Send + 'static,
    done: &dyn Fn() -> bool,
) -> T {
    let shutdown = weir_runtime::Shutdown::new();
    let stop = shutdown.clone();
    let worker = std::thread::spawn(move || run(stop));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() && Instant::now() < deadline && !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
    }
    shutdown.trigger();
    worker.join().unwrap()
}

fn sorted(rows: &[Row]) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn the_order_read_model_example_holds_the_generators_plan_of_every_order() {
    use order_projection_example::{run, OrderModel};
    use weir::generate::{order_plan, OrderStatus};
    let opts = GenerateOptions {
        events: 3_000,
        keys: 40,
        partitions: 3,
        poison_ratio: 0.01,
        duplicate_ratio: 0.03,
        seed: 11,
        ..GenerateOptions::new(Dataset::Orders)
    };
    let topic = unique("orders");
    generate(&topic, &opts);
    let url = fresh_database();
    let all = records(&opts);
    let plan = order_plan(&opts);
    assert!(
        plan.values()
            .filter(|s| s.status == OrderStatus::Cancelled)
            .count()
            > 5
    );
    let want: Vec<Row> = plan
        .iter()
        .filter(|(_, s)| s.status != OrderStatus::Cancelled)
        .map(|(id, s)| {
            let v = serde_json::json!({
                "order_id": id,
                "customer_id": s.customer,
                "status": s.status.as_str(),
                "total": weir::generate::decimal_text(i128::from(s.total_cents), 2),
                "items": s.items,
                "version": s.version,
            });
            v.as_object().unwrap().clone()
        })
        .collect();
    let want = sorted(&want);
    let dir = tempfile::tempdir().unwrap();
    let model = OrderModel {
        brokers: brokers(),
        topic,
        pg_url: url.clone(),
        table: "orders".into(),
        dlq_dir: dir.path().join("dlq"),
    };
    let table = || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let exists: bool = c
            .query_one("SELECT to_regclass('orders') IS NOT NULL", &[])
            .unwrap()
            .get(0);
        if exists {
            sorted(&pg_rows(&url, "orders"))
        } else {
            Vec::new()
        }
    };
    let summary = run_until(move |stop| run(&model, stop), &|| table() == want).unwrap();
    assert_eq!(table(), want);

    let dups = all
        .iter()
        .filter(|r| matches!(r.label, Label::Duplicate(_)))
        .count() as u64;
    assert_eq!(summary.counters.deduplicated, dups);
    // Every illegal transition is in the DLQ with the reason, and every poison record.
    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    let illegal: std::collections::BTreeSet<String> = all
        .iter()
        .filter(|r| r.label == Label::Illegal)
        .map(|r| field(r.payload.as_deref().unwrap(), "event_id").unwrap())
        .collect();
    assert!(illegal.len() > 5, "{} illegal", illegal.len());
    let refused: std::collections::BTreeSet<String> = dlq
        .iter()
        .filter(|d| {
            d.letter
                .message
                .contains("is not allowed for an order that is")
        })
        .map(|d| field(d.letter.payload.as_deref().unwrap(), "event_id").unwrap())
        .collect();
    assert_eq!(refused, illegal);
    let poison = all.iter().filter(|r| r.label == Label::Poison).count();
    assert_eq!(dlq.len(), illegal.len() + poison, "{dlq:?}");
}

#[allow(dead_code)]
#[path = "../examples/trading.rs"]
mod trading_example;

#[test]
fn the_trading_example_writes_the_exact_bars_of_the_generated_trades() {
    use trading_example::{run, Trading, BARS};
    let opts = trades_options();
    let topic = unique("trades-rs");
    generate(&topic, &opts);
    flush(&topic, opts.partitions, &flush_trade);
    let url = fresh_database();
    let all = records(&opts);
    let valid: Vec<&Record> = all.iter().filter(|r| r.label == Label::Valid).collect();
    let at_least = batch_oracle(BARS, "trades", trades_batch(&valid)).len();
    let dir = tempfile::tempdir().unwrap();
    let t = Trading {
        brokers: brokers(),
        topic,
        pg_url: url.clone(),
        table: "bars".into(),
        dlq_dir: dir.path().join("dlq"),
    };
    let count = || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query_one(
            "SELECT CASE WHEN to_regclass('bars') IS NULL THEN 0 ELSE (SELECT count(*) FROM bars) END",
            &[],
        )
        .map_or(0, |r| r.get::<_, i64>(0) as usize)
    };
    let summary = run_until(move |stop| run(&t, stop), &|| count() >= at_least).unwrap();
    let kept = accepted(&all, &dir.path().join("dlq"), "trade_id");
    let want = batch_oracle(BARS, "trades", trades_batch(&kept));
    assert!(want.len() > 20, "only {} bars", want.len());
    assert_rows_match(&pg_rows(&url, "bars"), &want, "examples/trading.rs");
    let dups = all
        .iter()
        .filter(|r| matches!(r.label, Label::Duplicate(_)))
        .count() as u64;
    assert_eq!(summary.counters.deduplicated, dups);
}

#[allow(dead_code)]
#[path = "../examples/iot_windows.rs"]
mod iot_windows_example;

#[test]
fn the_iot_windows_example_writes_the_windows_of_its_generator() {
    let dir = tempfile::tempdir().unwrap();
    let events = 20_000;
    let summary =
        iot_windows_example::run(dir.path(), events, weir_runtime::Shutdown::new()).unwrap();
    assert!(summary.finished);
    let truth = weir::connectors::EventGenerator::new(&iot_windows_example::generator(events));
    let late: std::collections::BTreeSet<String> = read_dlq_dir(dir.path().join("dlq"))
        .unwrap()
        .iter()
        .filter(|d| d.letter.kind.as_str() == "late")
        .map(|d| field(d.letter.payload.as_deref().unwrap(), "event_id").unwrap())
        .collect();
    // (sensor, window start) -> (sum, max, count) of the kept readings.
    let mut want: BTreeMap<(String, i64), (f64, f64, i64)> = BTreeMap::new();
    for p in 0..truth.partitions() {
        for o in 0..truth.events_in_partition(p).unwrap() as i64 {
            let e = truth.event(p, o).unwrap();
            let id = format!("{p}-{o}");
            if e.poison.is_some()
                || late.contains(&id)
                || !(-40.0..=60.0).contains(&e.temperature())
            {
                assert!(!late.contains(&id) || e.late, "{id} is not late");
                continue;
            }
            let start = e.event_time_ms - e.event_time_ms.rem_euclid(60_000);
            let w = want
                .entry((e.sensor_id(), start))
                .or_insert((0.0, f64::MIN, 0));
            w.0 += e.temperature();
            w.1 = w.1.max(e.temperature());
            w.2 += 1;
        }
    }
    let conn = rusqlite::Connection::open(dir.path().join("windows.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT sensor_id, window_start, avg_temp, max_temp, readings FROM sensor_windows")
        .unwrap();
    let got: BTreeMap<(String, i64), (f64, f64, i64)> = stmt
        .query_map([], |r| {
            Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?, r.get(4)?)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(want.len() > 1000, "{}", want.len());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, (sum, max, n)) in &want {
        let (avg, gmax, gn) = got[k];
        assert_eq!((gmax, gn), (*max, *n), "{k:?}");
        assert!((avg - sum / *n as f64).abs() < 1e-9, "{k:?}: {avg}");
    }
}

/// A Rust example not included above would only be compiled, never run.
#[test]
fn every_rust_example_is_run_by_a_test_here() {
    let listed = include_str!("examples.rs");
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                listed.contains(&format!("#[path = \"../examples/{name}\"]")),
                "examples/{name} is not run by tests/examples.rs"
            );
        }
    }
}

/// The fields of a flat JSON object line as their raw text (numbers as written, strings
/// without their quotes): decimals compare exactly.
fn raw_fields(line: &str) -> BTreeMap<String, String> {
    let body = line.trim().trim_start_matches('{').trim_end_matches('}');
    body.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once("\":").unwrap();
            (
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            )
        })
        .collect()
}

#[test]
fn kafka_exactly_once_bars_are_in_the_output_topic_once_each() {
    assert!(
        common::kafka::broker_is_apache_kafka(),
        "needs a broker that implements transactions (WEIR_TEST_BROKER=kafka)"
    );
    let file = "kafka_exactly_once.toml";
    let opts = trades_options();
    let topic = unique("trades-eos");
    generate(&topic, &opts);
    flush(&topic, opts.partitions, &flush_trade);
    let out_topic = common::kafka::create_topic(2);
    let ckpt_topic = common::kafka::create_topic(2);
    let all = records(&opts);
    let sql = example_sql(file);
    let valid: Vec<&Record> = all.iter().filter(|r| r.label == Label::Valid).collect();
    let at_least = batch_oracle(&sql, "trades", trades_batch(&valid)).len();

    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run"])
        .arg(examples_dir().join(file))
        .current_dir(dir.path())
        .env("WEIR_LOG", "warn")
        .env("WEIR_KAFKA_BROKERS", brokers())
        .env("TRADES_TOPIC", &topic)
        .env("BARS_TOPIC", &out_topic)
        .env("CHECKPOINT_TOPIC", &ckpt_topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let payloads = common::kafka::read_payloads(
        &out_topic,
        2,
        at_least,
        "read_committed",
        Duration::from_secs(90),
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{file}: {}", stderr(&out));

    let kept = accepted(&all, &dir.path().join("trading-bars-eos/dlq"), "trade_id");
    let want = batch_oracle(&sql, "trades", trades_batch(&kept));
    assert!(want.len() > 20, "only {} bars", want.len());
    let types: BTreeMap<String, bool> = want[0]
        .iter()
        .map(|(k, v)| (k.clone(), v.is_number()))
        .collect();
    let got: Vec<Row> = payloads
        .iter()
        .map(|p| {
            let mut row = Row::new();
            for (k, raw) in raw_fields(&String::from_utf8_lossy(p)) {
                let v = match types.get(&k) {
                    Some(true) if k.starts_with("window") => {
                        serde_json::json!(common::epoch_millis(&serde_json::Value::String(raw)))
                    }
                    Some(true) => serde_json::json!(raw.parse::<i64>().unwrap()),
                    _ => serde_json::Value::String(raw),
                };
                row.insert(k, v);
            }
            row
        })
        .collect();
    assert_eq!(sorted(&got), sorted(&want), "{file}: every bar once");
}
