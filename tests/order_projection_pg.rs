//! The order read model on a real PostgreSQL (`WEIR_PG_URL`, started by `scripts/postgres.sh`):
//! a generated stream of order events (OrderPlaced, ItemAdded, PaymentConfirmed, OrderShipped,
//! OrderCancelled, OrderPurged), many orders interleaved over several partitions, folded by a
//! keyed projection into an `orders` table (one row per order: status, total, item count;
//! purged orders deleted), must equal a reference computed from the generator's plan of each
//! order, not from the fold. Events that break an order's life cycle are injected and must
//! all reach the DLQ. The stored offsets must be the end of every partition, and a second run
//! changes nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use serde_json::json;
use weir::connectors::dlq_file::read_dlq_dir;
use weir::connectors::{
    partition_for_key, CheckpointRole, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
use weir::prelude::*;

const PARTITIONS: u32 = 4;
const ORDERS: usize = 3000;

fn url() -> String {
    std::env::var("WEIR_PG_URL").unwrap_or_else(|_| {
        panic!("WEIR_PG_URL is not set: start PostgreSQL with `export \"$(scripts/postgres.sh start)\"` (scripts/test.sh does it)")
    })
}

// ---------------------------------------------------------------------------------------------
// The projection under test

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
            ("cancelled", "OrderPurged") => "purged",
            (status, kind) => {
                return Err(format!("{kind} is not allowed for an order that is {status:?}").into())
            }
        };
        o.status = next.to_string();
        Ok(())
    }

    fn deleted(&self, o: &Order) -> bool {
        o.status == "purged"
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

// ---------------------------------------------------------------------------------------------
// The generator and its reference

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the generator decided for one order: the row it must end as (None when purged).
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    status: &'static str,
    total: f64,
    items: i64,
}

/// Writes the interleaved events to `path`; returns the reference table (purged orders
/// absent), the number of injected invalid events, and the lines per partition.
fn generate(path: &Path, seed: u64) -> (BTreeMap<String, Expected>, usize, BTreeMap<i32, i64>) {
    let mut rng = Rng(seed);
    let mut reference = BTreeMap::new();
    let mut invalid = 0;
    let mut queues: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for n in 0..ORDERS {
        let id = format!("order-{n:05}");
        let ev = |kind: &str, amount: Option<f64>| json!({"order_id": id, "kind": kind, "amount": amount});
        let mut events = vec![ev("OrderPlaced", None)];
        if rng.chance(10) {
            // Shipping an unpaid order: refused.
            events.push(ev("OrderShipped", None));
            invalid += 1;
        }
        let items = 1 + rng.below(5) as i64;
        let mut total = 0.0;
        for _ in 0..items {
            let amount = (1 + rng.below(400)) as f64 * 0.25;
            total += amount;
            events.push(ev("ItemAdded", Some(amount)));
        }
        let paid = rng.chance(70);
        if paid {
            events.push(ev("PaymentConfirmed", None));
        }
        let status = if paid && rng.chance(60) {
            events.push(ev("OrderShipped", None));
            "shipped"
        } else if rng.chance(30) {
            events.push(ev("OrderCancelled", None));
            "cancelled"
        } else if paid {
            "paid"
        } else {
            "placed"
        };
        let purged = status == "cancelled" && rng.chance(40);
        if purged {
            events.push(ev("OrderPurged", None));
        }
        if status != "placed" && rng.chance(8) {
            // An item after the order left `placed` (or after its purge): refused.
            events.push(ev("ItemAdded", Some(1.0)));
            invalid += 1;
        }
        if rng.chance(3) {
            events.push(ev("OrderTeleported", None));
            invalid += 1;
        }
        if !purged {
            reference.insert(
                id.clone(),
                Expected {
                    status,
                    total,
                    items,
                },
            );
        }
        queues.push((id, events));
    }
    // Interleave: repeatedly take the next event of a random order still holding events.
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    let mut cursors = vec![0usize; queues.len()];
    let mut live: Vec<usize> = (0..queues.len()).collect();
    let mut time = 1_700_000_000_000i64;
    while !live.is_empty() {
        let pick = rng.below(live.len() as u64) as usize;
        let q = live[pick];
        let (id, events) = &queues[q];
        let mut event = events[cursors[q]].clone();
        time += 1 + rng.below(50) as i64;
        event["time"] = json!(time);
        writeln!(f, "{event}").unwrap();
        *per_partition
            .entry(partition_for_key(id.as_bytes(), PARTITIONS))
            .or_default() += 1;
        cursors[q] += 1;
        if cursors[q] == events.len() {
            live.swap_remove(pick);
        }
    }
    f.flush().unwrap();
    (reference, invalid, per_partition)
}

