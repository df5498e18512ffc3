//! `weir bench --postgres`: upsert throughput of the PostgreSQL sink, exactly-once mode.
//!
//! Rows `(key text, value float8, n int8, note text)` over `keys` distinct keys, round robin
//! (row i has key i mod keys), are cut into batches of `batch_rows`; each batch is split by
//! partition (`partition_for_key`, as a keyed source would) and written to its partition's
//! lane; every `checkpoint_every` batches each partition is prepared, its checkpoint saved and
//! committed, i.e. rows, offsets and state land in one transaction per partition, as in
//! `weir run`. Batches are built before the clock starts; the timed region is the sink's
//! writes and commits, including the conversion of Arrow columns to PostgreSQL's binary
//! format. The table lives in a fresh schema, dropped at the end.
//!
//! With `batch_rows <= keys` no key repeats inside a batch, so every row written is a row
//! applied (the sink keeps only the last row per key of a batch); the report says how many
//! were applied either way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use weir_connectors::{
    partition_for_key, CheckpointRole, PostgresSinkConfig, PostgresStore, PostgresUrl,
};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{Checkpoint, Counters, EpochParticipant, Lane, SinkWriter};

#[derive(Debug, Clone)]
pub struct PostgresBenchOptions {
    pub url: String,
    pub rows: u64,
    pub keys: u32,
    pub batch_rows: usize,
    pub partitions: u32,
    pub checkpoint_every: u64,
}

#[derive(Debug, Clone)]
pub struct PostgresBenchReport {
    pub rows: u64,
    /// Rows left after keeping the last row per key of each batch: what PostgreSQL applied.
    pub applied: u64,
    pub secs: f64,
    pub commits: u64,
    pub table_rows: i64,
}

impl PostgresBenchReport {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.secs.max(1e-9)
    }
}

/// Runs the benchmark. See the module docs.
pub fn run(opts: &PostgresBenchOptions) -> Result<PostgresBenchReport> {
    if opts.rows == 0
        || opts.keys == 0
        || opts.batch_rows == 0
        || opts.partitions == 0
        || opts.checkpoint_every == 0
    {
        return Err(WeirError::Config(
            "bench --postgres: --events, --sensors, --batch-rows, --partitions and \
             --checkpoint-every must be positive"
                .into(),
        ));
    }
    let schema_name = format!(
        "weir_bench_{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis()
    );
    let config = PostgresSinkConfig {
        url: PostgresUrl::new(&opts.url),
        table: "bench".into(),
        key_columns: vec!["key".into()],
        create_table: true,
        schema: Some(schema_name.clone()),
        lock_timeout_ms: 10_000,
        fillfactor: 30,
    };
    let keys: Vec<String> = (0..opts.keys).map(|k| format!("key-{k:06}")).collect();
    let partition_of: Vec<i32> = keys
        .iter()
        .map(|k| partition_for_key(k.as_bytes(), opts.partitions))
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("n", DataType::Int64, false),
        Field::new("note", DataType::Utf8, false),
    ]));

    // Batches by partition, built before timing.
    let mut batches: Vec<Vec<(i32, RecordBatch)>> = Vec::new();
    let mut applied = 0u64;
    let mut row = 0u64;
    while row < opts.rows {
        let n = (opts.rows - row).min(opts.batch_rows as u64);
        let key_ids: Vec<usize> = (row..row + n)
            .map(|i| (i % u64::from(opts.keys)) as usize)
            .collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                key_ids.iter().map(|k| keys[*k].as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                (row..row + n).map(|i| i as f64 * 0.5),
            )),
            Arc::new(Int64Array::from_iter_values(
                (row..row + n).map(|i| i as i64),
            )),
            Arc::new(StringArray::from_iter_values((row..row + n).map(|i| {
                if i % 2 == 0 {
                    "even"
                } else {
                    "odd"
                }
            }))),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let mut by_partition: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (i, k) in key_ids.iter().enumerate() {
            by_partition
                .entry(partition_of[*k])
                .or_default()
                .push(i as u32);
        }
        let mut parts = Vec::new();
        for (p, rows) in by_partition {
            parts.push((p, take_record_batch(&batch, &UInt32Array::from(rows))?));
        }
        let mut distinct = key_ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        applied += distinct.len() as u64;
        batches.push(parts);
        row += n;
    }

    let mut store = PostgresStore::connect_as("bench", &config, "bench", CheckpointRole::Store)?;
    let checkpoints = store.checkpoint_store()?;
    let topic: Arc<str> = Arc::from("bench");
    let mut epochs: BTreeMap<i32, u64> = BTreeMap::new();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut commits = 0u64;
    let mut checkpoint_all = |store: &mut PostgresStore,
                              epochs: &mut BTreeMap<i32, u64>,
                              offsets: &BTreeMap<i32, i64>|
     -> Result<()> {
        for (p, next_offset) in offsets {
            let epoch = epochs.entry(*p).or_default();
            *epoch += 1;
            let lane = Lane::new(topic.clone(), *p);
            store.prepare(&lane, *epoch)?;
            checkpoints.save(&Checkpoint {
                pipeline: "bench".into(),
                topic: topic.clone(),
                partition: *p,
                epoch: *epoch,
                next_offset: *next_offset,
                counters: Counters::default(),
                operators: Vec::new(),
                parked: Default::default(),
                reset: false,
                generation: 0,
            })?;
            store.commit(&lane, *epoch)?;
            commits += 1;
        }
        Ok(())
    };

    let started = Instant::now();
    for (i, parts) in batches.iter().enumerate() {
        for (p, b) in parts {
            let outcome = store.write(&Lane::new(topic.clone(), *p), b)?;
            if !outcome.rejected.is_empty() {
                return Err(WeirError::sink(
                    "bench",
                    format!("rows were refused: {:?}", outcome.rejected),
                ));
            }
            *offsets.entry(*p).or_default() += b.num_rows() as i64;
        }
        if (i as u64 + 1).is_multiple_of(opts.checkpoint_every) {
            checkpoint_all(&mut store, &mut epochs, &offsets)?;
        }
    }
    checkpoint_all(&mut store, &mut epochs, &offsets)?;
    let secs = started.elapsed().as_secs_f64();

    let mut client = weir_connectors::postgres::PgConnect::new(&opts.url)
        .map_err(|e| WeirError::sink("bench", format!("url: {e}")))?
        .connect()
        .map_err(|e| WeirError::sink("bench", format!("connect: {e}")))?;
    let table_rows: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{schema_name}\".bench"),
            &[],
        )
        .map_err(|e| WeirError::sink("bench", format!("count rows: {e}")))?
        .get(0);
    drop(store);
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema_name}\" CASCADE"))
        .map_err(|e| WeirError::sink("bench", format!("drop the bench schema: {e}")))?;
    Ok(PostgresBenchReport {
        rows: opts.rows,
        applied,
        secs,
        commits,
        table_rows,
    })
}
