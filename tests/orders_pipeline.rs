//! Orders with exact decimal prices end to end: a pipeline file over a JSONL input whose
//! prices are written in every way JSON allows (`178.55`, `178.5500`, `1785500e-4`) sums them
//! in tumbling windows, and the sinks hold exactly the totals computed here with integer
//! arithmetic (a float64 would be off in the last digits); prices that do not fit
//! `decimal(18, 4)` are dead-lettered naming the field and the value.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cli::{stderr, weir};
use common::Rng;
use weir::connectors::read_dlq_dir;

/// 2026-01-05T14:40:00Z in epoch milliseconds.
const T: i64 = 1_767_624_000_000;
const SCALE: u32 = 4;
const SYMBOLS: [&str; 3] = ["AAPL", "MSFT", "NVDA"];

/// A window's expected row: count, sum, min and max of the unscaled prices.
#[derive(Debug, Default, Clone, PartialEq)]
struct Window {
    n: i64,
    total: i128,
    low: i128,
    high: i128,
}

/// The input lines (valid orders and poison ones), the expected windows by (symbol, minute
/// start) and the poison lines' (order id, value shown in the message).
struct Orders {
    lines: Vec<String>,
    windows: BTreeMap<(String, i64), Window>,
    poison: Vec<(String, &'static str)>,
}

/// `unscaled` at [`SCALE`] written in one of several exact JSON spellings.
fn spell(unscaled: i128, how: u64) -> String {
    let div = 10i128.pow(SCALE);
    let (int, frac) = (unscaled / div, unscaled % div);
    let full = format!("{int}.{frac:04}");
    match how % 4 {
        0 => full,
        1 if frac == 0 => int.to_string(),
        1 => full.trim_end_matches('0').to_string(),
        2 => format!("{unscaled}e-{SCALE}"),
        _ => format!("{full}000"),
    }
}

fn orders(n: usize, seed: u64) -> Orders {
    let mut rng = Rng(seed);
    let mut lines = Vec::new();
    let mut windows: BTreeMap<(String, i64), Window> = BTreeMap::new();
    for i in 0..n {
        let symbol = SYMBOLS[rng.below(3) as usize];
        // Up to 10^13 - 1 (a price below a billion with 4 fraction digits), some of them
        // whole.
        let mut unscaled = i128::from(rng.below(10_000_000_000_000));
        if rng.below(5) == 0 {
            unscaled -= unscaled % 10_000;
        }
        let ts = T + i as i64 * 37;
        lines.push(format!(
            r#"{{"order_id":"o{i}","symbol":"{symbol}","price":{},"event_time":{ts}}}"#,
            spell(unscaled, rng.next())
        ));
        let start = ts - ts.rem_euclid(60_000);
        let w = windows
            .entry((symbol.to_string(), start))
            .or_insert(Window {
                low: i128::MAX,
                ..Window::default()
            });
        w.n += 1;
        w.total += unscaled;
        w.low = w.low.min(unscaled);
        w.high = w.high.max(unscaled);
    }
    let poison = vec![
        ("p-frac".to_string(), "178.55001"),
        ("p-range".to_string(), "1e14"),
        ("p-string".to_string(), "\"178.55\""),
        ("p-bool".to_string(), "true"),
    ];
    for (k, (id, value)) in poison.iter().enumerate() {
        lines.insert(
            (k + 1) * n / 5,
            format!(r#"{{"order_id":"{id}","symbol":"AAPL","price":{value},"event_time":{T}}}"#),
        );
    }
    Orders {
        lines,
        windows,
        poison,
    }
}

/// `unscaled` at `scale` as arrow writes a decimal: every fraction digit.
fn decimal_text(unscaled: i128, scale: u32) -> String {
    let div = 10i128.pow(scale);
    format!(
        "{}.{:0width$}",
        unscaled / div,
        unscaled % div,
        width = scale as usize
    )
}

/// The raw JSON text of `key`'s value in a flat JSON object line (numbers stay as written).
fn raw_value<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"')
}

fn pipeline() -> String {
    r#"
name = "orders-decimal"
sql = "SELECT symbol, window_start, count(*) AS n, sum(price) AS total, min(price) AS low, max(price) AS high, avg(price) AS mean FROM orders GROUP BY symbol, TUMBLE(event_time, INTERVAL '1' MINUTE)"

[source]
type = "jsonl"
path = "in.jsonl"
partitions = 1

[schema]
table = "orders"
event_time = "event_time"
fields = [
  { name = "order_id", type = "string" },
  { name = "symbol", type = "string" },
  { name = "price", type = "decimal(18, 4)" },
  { name = "event_time", type = "timestamp" },
]

[[sinks]]
type = "jsonl"
path = "out"

[[sinks]]
type = "sqlite"
path = "out.sqlite"
table = "bars"
key_columns = ["symbol", "window_start"]

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50

[batch]
max_rows = 256
"#
    .to_string()
}

/// The committed JSONL output lines of `dir/out`, as written.
fn output_lines(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn window_sums_of_decimal_prices_are_the_exact_decimal_totals() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(3000, 13);
    std::fs::write(dir.path().join("in.jsonl"), input.lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("p.toml"), pipeline()).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let mut got = BTreeMap::new();
    for line in output_lines(dir.path()) {
        let start = common::epoch_millis(&serde_json::Value::String(
            raw_value(&line, "window_start").to_string(),
        ));
        let key = (raw_value(&line, "symbol").to_string(), start);
        let fields = ["n", "total", "low", "high", "mean"].map(|k| raw_value(&line, k).to_string());
        assert!(got.insert(key, fields).is_none(), "window twice: {line}");
    }
    let want: BTreeMap<_, _> = input
        .windows
        .iter()
        .map(|(k, w)| {
            let mean = w.total * 10i128.pow(SCALE) / i128::from(w.n);
            let fields = [
                w.n.to_string(),
                decimal_text(w.total, SCALE),
                decimal_text(w.low, SCALE),
                decimal_text(w.high, SCALE),
                decimal_text(mean, 2 * SCALE),
            ];
            (k.clone(), fields)
        })
        .collect();
    assert_eq!(got, want);

    // SQLite holds each total as its exact text.
    let conn = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let mut stmt = conn
        .prepare("SELECT symbol, window_start, total FROM bars")
        .unwrap();
    let stored: BTreeMap<(String, i64), String> = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want_totals: BTreeMap<_, _> = want
        .iter()
        .map(|(k, f)| (k.clone(), f[1].clone()))
        .collect();
    assert_eq!(stored, want_totals);

    let dlq = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(dlq.len(), input.poison.len(), "{dlq:?}");
    for (id, value) in &input.poison {
        let d = dlq
            .iter()
            .find(|d| {
                String::from_utf8_lossy(d.letter.payload.as_deref().unwrap())
                    .contains(&format!("\"{id}\""))
            })
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dlq:?}"));
        assert_eq!(d.letter.kind.as_str(), "wrong_type", "{id}");
        assert!(
            d.letter.message.contains("`price` (decimal(18, 4))")
                && d.letter.message.contains(value),
            "{id}: {}",
            d.letter.message
        );
    }
}

