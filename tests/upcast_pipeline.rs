//! Upcasters in a pipeline built with the Rust builder: v1 order events (no `currency`) reach
//! the projection as v2 events with the default currency, and events of an unknown version go
//! to the DLQ with the reason while the others are folded.

use crate::common;

use std::io::Write;
use std::sync::Arc;

use common::cli::weir;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::json;
use weir::prelude::*;
use weir_connectors::dlq_file::read_dlq_dir;
use weir_connectors::read_jsonl_dir;

#[derive(Deserialize)]
struct Payment {
    order_id: String,
    currency: String,
    amount: f64,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Paid {
    currency: String,
    total: f64,
}

/// Sum of payments per order, in the currency of its events.
struct Totals;

impl Projection for Totals {
    type Event = Payment;
    type State = Paid;
    type Row<'a> = serde_json::Value;

    fn key(&self, e: &Payment) -> String {
        e.order_id.clone()
    }

    fn apply(&self, s: &mut Paid, e: Payment) -> Result<(), EventError> {
        s.currency = e.currency;
        s.total += e.amount;
        Ok(())
    }

    fn row<'a>(&'a self, key: &'a str, s: &'a Paid) -> serde_json::Value {
        json!({"order_id": key, "currency": s.currency, "total": s.total})
    }

    fn row_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("total", DataType::Float64, false),
        ]))
    }
}

fn current() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, false),
        Field::new("version", DataType::Int64, false),
        Field::new("currency", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

#[test]
fn v1_events_reach_the_projection_upcast_and_unknown_versions_go_to_the_dlq() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("payments.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for line in [
        json!({"order_id": "a", "version": 1, "amount": 10.0, "time": 1}),
        json!({"order_id": "b", "version": 2, "currency": "USD", "amount": 5.0, "time": 2}),
        json!({"order_id": "a", "version": 2, "currency": "EUR", "amount": 2.5, "time": 3}),
        json!({"order_id": "c", "version": 7, "currency": "EUR", "amount": 1.0, "time": 4}),
        json!({"order_id": "c", "amount": 1.0, "time": 5}),
        json!({"order_id": "c", "version": 1, "amount": 4.0, "time": 6}),
    ] {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let field = |name: &str, field_type, nullable| FieldConfig {
        nullable,
        ..FieldConfig::new(name, field_type)
    };
    let schema = SchemaConfig {
        table: "payments".into(),
        event_time: "time".into(),
        partition_key: None,
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            field("order_id", FieldType::String, false),
            field("version", FieldType::Int64, true),
            field("currency", FieldType::String, true),
            field("amount", FieldType::Float64, false),
            // The events are stamped a few ms after the epoch.
            FieldConfig {
                any_epoch: true,
                ..field("time", FieldType::Timestamp, false)
            },
        ],
    };
    let upcasters = Upcasters::new("version", 2, current()).step(1, |e| {
        e.insert("currency".into(), json!("EUR"));
        Ok(())
    });
    let out = tmp.path().join("out");
    let dlq = tmp.path().join("dlq");
    let summary = Pipeline::new("payments")
        .source(
            JsonlFileSource::new(JsonlSourceConfig {
                path: input,
                partitions: 2,
                key_field: Some("order_id".into()),
            })
            .unwrap(),
        )
        .schema(schema)
        .operator("totals", |input| {
            Ok(Box::new(ProjectionOperator::new("totals", Totals, input)) as _)
        })
        // Called after the projection, still runs before it.
        .upcast(upcasters)
        .sink(JsonlSink::new("out", &JsonlSinkConfig { path: out.clone() }).unwrap())
        .dlq(JsonlDlq::new(&JsonlDlqConfig { path: dlq.clone() }).unwrap())
        .checkpoint_dir(tmp.path().join("checkpoints"))
        .run(Shutdown::new())
        .unwrap();
    assert_eq!(summary.counters.dlq, 2);

    // The last row written per order is its read-model row.
    let mut last = std::collections::BTreeMap::new();
    for row in read_jsonl_dir(&out).unwrap() {
        last.insert(row["order_id"].as_str().unwrap().to_string(), row);
    }
    assert_eq!(
        last.into_values().collect::<Vec<_>>(),
        [
            json!({"order_id": "a", "currency": "EUR", "total": 12.5}),
            json!({"order_id": "b", "currency": "USD", "total": 5.0}),
            json!({"order_id": "c", "currency": "EUR", "total": 4.0}),
        ]
    );
    let mut dead: Vec<String> = read_dlq_dir(&dlq)
        .unwrap()
        .into_iter()
        .map(|d| {
            let payload: serde_json::Value =
                serde_json::from_slice(d.letter.payload.as_deref().unwrap()).unwrap();
            format!("{}: {}", payload["time"], d.letter.message)
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            "4: version 7 is newer than the current version 2",
            "5: the event has no \"version\"",
        ]
    );
}

/// v3 (current): `amount_cents`; v2: `amount` in units; v1: `total`, and no `currency`.
const UPCAST_TOML: &str = r#"
name = "orders"

[source]
type = "jsonl"
path = "orders.jsonl"
partitions = 2
key_field = "order_id"

[schema]
event_time = "time"
fields = [
  { name = "order_id", type = "string" },
  { name = "version", type = "int64" },
  { name = "currency", type = "string" },
  { name = "amount_cents", type = "int64" },
  { name = "time", type = "timestamp", any_epoch = true },
]

