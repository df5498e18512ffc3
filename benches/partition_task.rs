//! A partition task end to end: raw JSON → decode → demo window.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir::connectors::{EventGenerator, GeneratorConfig};
use weir::operators::{JsonDecoder, TumbleWindow};
use weir_runtime::{Decoder, PartitionTask, RawBatch};

fn partition_task(c: &mut Criterion) {
    let gen = EventGenerator::new(&GeneratorConfig {
        sensors: 10_000,
        partitions: 1,
        disorder_ms: 5_000,
        ..Default::default()
    });
    let batches: Vec<RawBatch> = (0..64)
        .map(|i| RawBatch::new("bench".into(), 0, gen.messages(0, i * 8192, 8192)))
        .collect();
    let mut g = c.benchmark_group("partition_task");
    g.sample_size(10);
    g.throughput(Throughput::Elements(64 * 8192));
    g.bench_function("decode_window_64x8192", |b| {
        b.iter(|| {
            let schema = weir::iot_schema();
            let decoder = JsonDecoder::new(&schema);
            let window = TumbleWindow::new(
                "w",
                &weir::demo_window(60_000),
                decoder.schema(),
                "event_time",
            )
            .unwrap();
            let mut task = PartitionTask::new(
                "bench".into(),
                "bench".into(),
                0,
                Box::new(decoder),
                vec![Box::new(window)],
            );
            for raw in &batches {
                task.process(raw).unwrap();
            }
            task.end_of_input().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, partition_task);
criterion_main!(benches);
