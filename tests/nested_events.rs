//! Nested events end to end: order envelopes whose `payload` is a struct holding a customer
//! struct, a list of item structs and a map of attributes are decoded into nested columns,
//! queried by streaming SQL through `payload['...']` in the WHERE, GROUP BY, SELECT and
//! aggregates, and written whole by a projection: JSONL and Kafka-style JSON nest, Parquet
//! keeps the Arrow types, SQLite holds JSON text and PostgreSQL `jsonb`. Every total is
//! computed here from the generated events with integer arithmetic.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::cli::{stderr, weir};
use common::Rng;
use weir::connectors::{read_dlq_dir, read_jsonl_dir, read_parquet_dir};
use weir::operators::{plan_sql, SchemaConfig, SqlOptions};
use weir_runtime::arrow::array::{Array, AsArray};
use weir_runtime::arrow::datatypes::DataType;

/// 2026-01-05T14:40:00Z in epoch milliseconds.
const T: i64 = 1_767_624_000_000;
const STATUSES: [&str; 3] = ["new", "paid", "shipped"];

const SCHEMA: &str = r#"
[schema]
table = "orders"
event_time = "ts"
fields = [
  { name = "id", path = "eventId", type = "string" },
  { name = "payload", type = "struct", fields = [
    { name = "status", type = "string" },
    { name = "amount", type = "decimal(18, 2)" },
    { name = "customer", type = "struct", fields = [
      { name = "id", type = "int64" },
      { name = "tier", type = "string" },
    ] },
    { name = "items", type = "list", item = { type = "struct", fields = [
      { name = "sku", type = "string" },
      { name = "qty", type = "int32" },
      { name = "price", type = "decimal(10, 2)" },
    ] } },
    { name = "attrs", type = "map", value = "string", nullable = true },
  ] },
  { name = "ts", path = "meta.time", type = "timestamp" },
]
"#;

/// One generated order, as the reference sees it.
struct Order {
    id: String,
    status: &'static str,
    gold: bool,
    /// Cents.
    amount: i64,
    /// (sku, qty, price in cents).
    items: Vec<(String, i32, i64)>,
    ts: i64,
    line: String,
}

fn cents(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn orders(n: usize, seed: u64) -> Vec<Order> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let status = STATUSES[rng.below(3) as usize];
            let gold = rng.below(3) > 0;
            let amount = rng.below(10_000_000) as i64;
            let items: Vec<(String, i32, i64)> = (0..1 + rng.below(4))
                .map(|j| {
                    (
                        format!("S{}", rng.below(50)),
                        1 + rng.below(9) as i32,
                        (j as i64 + 1) * rng.below(100_000) as i64,
                    )
                })
                .collect();
            let ts = T + i as i64 * 1_231;
            let items_json: Vec<String> = items
                .iter()
                .map(|(sku, qty, price)| {
                    format!(
                        r#"{{"qty":{qty},"sku":"{sku}","price":{},"note":"x"}}"#,
                        cents(*price)
                    )
                })
                .collect();
            let attrs = if i % 5 == 0 {
                r#""attrs":null,"#.to_string()
            } else {
                format!(r#""attrs":{{"channel":"web","n":"{i}"}},"#)
            };
            let line = format!(
                r#"{{"eventId":"e{i}","eventType":"OrderPlaced","payload":{{{attrs}"status":"{status}","amount":{},"customer":{{"tier":"{}","id":{i},"since":[2020]}},"items":[{}]}},"meta":{{"time":{ts},"trace":"t"}}}}"#,
                cents(amount),
                if gold { "gold" } else { "silver" },
                items_json.join(",")
            );
            Order {
                id: format!("e{i}"),
                status,
                gold,
                amount,
                items,
                ts,
                line,
            }
        })
        .collect()
}

/// Poison lines: each a nested value that does not fit, with what its dead letter says.
const POISON: &[(&str, &str)] = &[
    (
        r#"{"eventId":"p1","payload":{"status":"new","amount":1,"customer":{"id":1,"tier":"gold"},"items":[{"sku":"A","qty":"2","price":1}]},"meta":{"time":1767624000000}}"#,
        r#"field `payload` at `payload.items[0].qty` (int32): "2" is a string"#,
    ),
    (
        r#"{"eventId":"p2","payload":{"status":"new","amount":1,"customer":{"tier":"gold"},"items":[]},"meta":{"time":1767624000000}}"#,
        "the required value at `payload.customer.id` is missing or null",
    ),
    (
        r#"{"eventId":"p3","payload":{"status":"new","amount":1,"customer":{"id":1,"tier":"gold"},"items":[],"attrs":{"a":7}},"meta":{"time":1767624000000}}"#,
        "field `payload` at `payload.attrs.a` (string): 7 is not a string",
    ),
];