// ---------------------------------------------------------------------------------------------

fn run(dir: &Path, input: &Path, schema_name: &str) -> RunSummary {
    let field = |name: &str, field_type, nullable| FieldConfig {
        nullable,
        ..FieldConfig::new(name, field_type)
    };
    let store = PostgresStore::connect_as(
        "pg",
        &PostgresSinkConfig {
            url: PostgresUrl::new(url()),
            table: "orders".into(),
            key_columns: vec!["order_id".into()],
            create_table: true,
            schema: Some(schema_name.into()),
            lock_timeout_ms: 10_000,
            fillfactor: 30,
        },
        "orders",
        CheckpointRole::Store,
    )
    .unwrap();
    Pipeline::new("orders")
        .source(
            JsonlFileSource::new(JsonlSourceConfig {
                path: input.to_path_buf(),
                partitions: PARTITIONS,
                key_field: Some("order_id".into()),
            })
            .unwrap(),
        )
        .schema(SchemaConfig {
            table: "events".into(),
            event_time: "time".into(),
            partition_key: Some("order_id".into()),
            partition_key_check: Default::default(),
            metadata: Default::default(),
            fields: vec![
                field("order_id", FieldType::String, false),
                field("kind", FieldType::String, false),
                field("amount", FieldType::Float64, true),
                field("time", FieldType::Timestamp, false),
            ],
        })
        .operator("orders", |input| {
            Ok(Box::new(ProjectionOperator::new("orders", Orders, input)) as _)
        })
        .checkpoint_store(store.checkpoint_store().unwrap())
        .sink(store)
        .dlq(
            JsonlDlq::new(&JsonlDlqConfig {
                path: dir.join("dlq"),
            })
            .unwrap(),
        )
        .checkpoint_interval(std::time::Duration::from_millis(25))
        .batch(300, std::time::Duration::from_millis(5))
        .run(Shutdown::new())
        .unwrap()
}

fn table(c: &mut Client, schema: &str) -> BTreeMap<String, (String, f64, i64)> {
    c.query(
        &format!("SELECT order_id, status, total, items FROM \"{schema}\".orders"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

fn offsets(c: &mut Client, schema: &str) -> BTreeMap<i32, i64> {
    c.query(
        &format!(
            "SELECT partition, next_offset FROM \"{schema}\".weir_checkpoints WHERE pipeline = 'orders'"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn the_order_read_model_in_postgres_equals_the_reference_of_the_generated_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("orders.jsonl");
    let (reference, invalid, per_partition) = generate(&input, 0x0d3e5);
    assert_eq!(per_partition.len(), PARTITIONS as usize);
    assert!(reference.values().any(|o| o.status == "shipped"));
    assert!(reference.len() < ORDERS, "some orders are purged");
    let schema = format!(
        "weir_orders_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 0xffff_ffff
    );
    let summary = run(tmp.path(), &input, &schema);
    let mut c = Client::connect(&url(), NoTls).unwrap();
    let got = table(&mut c, &schema);
    let expected: BTreeMap<String, (String, f64, i64)> = reference
        .iter()
        .map(|(k, e)| (k.clone(), (e.status.to_string(), e.total, e.items)))
        .collect();
    assert_eq!(got.len(), expected.len(), "one row per live order");
    for (id, row) in &expected {
        assert_eq!(got.get(id), Some(row), "order {id}");
    }
    assert_eq!(got, expected);

    // Every refused event is in the DLQ, and nothing else is.
    assert_eq!(summary.counters.dlq as usize, invalid);
    let dead = read_dlq_dir(tmp.path().join("dlq")).unwrap();
    assert_eq!(dead.len(), invalid);
    assert!(dead
        .iter()
        .all(|d| d.letter.message.contains("is not allowed for an order")));
    assert_eq!(
        offsets(&mut c, &schema),
        per_partition,
        "offsets are the end of the input"
    );

    // A restart resumes at the stored offsets: nothing is read again, nothing changes.
    let again = run(tmp.path(), &input, &schema);
    assert_eq!(again.counters.consumed, 0);
    assert_eq!(table(&mut c, &schema), expected);
    assert_eq!(offsets(&mut c, &schema), per_partition);
}