[upcast]
version_field = "version"

[[upcast.steps]]
from_version = 1
fields = [{ name = "total", type = "float64" }]
rename = { amount = "total" }
set = { currency = "'EUR'" }

[[upcast.steps]]
from_version = 2
fields = [{ name = "amount", type = "float64" }]
set = { amount_cents = "CAST(round(amount * 100) AS BIGINT)" }
drop = ["amount"]

[[operators]]
type = "filter"
predicate = "amount_cents > 0"

[[sinks]]
type = "jsonl"
path = "out"

[dlq]
type = "jsonl"
path = "dlq"

[checkpoint]
dir = "checkpoints"
"#;

#[test]
fn a_pipeline_file_upcasts_v1_and_v2_events_and_dead_letters_unknown_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(tmp.path().join("orders.jsonl")).unwrap();
    for line in [
        json!({"order_id": "a", "version": 1, "total": 12.5, "time": 1000}),
        json!({"order_id": "b", "version": 2, "currency": "USD", "amount": 3.0, "time": 2000}),
        json!({"order_id": "c", "version": 3, "currency": "GBP", "amount_cents": 700, "time": 3000}),
        json!({"order_id": "d", "version": 7, "currency": "EUR", "amount_cents": 1, "time": 4000}),
        json!({"order_id": "e", "version": 0, "time": 5000}),
        json!({"order_id": "f", "version": 3, "amount_cents": 5, "time": 6000}),
        json!({"order_id": "g", "version": 1, "total": -1.0, "time": 7000}),
        json!({"order_id": "a", "version": 2, "currency": "EUR", "amount": 0.25, "time": 8000}),
    ] {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    std::fs::write(tmp.path().join("orders.toml"), UPCAST_TOML).unwrap();
    let out = weir(&["run", "orders.toml"], tmp.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<String> = read_jsonl_dir(tmp.path().join("out"))
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(
                r.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["amount_cents", "currency", "order_id", "time", "version"],
                "{r}"
            );
            format!(
                "{} v{} {} {}",
                r["order_id"].as_str().unwrap(),
                r["version"],
                r["currency"].as_str().unwrap(),
                r["amount_cents"]
            )
        })
        .collect();
    rows.sort();
    // g (a negative v1 total) is upcast, then filtered by the current schema's column.
    assert_eq!(
        rows,
        [
            "a v3 EUR 1250",
            "a v3 EUR 25",
            "b v3 USD 300",
            "c v3 GBP 700"
        ]
    );
    let mut dead: Vec<String> = read_dlq_dir(tmp.path().join("dlq"))
        .unwrap()
        .into_iter()
        .map(|d| {
            let payload: serde_json::Value =
                serde_json::from_slice(d.letter.payload.as_deref().unwrap()).unwrap();
            format!(
                "{}: {}",
                payload["order_id"].as_str().unwrap(),
                d.letter.message
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            "d: version 7 is newer than the current version 3",
            "e: no upcaster from version 0 (current is 3)",
            "f: the upcast event has no value for the required field \"currency\"",
        ]
    );
}

#[test]
fn upcast_config_errors_name_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = UPCAST_TOML
        .replace(
            "version_field = \"version\"",
            "version_field = \"version\"\ncurrent = 3",
        )
        .replace(
            "rename = { amount = \"total\" }",
            "rename = { amount = \"totl\" }",
        )
        .replace(
            "set = { currency = \"'EUR'\" }",
            "set = { currency = \"'EUR'\" }\nsett = 1",
        )
        .replace("from_version = 2", "from_version = 3")
        .replace("round(amount * 100)", "round(amount * 100, 'x', 'y')");
    std::fs::write(tmp.path().join("bad.toml"), bad).unwrap();
    let out = weir(&["run", "bad.toml"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for expected in [
        "bad.toml has 2 errors",
        "bad.toml: upcast.current: unknown key (expected one of version_field, steps)",
        "bad.toml: upcast.steps[0].sett: unknown key (expected one of `from_version`, `fields`, `set`, `rename`, `drop`)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // With the keys right, the steps themselves are checked.
    let bad = UPCAST_TOML
        .replace(
            "rename = { amount = \"total\" }",
            "rename = { amount = \"totl\" }",
        )
        .replace("from_version = 2", "from_version = 3")
        .replace("drop = [\"amount\"]", "drop = [\"time\"]");
    std::fs::write(tmp.path().join("bad.toml"), bad).unwrap();
    let out = weir(&["run", "bad.toml"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for expected in [
        "bad.toml has 3 errors",
        "bad.toml: upcast.steps: no step from version 2 (steps must cover every version from 1 to 3)",
        "bad.toml: upcast.steps[0].rename.amount: the old column `totl` is neither a [schema] field nor in a step's `fields`",
        "bad.toml: upcast.steps[1].drop[0]: `time` cannot be written by a step (it is the event time)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let bad = UPCAST_TOML.replace("amount_cents > 0", "amount > 0");
    std::fs::write(tmp.path().join("bad.toml"), bad).unwrap();
    let err = String::from_utf8_lossy(&weir(&["run", "bad.toml"], tmp.path()).stderr).into_owned();
    // The operators see the current version only: `amount` is gone by then.
    assert!(
        err.contains("bad.toml: operators[0]: `amount > 0`: Schema error: No field named amount."),
        "{err}"
    );
}