fn write_input(dir: &Path, orders: &[Order]) {
    let mut lines: Vec<&str> = orders.iter().map(|o| o.line.as_str()).collect();
    for (i, (p, _)) in POISON.iter().enumerate() {
        lines.insert(10 + 7 * i, p);
    }
    std::fs::write(dir.join("in.jsonl"), lines.join("\n") + "\n").unwrap();
}

const QUERY: &str = "SELECT payload['status'] AS status, window_start, count(*) AS n, \
    sum(payload['amount']) AS total, sum(payload['items'][1]['qty']) AS first_qty, \
    max(array_length(payload['items'])) AS most_items \
    FROM orders WHERE payload['customer']['tier'] = 'gold' \
    GROUP BY payload['status'], TUMBLE(ts, INTERVAL '1' MINUTE)";

/// A pipeline over `in.jsonl` with `body` (a `sql` query or operators) and `sinks`.
fn pipeline(name: &str, body: &str, sinks: &str) -> String {
    format!(
        r#"
name = "{name}"
{body}

[source]
type = "jsonl"
path = "in.jsonl"
partitions = 1
{SCHEMA}
{sinks}

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
interval_ms = 50

[batch]
max_rows = 128
"#
    )
}

/// JSONL into `out`, Parquet into `pq` and SQLite table `table` keyed by `keys`.
fn file_sinks(table: &str, keys: &str) -> String {
    format!(
        r#"
[[sinks]]
type = "jsonl"
path = "out"

[[sinks]]
type = "parquet"
path = "pq"

[[sinks]]
type = "sqlite"
path = "out.sqlite"
table = "{table}"
key_columns = {keys}
"#
    )
}

/// Per (status, minute): count, total cents, sum of the first item's qty, most items.
fn expected_windows(orders: &[Order]) -> BTreeMap<(String, i64), (i64, i64, i64, u64)> {
    let mut out: BTreeMap<(String, i64), (i64, i64, i64, u64)> = BTreeMap::new();
    for o in orders.iter().filter(|o| o.gold) {
        let w = out
            .entry((o.status.to_string(), o.ts - o.ts.rem_euclid(60_000)))
            .or_default();
        w.0 += 1;
        w.1 += o.amount;
        w.2 += i64::from(o.items[0].1);
        w.3 = w.3.max(o.items.len() as u64);
    }
    out
}

fn window_key(v: &serde_json::Value) -> (String, i64) {
    (
        v["status"].as_str().unwrap().to_string(),
        common::epoch_millis(&v["window_start"]),
    )
}

