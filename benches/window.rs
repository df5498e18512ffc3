//! Tumbling-window update and emit at 10, 10k and 1M keys; the continuous GROUP BY (upsert
//! stream) per batch with 10k and 1M groups.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use weir::operators::{build_window, JsonDecoder, TumbleWindow, WindowConfig, WindowKind};
use weir_runtime::{Decoder, Emit, Operator};

fn batch(
    keys: usize,
    rows: usize,
    start: i64,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> RecordBatch {
    keyed_batch(keys, rows, 0, start, schema)
}

/// Rows `first..first + rows` of a stream spreading over `keys` keys.
fn keyed_batch(
    keys: usize,
    rows: usize,
    first: usize,
    start: i64,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> RecordBatch {
    let names: Vec<String> = (first..first + rows)
        .map(|i| format!("sensor-{}", (i * 7919) % keys))
        .collect();
    RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| i.to_string()),
            )),
            Arc::new(StringArray::from_iter_values(names.iter())),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| (i % 50) as f64),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| (i % 90) as f64),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..rows).map(|i| start + i as i64),
            )),
            Arc::new(Int64Array::from_iter_values(0..rows as i64)),
        ],
    )
    .unwrap()
}

fn window(c: &mut Criterion) {
    let schema = JsonDecoder::new(&weir::iot_schema()).schema();
    let mut g = c.benchmark_group("window");
    g.sample_size(10);
    for keys in [10usize, 10_000, 1_000_000] {
        let rows = 8192;
        let b = batch(keys, rows, 0, &schema);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(
            BenchmarkId::new("update_8192_rows", keys),
            &b,
            |bench, b| {
                let mut w = TumbleWindow::new(
                    "w",
                    &weir::demo_window(3_600_000),
                    schema.clone(),
                    "event_time",
                )
                .unwrap();
                bench.iter(|| {
                    let mut emit = Emit::default();
                    w.process(b.clone(), &mut emit).unwrap();
                })
            },
        );
        // Fill one window with `keys` groups, then close it: the cost of emitting.
        let fill: Vec<RecordBatch> = (0..keys.div_ceil(rows).max(1))
            .map(|i| batch(keys, rows, (i * rows) as i64 % 60_000, &schema))
            .collect();
        g.throughput(Throughput::Elements(keys as u64));
        g.bench_function(BenchmarkId::new("emit_window", keys), |bench| {
            bench.iter_batched(
                || {
                    let mut w = TumbleWindow::new(
                        "w",
                        &weir::demo_window(60_000),
                        schema.clone(),
                        "event_time",
                    )
                    .unwrap();
                    let mut emit = Emit::default();
                    for b in &fill {
                        w.process(b.clone(), &mut emit).unwrap();
                    }
                    w
                },
                |mut w| {
                    let mut emit = Emit::default();
                    w.on_end_of_input(&mut emit).unwrap();
                    emit
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// A GROUP BY without a window holding `groups` groups: the cost of one 8192-row batch
/// (its updates, and the upsert rows of the groups it changed).
fn upsert(c: &mut Criterion) {
    let schema = JsonDecoder::new(&weir::iot_schema()).schema();
    let mut g = c.benchmark_group("upsert");
    g.sample_size(10);
    let rows = 8192;
    for groups in [10_000usize, 1_000_000] {
        let cfg = WindowConfig {
            kind: WindowKind::Continuous,
            ..WindowConfig::from(&weir::demo_window(60_000))
        };
        let mut op = build_window("u", &cfg, schema.clone(), "event_time").unwrap();
        let mut emit = Emit::default();
        for i in 0..groups.div_ceil(rows) {
            op.process(keyed_batch(groups, rows, i * rows, 0, &schema), &mut emit)
                .unwrap();
        }
        let mut next = 0usize;
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(BenchmarkId::new("batch_8192_rows", groups), |bench| {
            bench.iter_batched(
                || {
                    next += rows;
                    keyed_batch(groups, rows, next, 0, &schema)
                },
                |b| {
                    let mut emit = Emit::default();
                    op.process(b, &mut emit).unwrap();
                    emit
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, window, upsert);
criterion_main!(benches);
