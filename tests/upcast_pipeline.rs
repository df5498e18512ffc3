//! Upcasters in a pipeline built with the Rust builder: v1 order events (no `currency`) reach
//! the projection as v2 events with the default currency, and events of an unknown version go
//! to the DLQ with the reason while the others are folded.

use std::io::Write;
use std::sync::Arc;

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

    fn apply(&self, s: &mut Paid, e: Payment) -> Result<(), String> {
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
        name: name.into(),
        field_type,
        nullable,
    };
    let schema = SchemaConfig {
        table: "payments".into(),
        event_time: "time".into(),
        partition_key: None,
        fields: vec![
            field("order_id", FieldType::String, false),
            field("version", FieldType::Int64, true),
            field("currency", FieldType::String, true),
            field("amount", FieldType::Float64, false),
            field("time", FieldType::Timestamp, false),
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
                serde_json::from_slice(d.payload.as_deref().unwrap()).unwrap();
            format!("{}: {}", payload["time"], d.message)
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
