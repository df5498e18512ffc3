//! The order read model (a CQRS projection) written as a keyed fold with the Rust builder:
//! order events from Kafka → one row per order in PostgreSQL.
//!
//! The events are `weir generate orders` envelopes (event id, event type, order id, version,
//! correlation id, event time, payload): OrderPlaced, ItemAdded, PaymentReceived,
//! OrderShipped, OrderCancelled. A redelivered event (same event id) is dropped by a `dedup`;
//! each order's events are folded, in the order they were written, into its status, customer,
//! item count, exact total (decimal, never a float) and version; every changed order is
//! upserted into the table `orders`, and a cancelled order is deleted from it. An event its
//! order's life cycle does not allow (shipping an unpaid order, an item after the payment, a
//! version out of sequence) goes to the DLQ with the reason and changes nothing.
//!
//! Guarantee: exactly-once in PostgreSQL. The projection's state is checkpointed with the
//! offsets, in the same PostgreSQL transaction as each partition's rows; kill it and run it
//! again, and it resumes without applying an event twice.
//!
//! Run it (from the repository root):
//!   eval "$(scripts/kafka.sh start | sed 's/^/export /')"
//!   eval "$(scripts/postgres.sh start | grep '^WEIR_' | sed 's/^/export /')"
//!   cargo run --release -- generate orders --topic orders --events 100000 --duplicate-ratio 0.01 --poison-ratio 0.002
//!   cargo run --release --example order_projection
//!   psql "$WEIR_PG_URL" -c 'SELECT * FROM orders ORDER BY order_id LIMIT 20'
//! Environment: WEIR_KAFKA_BROKERS (default 127.0.0.1:9092), WEIR_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres), ORDERS_TOPIC
//! (default `orders`), ORDERS_TABLE (default `orders`). Ctrl-C stops it (after a checkpoint).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use weir::connectors::{
    CheckpointRole, KafkaSource, KafkaSourceConfig, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
use weir::env_vars::var_or;
use weir::prelude::*;

/// One order event, as the schema below decodes it (a decimal arrives as its exact text).
#[derive(Deserialize)]
pub struct OrderEvent {
    order_id: String,
    event_type: String,
    version: i64,
    customer_id: Option<String>,
    quantity: Option<i64>,
    price: Option<String>,
    amount: Option<String>,
}

/// An order's state: what its row shows.
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Order {
    status: String,
    customer_id: String,
    /// In hundredths.
    total_cents: i64,
    items: i64,
    version: i64,
}

#[derive(Serialize)]
pub struct OrderRow<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    status: &'a str,
    /// Decimal text: the decimal column reads it exactly.
    total: String,
    items: i64,
    version: i64,
}

/// `12.34` as 1234 hundredths.
fn cents(text: &str) -> Result<i64, String> {
    let (int, frac) = text.split_once('.').unwrap_or((text, "0"));
    let frac = format!("{frac:0<2}");
    if frac.len() > 2 {
        return Err(format!("{text}: more than 2 decimals"));
    }
    let int: i64 = int.parse().map_err(|_| format!("{text}: not a decimal"))?;
    let frac: i64 = frac.parse().map_err(|_| format!("{text}: not a decimal"))?;
    Ok(int * 100 + frac)
}

pub struct Orders;

impl Projection for Orders {
    type Event = OrderEvent;
    type State = Order;
    type Row<'a> = OrderRow<'a>;

    fn key(&self, e: &OrderEvent) -> String {
        e.order_id.clone()
    }

    fn apply(&self, o: &mut Order, e: OrderEvent) -> Result<(), EventError> {
        if e.version != o.version + 1 {
            return Err(format!(
                "{} version {} after version {}: out of sequence",
                e.event_type, e.version, o.version
            )
            .into());
        }
        let next = match (o.status.as_str(), e.event_type.as_str()) {
            ("", "OrderPlaced") => {
                o.customer_id = e.customer_id.ok_or("OrderPlaced without customer_id")?;
                "placed"
            }
            ("placed", "ItemAdded") => {
                let quantity = e.quantity.ok_or("ItemAdded without quantity")?;
                let price = cents(e.price.as_deref().ok_or("ItemAdded without price")?)?;
                o.items += quantity;
                o.total_cents += quantity * price;
                "placed"
            }
            ("placed", "PaymentReceived") => {
                let amount = cents(
                    e.amount
                        .as_deref()
                        .ok_or("PaymentReceived without amount")?,
                )?;
                if amount != o.total_cents {
                    return Err(format!(
                        "PaymentReceived of {amount} hundredths for a total of {}",
                        o.total_cents
                    )
                    .into());
                }
                "paid"
            }
            ("paid", "OrderShipped") => "shipped",
            ("placed" | "paid", "OrderCancelled") => "cancelled",
            (status, kind) => {
                let status = if status.is_empty() { "unknown" } else { status };
                return Err(format!("{kind} is not allowed for an order that is {status}").into());
            }
        };
        o.status = next.to_string();
        o.version = e.version;
        Ok(())
    }

