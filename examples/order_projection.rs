//! An order-status read model (CQRS projection) written as a keyed fold.
//!
//! Order events (OrderPlaced, ItemAdded, PaymentConfirmed, OrderShipped, OrderCancelled), read
//! from `examples/orders.jsonl` partitioned by order id, are folded per order into its current
//! status, total and item count; every changed order is upserted into SQLite
//! (`orders-example/orders.sqlite`, table `orders`). An event that breaks the order's life
//! cycle (e.g. shipping an unpaid order) goes to the DLQ with the reason.
//!
//! Guarantee: per-order events are folded in the order they were written (one partition, one
//! task); the projection state is checkpointed with the offsets and SQLite upserts are
//! idempotent, so a restart resumes without double-applying an event.
//!
//! Run: `cargo run --example order_projection`

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use weir::prelude::*;

#[derive(Deserialize)]
struct OrderEvent {
    order_id: String,
    kind: String,
    amount: Option<f64>,
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Order {
    status: String,
    total: f64,
    items: i64,
}

#[derive(Serialize)]
struct OrderRow<'a> {
    order_id: &'a str,
    status: &'a str,
    total: f64,
    items: i64,
}

struct Orders;

impl Projection for Orders {
    type Event = OrderEvent;
    type State = Order;
    type Row<'a> = OrderRow<'a>;

    fn key(&self, e: &OrderEvent) -> String {
        e.order_id.clone()
    }

    fn apply(&self, o: &mut Order, e: OrderEvent) -> Result<(), EventError> {
        let next = match (o.status.as_str(), e.kind.as_str()) {
            ("", "OrderPlaced") => "placed",
            ("placed", "ItemAdded") => {
                o.items += 1;
                o.total += e.amount.ok_or("ItemAdded without amount")?;
                "placed"
            }
            ("placed", "PaymentConfirmed") => "paid",
            ("paid", "OrderShipped") => "shipped",
            ("placed" | "paid", "OrderCancelled") => "cancelled",
            (status, kind) => {
                return Err(format!("{kind} is not allowed for an order that is {status:?}").into())
            }
        };
        o.status = next.to_string();
        Ok(())
    }

    fn row<'a>(&'a self, key: &'a str, o: &'a Order) -> OrderRow<'a> {
        OrderRow {
            order_id: key,
            status: &o.status,
            total: o.total,
            items: o.items,
        }
    }

    fn row_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("total", DataType::Float64, false),
            Field::new("items", DataType::Int64, false),
        ]))
    }
}

fn main() -> anyhow::Result<()> {
    let field = |name: &str, field_type, nullable| FieldConfig {
        nullable,
        ..FieldConfig::new(name, field_type)
    };
    let schema = SchemaConfig {
        table: "events".into(),
        event_time: "time".into(),
        partition_key: None,
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            field("order_id", FieldType::String, false),
            field("kind", FieldType::String, false),
            field("amount", FieldType::Float64, true),
            field("time", FieldType::Timestamp, false),
        ],
    };
    let input = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/orders.jsonl");
    let summary = Pipeline::new("orders")
        .source(JsonlFileSource::new(JsonlSourceConfig {
            path: input.into(),
            partitions: 2,
            key_field: Some("order_id".into()),
        })?)
        .schema(schema)
        .operator("orders", |input| {
            Ok(Box::new(ProjectionOperator::new("orders", Orders, input)) as _)
        })
        .sink(SqliteSink::new(
            "sqlite",
            &SqliteSinkConfig {
                path: "orders-example/orders.sqlite".into(),
                table: "orders".into(),
                key_columns: vec!["order_id".into()],
                create_table: true,
            },
        )?)
        .sink(TerminalSink::new(
            "terminal",
            &TerminalSinkConfig { max_rows: 10 },
        ))
        .dlq(JsonlDlq::new(&JsonlDlqConfig {
            path: "orders-example/dlq".into(),
        })?)
        .checkpoint_dir("orders-example/checkpoints")
        .run(Shutdown::new())?;
    println!(
        "{} events folded, {} rejected (see orders-example/dlq)",
        summary.counters.aggregated, summary.counters.dlq
    );
    Ok(())
}