#[test]
fn nested_fields_filter_group_and_aggregate_in_streaming_sql_into_jsonl_parquet_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(2500, 21);
    write_input(dir.path(), &input);
    let sql = format!("sql = \"{QUERY}\"");
    let sinks = file_sinks("bars", r#"["status", "window_start"]"#);
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline("nested-sql", &sql, &sinks),
    )
    .unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let want = expected_windows(&input);
    assert!(want.len() > 20, "{}", want.len());

    // JSONL: the totals (exact as unscaled decimals in Parquet and as text in SQLite,
    // below), the key by its alias.
    let rows = read_jsonl_dir(dir.path().join("out")).unwrap();
    let got: BTreeMap<(String, i64), (i64, i64, i64, u64)> = rows
        .iter()
        .map(|v| {
            (
                window_key(v),
                (
                    v["n"].as_i64().unwrap(),
                    (v["total"].as_f64().unwrap() * 100.0).round() as i64,
                    v["first_qty"].as_i64().unwrap(),
                    v["most_items"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got.len(), rows.len(), "one row per window");
    assert_eq!(got, want);

    // Parquet: the same windows, the total still a decimal.
    let batches = read_parquet_dir(dir.path().join("pq")).unwrap();
    let mut pq = BTreeMap::new();
    for b in &batches {
        let total = b.column_by_name("total").unwrap();
        assert!(
            matches!(total.data_type(), DataType::Decimal128(_, 2)),
            "{}",
            total.data_type()
        );
        let total = total.as_primitive::<weir_runtime::arrow::datatypes::Decimal128Type>();
        let status = b.column_by_name("status").unwrap();
        let status = status.as_string::<i32>();
        let n = b.column_by_name("n").unwrap();
        let n = n.as_primitive::<weir_runtime::arrow::datatypes::Int64Type>();
        let start = b.column_by_name("window_start").unwrap();
        let start =
            start.as_primitive::<weir_runtime::arrow::datatypes::TimestampMillisecondType>();
        for r in 0..b.num_rows() {
            pq.insert(
                (status.value(r).to_string(), start.value(r)),
                (n.value(r), total.value(r) as i64),
            );
        }
    }
    let want_pq: BTreeMap<_, _> = want.iter().map(|(k, w)| (k.clone(), (w.0, w.1))).collect();
    assert_eq!(pq, want_pq);

    // SQLite: upserted by the computed key.
    let db = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let mut stmt = db
        .prepare("SELECT status, window_start, n, total FROM bars")
        .unwrap();
    let lite: BTreeMap<(String, i64), (i64, String)> = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want_lite: BTreeMap<_, _> = want
        .iter()
        .map(|(k, w)| (k.clone(), (w.0, cents(w.1))))
        .collect();
    assert_eq!(lite, want_lite);

    // The poison lines are dead-lettered with the path and the value.
    let letters = read_dlq_dir(dir.path().join("dlq")).unwrap();
    assert_eq!(letters.len(), POISON.len(), "{letters:?}");
    for (line, says) in POISON {
        let l = letters
            .iter()
            .find(|l| l.letter.payload.as_deref() == Some(line.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter of {line}: {letters:?}"));
        assert!(
            l.letter.message.contains(says),
            "{}\nwanted: {says}",
            l.letter.message
        );
    }
}

fn schema() -> SchemaConfig {
    #[derive(serde::Deserialize)]
    struct File {
        schema: SchemaConfig,
    }
    toml::from_str::<File>(SCHEMA).unwrap().schema
}

fn plan_error(query: &str) -> String {
    plan_sql(query, "orders", &schema(), &SqlOptions::default()).unwrap_err()
}

#[test]
fn a_list_aggregated_without_extracting_a_scalar_is_refused_saying_how() {
    let err = plan_error(
        "SELECT payload['status'], sum(payload['items']) AS s FROM orders \
         GROUP BY payload['status'], TUMBLE(ts, INTERVAL '1' MINUTE)",
    );
    assert!(
        err.starts_with(
            "`sum(payload['items'])` (line 1, column 27): its argument `payload['items']` is a list"
        ),
        "{err}"
    );
    assert!(
        err.contains("extract one first, in the call (`payload['items'][1]`"),
        "{err}"
    );
    let err = plan_error(
        "SELECT count(*) AS n FROM orders GROUP BY payload['items'], TUMBLE(ts, INTERVAL '1' MINUTE)",
    );
    assert!(
        err.starts_with("GROUP BY `payload['items']` (line 1, column 43) is a List("),
        "{err}"
    );
    assert!(err.contains("a key is one scalar value"), "{err}");
    // Extracted, the same list aggregates.
    let plan = plan_sql(
        "SELECT payload['status'] AS status, sum(array_length(payload['items'])) AS s, \
         count(payload['attrs']) AS with_attrs FROM orders \
         GROUP BY payload['status'], TUMBLE(ts, INTERVAL '1' MINUTE)",
        "orders",
        &schema(),
        &SqlOptions::default(),
    )
    .unwrap();
    assert_eq!(plan.window.keys, ["status"]);
    assert!(
        plan.explain()
            .contains("project     *, payload['status'] AS status"),
        "{}",
        plan.explain()
    );
}

const PROJECTION: &str = r#"
[[operators]]
type = "project"
columns = [
  { expr = "id", name = "id" },
  { expr = "payload['status']", name = "status" },
  { expr = "payload['customer']", name = "customer" },
  { expr = "payload['items']", name = "items" },
  { expr = "payload['attrs']", name = "attrs" },
]
"#;

/// The JSON a sink should hold for an order's `items`.
fn items_json(o: &Order) -> serde_json::Value {
    serde_json::Value::Array(
        o.items
            .iter()
            .map(|(sku, qty, price)| {
                serde_json::json!({"sku": sku, "qty": qty, "price": serde_json::from_str::<serde_json::Value>(&cents(*price)).unwrap()})
            })
            .collect(),
    )
}

#[test]
fn projected_structs_lists_and_maps_reach_jsonl_as_nested_json_parquet_as_nested_types_and_sqlite_as_json(
) {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(400, 5);
    write_input(dir.path(), &input);
    let sinks = file_sinks("orders", r#"["id"]"#);
    std::fs::write(
        dir.path().join("p.toml"),
        pipeline("nested-project", PROJECTION, &sinks),
    )
    .unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let by_id: BTreeMap<&str, &Order> = input.iter().map(|o| (o.id.as_str(), o)).collect();

    let rows = read_jsonl_dir(dir.path().join("out")).unwrap();
    assert_eq!(rows.len(), input.len());
    for v in &rows {
        let o = by_id[v["id"].as_str().unwrap()];
        assert_eq!(v["items"], items_json(o), "{v}");
        assert_eq!(
            v["customer"]["tier"],
            if o.gold { "gold" } else { "silver" }
        );
        let i: usize = o.id[1..].parse().unwrap();
        if i.is_multiple_of(5) {
            assert!(v.get("attrs").is_none(), "{v}");
        } else {
            assert_eq!(
                v["attrs"],
                serde_json::json!({"channel": "web", "n": i.to_string()})
            );
        }
    }

    let batches = read_parquet_dir(dir.path().join("pq")).unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, input.len());
    for b in &batches {
        let schema = b.schema();
        let items = schema.field_with_name("items").unwrap();
        let DataType::List(item) = items.data_type() else {
            panic!("items is {}", items.data_type())
        };
        assert!(
            matches!(item.data_type(), DataType::Struct(f) if f.len() == 3 && f[2].data_type() == &DataType::Decimal128(10, 2)),
            "{item:?}"
        );
        assert!(matches!(
            schema.field_with_name("attrs").unwrap().data_type(),
            DataType::Map(_, _)
        ));
        let ids = b.column_by_name("id").unwrap();
        let ids = ids.as_string::<i32>();
        let lists = b.column_by_name("items").unwrap();
        let lists = lists.as_list::<i32>();
        for r in 0..b.num_rows() {
            let o = by_id[ids.value(r)];
            let list = lists.value(r);
            let list = list.as_struct();
            assert_eq!(list.len(), o.items.len());
            let skus = list.column(0).as_string::<i32>();
            let qtys = list
                .column(1)
                .as_primitive::<weir_runtime::arrow::datatypes::Int32Type>();
            let prices = list
                .column(2)
                .as_primitive::<weir_runtime::arrow::datatypes::Decimal128Type>();
            for (j, (sku, qty, price)) in o.items.iter().enumerate() {
                assert_eq!(
                    (skus.value(j), qtys.value(j), prices.value(j)),
                    (sku.as_str(), *qty, i128::from(*price))
                );
            }
        }
    }

    let db = rusqlite::Connection::open(dir.path().join("out.sqlite")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT id, items, json_extract(items, '$[0].qty'), json_extract(customer, '$.tier'), \
             typeof(attrs) FROM orders",
        )
        .unwrap();
    let lite: Vec<(String, String, i64, String, String)> = stmt
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(lite.len(), input.len());
    for (id, items, first_qty, tier, attrs_type) in lite {
        let o = by_id[id.as_str()];
        let items: serde_json::Value = serde_json::from_str(&items).unwrap();
        assert_eq!(items, items_json(o));
        assert_eq!(first_qty, i64::from(o.items[0].1));
        assert_eq!(tier, if o.gold { "gold" } else { "silver" });
        let i: usize = o.id[1..].parse().unwrap();
        assert_eq!(
            attrs_type,
            if i.is_multiple_of(5) { "null" } else { "text" }
        );
    }
}

#[test]
fn projected_structs_lists_and_maps_are_postgres_jsonb() {
    let dir = tempfile::tempdir().unwrap();
    let input = orders(300, 8);
    write_input(dir.path(), &input);
    let table = format!("nested_{}", std::process::id());
    let sinks = format!(
        "[[sinks]]\ntype = \"postgres\"\nurl = \"{}\"\ntable = \"{table}\"\nkey_columns = [\"id\"]\n",
        common::pg_url()
    );
    let toml = pipeline(&format!("nested-pg-{table}"), PROJECTION, &sinks)
        .replace("[checkpoint]\ndir = \"checkpoints\"\n", "[checkpoint]\n");
    std::fs::write(dir.path().join("p.toml"), toml).unwrap();
    let out = weir(&["run", "p.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));

    let mut client = postgres::Client::connect(&common::pg_url(), postgres::NoTls).unwrap();
    let types: BTreeMap<String, String> = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = $1",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for c in ["customer", "items", "attrs"] {
        assert_eq!(types[c], "jsonb", "{types:?}");
    }
    // Queried as PostgreSQL reads jsonb: the sum of every item's qty * price, per status.
    let stored: BTreeMap<String, (i64, String)> = client
        .query(
            &format!(
                "SELECT status, count(*)::int8, sum((i->>'qty')::numeric * (i->>'price')::numeric)::text \
                 FROM \"{table}\", jsonb_array_elements(items) AS i GROUP BY status"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut want: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for o in &input {
        let w = want.entry(o.status.to_string()).or_default();
        for (_, qty, price) in &o.items {
            w.0 += 1;
            w.1 += i64::from(*qty) * price;
        }
    }
    let want: BTreeMap<String, (i64, String)> = want
        .into_iter()
        .map(|(k, (n, total))| (k, (n, cents(total))))
        .collect();
    assert_eq!(stored, want);
    let tier: String = client
        .query_one(
            &format!("SELECT customer->>'tier' FROM \"{table}\" WHERE id = $1"),
            &[&input[0].id],
        )
        .unwrap()
        .get(0);
    assert_eq!(tier, if input[0].gold { "gold" } else { "silver" });
    let nulls: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{table}\" WHERE attrs IS NULL"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nulls, input.len().div_ceil(5) as i64);
    client
        .execute(&format!("DROP TABLE \"{table}\""), &[])
        .unwrap();
}
