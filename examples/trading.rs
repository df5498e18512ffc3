//! Trading bars written as Rust code with the fluent builder: 1-minute OHLC bars and VWAP per
//! symbol from a Kafka topic of trades into PostgreSQL, the same query as
//! `examples/trading_bars.toml`.
//!
//! Prices are `decimal(18, 4)`: open/high/low/close and the VWAP (`sum(price * quantity) /
//! sum(quantity)`) are exact decimals, never floats. A retried trade (same trade id) is
//! dropped by a `dedup` before the query; trades later than 2 s behind the newest of their
//! partition, and malformed messages, go to the DLQ (`trading-example/dlq/`) with the reason.
//!
//! Guarantee: exactly-once in PostgreSQL. Each partition's bars and its checkpoint commit in
//! one transaction; a bar is written once, when the watermark passes its end. Kill it and run
//! it again: it resumes from its checkpoints in PostgreSQL.
//!
//! Run it (from the repository root):
//!   eval "$(scripts/kafka.sh start | sed 's/^/export /')"
//!   eval "$(scripts/postgres.sh start | grep '^WEIR_' | sed 's/^/export /')"
//!   cargo run --release -- generate trades --topic trades --events 200000 --duplicate-ratio 0.01 --late-ratio 0.001
//!   cargo run --release --example trading
//!   psql "$WEIR_PG_URL" -c 'SELECT * FROM trade_bars_rs ORDER BY window_start, symbol LIMIT 20'
//! Environment: WEIR_KAFKA_BROKERS (default 127.0.0.1:9092), WEIR_PG_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres), TRADES_TOPIC
//! (default `trades`), BARS_TABLE (default `trade_bars_rs`). Ctrl-C stops it.

use std::path::PathBuf;
use std::time::Duration;

use weir::connectors::{
    CheckpointRole, KafkaSource, KafkaSourceConfig, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
use weir::env_vars::var_or;
use weir::operators::SqlOptions;
use weir::prelude::*;

/// The bars: one row per symbol and minute.
pub const BARS: &str = "SELECT symbol, window_start, window_end, \
    first_value(price ORDER BY event_time, trade_id) AS open, \
    max(price) AS high, \
    min(price) AS low, \
    last_value(price ORDER BY event_time, trade_id) AS close, \
    sum(price * quantity) / sum(quantity) AS vwap, \
    sum(quantity) AS volume, \
    count(*) AS trades \
    FROM trades GROUP BY symbol, TUMBLE(event_time, INTERVAL '1' MINUTE)";

/// Where the example reads and writes.
pub struct Trading {
    pub brokers: String,
    pub topic: String,
    pub pg_url: String,
    pub table: String,
    pub dlq_dir: PathBuf,
}

impl Trading {
    /// From the environment (see the module docs), with the defaults of the example files.
    pub fn from_env() -> Self {
        Self {
            brokers: var_or("WEIR_KAFKA_BROKERS", "127.0.0.1:9092"),
            topic: var_or("TRADES_TOPIC", "trades"),
            pg_url: var_or("WEIR_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
            table: var_or("BARS_TABLE", "trade_bars_rs"),
            dlq_dir: "trading-example/dlq".into(),
        }
    }
}

/// The trades as `weir generate trades` writes them.
pub fn trades_schema() -> SchemaConfig {
    let f = |name: &str, field_type| FieldConfig::new(name, field_type);
    SchemaConfig {
        table: "trades".into(),
        event_time: "event_time".into(),
        // Each trade is keyed by its symbol: a symbol's trades are in one partition.
        partition_key: Some("symbol".into()),
        partition_key_check: Default::default(),
        metadata: Default::default(),
        fields: vec![
            f("trade_id", FieldType::String),
            f("symbol", FieldType::String),
            f(
                "price",
                FieldType::Decimal {
                    precision: 18,
                    scale: 4,
                },
            ),
            f("quantity", FieldType::Int64),
            f("side", FieldType::String),
            f("event_time", FieldType::Timestamp),
        ],
    }
}

/// Runs the bars until `shutdown`.
pub fn run(t: &Trading, shutdown: Shutdown) -> anyhow::Result<RunSummary> {
    let store = PostgresStore::connect_as(
        "postgres",
        &PostgresSinkConfig {
            url: PostgresUrl::new(t.pg_url.clone()),
            table: t.table.clone(),
            key_columns: vec!["symbol".into(), "window_start".into()],
            create_table: true,
            schema: None,
            lock_timeout_ms: 10_000,
            fillfactor: 30,
        },
        "trading-example",
        CheckpointRole::Store,
    )?;
    let options = SqlOptions {
        max_out_of_orderness_ms: 2_000,
        late_policy: LatePolicy::Dlq,
        ..Default::default()
    };
    let summary = Pipeline::new("trading-example")
        .source(KafkaSource::new(KafkaSourceConfig::new(
            t.brokers.clone(),
            &[t.topic.as_str()],
            "trading-example",
        ))?)
        .schema(trades_schema())
        .dedup(DedupConfig {
            keys: vec!["trade_id".into()],
            within_ms: 60_000,
            time_column: None,
        })
        .sql(BARS, &options)?
        .checkpoint_store(store.checkpoint_store()?)
        .sink(store)
        .dlq(JsonlDlq::new(&JsonlDlqConfig {
            path: t.dlq_dir.clone(),
        })?)
        .checkpoint_interval(Duration::from_millis(500))
        .run(shutdown)?;
    Ok(summary)
}

#[allow(dead_code)] // run by `cargo run --example`; the tests call `run`
fn main() -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    weir::install_signal_handlers(shutdown.clone())?;
    let summary = run(&Trading::from_env(), shutdown)?;
    let c = summary.counters;
    println!(
        "{} trades: {} deduplicated, {} dead-lettered ({} late); {} bars out in {:.2}s",
        c.consumed,
        c.deduplicated,
        c.dlq,
        c.late,
        c.rows_out,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}