/// Order events as an envelope (`eventId`, `eventType`, `payload` with the order and its
/// items, `meta.time`), some published twice: `retries` copies of an event shortly after
/// it (dropped by the dedup), and `reuses` of an event id more than `within_ms` later in
/// event time (new occurrences, kept).
struct Envelopes {
    lines: Vec<String>,
    windows: BTreeMap<(String, i64), Window>,
    retries: usize,
    reuses: usize,
}

const WITHIN_MS: i64 = 5_000;

fn envelopes(n: usize, seed: u64) -> Envelopes {
    let mut rng = Rng(seed);
    let mut events: Vec<(String, String, i128, i64)> = Vec::new(); // (id, symbol, price, ts)
    for i in 0..n {
        let symbol = SYMBOLS[rng.below(3) as usize].to_string();
        let price = i128::from(rng.below(10_000_000_000));
        events.push((format!("ev-{i}"), symbol, price, T + i as i64 * 37));
    }
    // Re-use some ids 6 s later (beyond within_ms): a different event that happens to share
    // an id, processed as a new occurrence.
    let mut reuses = 0;
    for i in (0..n).step_by(97) {
        let j = i + ((WITHIN_MS + 1_000) / 37) as usize + 1;
        if j < n {
            events[j].0 = events[i].0.clone();
            reuses += 1;
        }
    }
    let line = |(id, symbol, price, ts): &(String, String, i128, i64), sku: &str| {
        format!(
            r#"{{"eventId":"{id}","eventType":"OrderPlaced","aggregateId":"{symbol}","version":1,"payload":{{"symbol":"{symbol}","price":{},"items":[{{"sku":"{sku}","qty":1}}],"customer":{{"id":7}}}},"meta":{{"time":{ts},"source":"shop"}}}}"#,
            spell(*price, *ts as u64)
        )
    };
    let mut lines = Vec::new();
    let mut retries = 0;
    let mut pending: Vec<(usize, usize)> = Vec::new(); // (emit after index, event)
    let mut windows: BTreeMap<(String, i64), Window> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        lines.push(line(e, &format!("sku-{i}")));
        if rng.below(10) == 0 {
            // A producer retry: the same event again, 1 to 40 events (up to ~1.5 s) later.
            pending.push((i + 1 + rng.below(40) as usize, i));
        }
        for (_, p) in pending.iter().filter(|(at, _)| *at == i) {
            lines.push(line(&events[*p], &format!("sku-{p}")));
            retries += 1;
        }
        pending.retain(|(at, _)| *at != i);
        let (_, symbol, price, ts) = e;
        let start = ts - ts.rem_euclid(60_000);
        let w = windows.entry((symbol.clone(), start)).or_insert(Window {
            low: i128::MAX,
            ..Window::default()
        });
        w.n += 1;
        w.total += price;
    }
    Envelopes {
        lines,
        windows,
        retries,
        reuses,
    }
}