    fn deleted(&self, o: &Order) -> bool {
        o.status == "cancelled"
    }

    fn row<'a>(&'a self, key: &'a str, o: &'a Order) -> OrderRow<'a> {
        OrderRow {
            order_id: key,
            customer_id: &o.customer_id,
            status: &o.status,
            total: format!("{}.{:02}", o.total_cents / 100, o.total_cents % 100),
            items: o.items,
            version: o.version,
        }
    }

    fn row_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("total", DataType::Decimal128(18, 2), false),
            Field::new("items", DataType::Int64, false),
            Field::new("version", DataType::Int64, false),
        ]))
    }
}

/// Where the example reads and writes.
pub struct OrderModel {
    pub brokers: String,
    pub topic: String,
    pub pg_url: String,
    pub table: String,
    pub dlq_dir: PathBuf,
}

impl OrderModel {
    /// From the environment (see the module docs), with the defaults of the example files.
    pub fn from_env() -> Self {
        Self {
            brokers: var_or("WEIR_KAFKA_BROKERS", "127.0.0.1:9092"),
            topic: var_or("ORDERS_TOPIC", "orders"),
            pg_url: var_or("WEIR_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            table: var_or("ORDERS_TABLE", "orders"),
            dlq_dir: "order-read-model/dlq".into(),
        }
    }
}

/// Runs the read model until `shutdown`.
pub fn run(m: &OrderModel, shutdown: Shutdown) -> anyhow::Result<RunSummary> {
    let field = |name: &str, path: &str, field_type, nullable| FieldConfig {
        nullable,
        path: Some(path.into()),
        ..FieldConfig::new(name, field_type)
    };
    let decimal = FieldType::Decimal {
        precision: 18,
        scale: 2,
    };
    let schema = SchemaConfig {
        table: "events".into(),
        event_time: "event_time".into(),
        // `weir generate orders` keys each event by its order id.
        partition_key: Some("order_id".into()),
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            field("event_id", "event_id", FieldType::String, false),
            field("event_type", "event_type", FieldType::String, false),
            field("order_id", "order_id", FieldType::String, false),
            field("version", "version", FieldType::Int64, false),
            field("correlation_id", "correlation_id", FieldType::String, false),
            field("event_time", "event_time", FieldType::Timestamp, false),
            field(
                "customer_id",
                "payload.customer_id",
                FieldType::String,
                true,
            ),
            field("quantity", "payload.quantity", FieldType::Int64, true),
            field("price", "payload.price", decimal, true),
            field("amount", "payload.amount", decimal, true),
        ],
    };
    let store = PostgresStore::connect_as(
        "postgres",
        &PostgresSinkConfig {
            url: PostgresUrl::new(m.pg_url.clone()),
            table: m.table.clone(),
            key_columns: vec!["order_id".into()],
            create_table: true,
            schema: None,
            lock_timeout_ms: 10_000,
            fillfactor: 30,
        },
        "order-read-model",
        CheckpointRole::Store,
    )?;
    let source = KafkaSource::new(KafkaSourceConfig::new(
        m.brokers.clone(),
        &[m.topic.as_str()],
        "order-read-model",
    ))?;
    let summary = Pipeline::new("order-read-model")
        .source(source)
        .schema(schema)
        // A redelivered event (an outbox re-publish, a producer retry) is applied once.
        .dedup(DedupConfig {
            keys: vec!["event_id".into()],
            within_ms: 60_000,
            time_column: None,
        })
        .operator("orders", |input| {
            Ok(Box::new(ProjectionOperator::new("orders", Orders, input)) as _)
        })
        .checkpoint_store(store.checkpoint_store()?)
        .sink(store)
        .dlq(JsonlDlq::new(&JsonlDlqConfig {
            path: m.dlq_dir.clone(),
        })?)
        .checkpoint_interval(std::time::Duration::from_millis(500))
        .run(shutdown)?;
    Ok(summary)
}

#[allow(dead_code)] // run by `cargo run --example`; the tests call `run`
fn main() -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    weir::install_signal_handlers(shutdown.clone())?;
    let summary = run(&OrderModel::from_env(), shutdown)?;
    let c = summary.counters;
    println!(
        "{} events: {} deduplicated, {} dead-lettered; {} rows out in {:.2}s",
        c.consumed,
        c.deduplicated,
        c.dlq,
        c.rows_out,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}
