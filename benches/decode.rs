//! JSON → Arrow decode of generator events, clean and with 1% poison.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use datafusion::arrow::json::ReaderBuilder;
use weir::connectors::{EventGenerator, GeneratorConfig};
use weir::operators::JsonDecoder;
use weir_runtime::{Decoder, RawBatch};

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for poison in [0.0, 0.01] {
        let gen = EventGenerator::new(&GeneratorConfig {
            sensors: 10_000,
            partitions: 1,
            poison_ratio: poison,
            ..Default::default()
        });
        let batch = RawBatch::new("bench".into(), 0, gen.messages(0, 0, 8192));
        g.throughput(Throughput::Elements(batch.len() as u64));
        if poison == 0.0 {
            // The floor: arrow-json alone over the same bytes, already concatenated.
            let mut buf = Vec::new();
            for m in &batch.messages {
                buf.extend_from_slice(m.payload.as_deref().unwrap_or_default());
                buf.push(b'\n');
            }
            let schema = weir::iot_schema().arrow_schema();
            g.bench_function("arrow_json_alone_8192_rows", |b| {
                b.iter(|| {
                    let mut d = ReaderBuilder::new(schema.clone())
                        .with_batch_size(8192)
                        .build_decoder()
                        .unwrap();
                    d.decode(&buf).unwrap();
                    d.flush().unwrap()
                })
            });
        }
        let mut decoder = JsonDecoder::new(&weir::iot_schema());
        g.bench_with_input(
            BenchmarkId::new("8192_rows_poison", poison),
            &batch,
            |b, batch| b.iter(|| decoder.decode(batch).unwrap()),
        );
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