/// The envelope pipeline: the dedup, then the window as a query or as an operator.
fn envelope_pipeline(window: &WindowIn) -> String {
    let (query, operator) = match window {
        WindowIn::Query => (TUMBLE_QUERY, ""),
        WindowIn::Operator => ("", TUMBLE_OPERATOR),
    };
    format!(
        r#"
name = "orders-envelope"
{query}

[source]
type = "jsonl"
path = "in.jsonl"
partitions = 1

[schema]
table = "orders"
event_time = "event_time"
fields = [
  {{ name = "event_id", path = "eventId", type = "string"}},
  {{ name = "symbol", path = "payload.symbol", type = "string"}},
  {{ name = "price", path = "payload.price", type = "decimal(18, 4)"}},
  {{ name = "first_sku", path = "payload.items[0].sku", type = "string"}},
  {{ name = "event_time", path = "meta.time", type = "timestamp"}},
]

[[operators]]
type = "dedup"
keys = ["event_id"]
within_ms = {WITHIN_MS}
{operator}

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50

[batch]
max_rows = 200
"#
    )
}

/// Where the window of [`envelope_pipeline`] is.
enum WindowIn {
    Query,
    Operator,
}

const TUMBLE_OPERATOR: &str = r#"
[[operators]]
type = "tumble"
size_ms = 60000
keys = ["symbol"]
aggregates = [
  { function = "count", alias = "n" },
  { function = "sum", column = "price", alias = "total" },
]
"#;

const TUMBLE_QUERY: &str = r#"sql = "SELECT symbol, window_start, count(*) AS n, sum(price) AS total FROM orders GROUP BY symbol, TUMBLE(event_time, INTERVAL '1' MINUTE)""#;

#[test]
fn nested_order_events_deduplicated_by_event_id_sum_to_the_exact_totals_of_the_originals() {
    deduplicated_envelopes(WindowIn::Operator);
}

#[test]
fn a_dedup_before_a_query_drops_the_same_duplicates() {
    deduplicated_envelopes(WindowIn::Query);
}

fn deduplicated_envelopes(window: WindowIn) {
    let dir = tempfile::tempdir().unwrap();
    let input = envelopes(4000, 29);
    assert!(
        input.retries > 100 && input.reuses > 10,
        "{} {}",
        input.retries,
        input.reuses
    );
    std::fs::write(dir.path().join("in.jsonl"), input.lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("p.toml"), envelope_pipeline(&window)).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} deduplicated", input.retries)),
        "{stdout}"
    );

    let mut got = BTreeMap::new();
    for line in output_lines(dir.path()) {
        let start = common::epoch_millis(&serde_json::Value::String(
            raw_value(&line, "window_start").to_string(),
        ));
        let key = (raw_value(&line, "symbol").to_string(), start);
        let fields = [
            raw_value(&line, "n").to_string(),
            raw_value(&line, "total").to_string(),
        ];
        assert!(got.insert(key, fields).is_none(), "window twice: {line}");
    }
    let want: BTreeMap<_, _> = input
        .windows
        .iter()
        .map(|(k, w)| (k.clone(), [w.n.to_string(), decimal_text(w.total, SCALE)]))
        .collect();
    assert_eq!(got, want);
    assert!(read_dlq_dir(dir.path().join("dlq")).unwrap().is_empty());
}

