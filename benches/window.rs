//! Tumbling-window update and emit at 10, 10k and 1M keys.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
use datafusion::arrow::record_batch::RecordBatch;
use weir::operators::{JsonDecoder, TumbleWindow};
use weir_runtime::{Decoder, Emit, Operator};

fn batch(
    keys: usize,
    rows: usize,
    start: i64,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> RecordBatch {
    let names: Vec<String> = (0..rows)
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

criterion_group!(benches, window);
criterion_main!(benches);