#[test]
fn a_dedup_killed_at_random_points_and_restarted_drops_exactly_the_same_duplicates() {
    let base = tempfile::tempdir().unwrap();
    let input = envelopes(60_000, 31);
    let text = input.lines.join("\n") + "\n";
    let run_dir = |name: &str| {
        let d = base.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("in.jsonl"), &text).unwrap();
        std::fs::write(d.join("p.toml"), envelope_pipeline(&WindowIn::Operator)).unwrap();
        d
    };
    let straight = run_dir("straight");
    let started = std::time::Instant::now();
    let out = weir(&["run", "p.toml"], &straight);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = started.elapsed();

    let crashed = run_dir("crashed");
    let mut rng = Rng(7);
    let mut kills = 0;
    for _ in 0..12 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "p.toml"])
            .current_dir(&crashed)
            .env("WEIR_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Between 5% and 30% of an uninterrupted run: each restart resumes from its
        // checkpoints, so several kills land before the input ends.
        let fraction = 0.05 + rng.below(1000) as f64 / 4000.0;
        std::thread::sleep(std::time::Duration::from_millis(30) + full.mul_f64(fraction));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap(); // SIGKILL: no drain, no final checkpoint
        child.wait().unwrap();
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kills landed");
    let out = weir(&["run", "p.toml"], &crashed);
    assert!(out.status.success(), "{}", stderr(&out));

    let sorted = |dir: &Path| {
        let mut lines = output_lines(dir);
        lines.sort();
        lines
    };
    let want = sorted(&straight);
    assert!(want.len() > 100, "{}", want.len());
    assert_eq!(
        sorted(&crashed),
        want,
        "the output of an uninterrupted run, exactly once"
    );
    // And that output is the originals' totals.
    let totals: i128 = input.windows.values().map(|w| w.total).sum();
    let written: i128 = want
        .iter()
        .map(|l| {
            raw_value(l, "total")
                .replace('.', "")
                .parse::<i128>()
                .unwrap()
        })
        .sum();
    assert_eq!(written, totals);
}

#[test]
fn window_totals_of_decimal_prices_are_exact_postgres_numerics() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(2000, 17);
    std::fs::write(dir.path().join("in.jsonl"), input.lines.join("\n") + "\n").unwrap();
    let table = format!("bars_{}", std::process::id());
    let toml = pipeline()
        .replace("name = \"orders-decimal\"", &format!("name = \"orders-pg-{table}\""))
        .replace(
            "[[sinks]]\ntype = \"jsonl\"\npath = \"out\"\n\n[[sinks]]\ntype = \"sqlite\"\npath = \"out.sqlite\"\ntable = \"bars\"",
            &format!("[[sinks]]\ntype = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"", common::pg_url()),
        )
        .replace("[checkpoint]\ndir = \"checkpoints\"\n", "[checkpoint]\n");
    assert!(toml.contains("type = \"postgres\""), "{toml}");
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let mut client = postgres::Client::connect(&common::pg_url(), postgres::NoTls).unwrap();
    let kind: String = client
        .query_one(
            "SELECT data_type::text FROM information_schema.columns WHERE table_name = $1 AND column_name = 'total'",
            &[&table],
        )
        .unwrap()
        .get(0);
    assert_eq!(kind, "numeric");
    let stored: BTreeMap<(String, i64), String> = client
        .query(
            &format!(
                "SELECT symbol, (extract(epoch FROM window_start) * 1000)::int8, total::text FROM \"{table}\""
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let want: BTreeMap<_, _> = input
        .windows
        .iter()
        .map(|(k, w)| (k.clone(), decimal_text(w.total, SCALE)))
        .collect();
    assert_eq!(stored, want);
    client
        .execute(&format!("DROP TABLE \"{table}\""), &[])
        .unwrap();
}
