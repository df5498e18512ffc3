//! JSON → Arrow decode of generator events, clean and with 1% poison; and the same events
//! as nested envelopes read through 5 field paths (`nested_envelope_5_paths`), against the
//! flat events of the same run, and with the payload decoded whole as a struct holding a struct
//! and a list (`nested_envelope_payload_struct`).

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
    nested(&mut g);
    g.finish();
}

/// The clean events again, each wrapped in an envelope (`eventId`, `eventType`, `payload`
/// with the reading and an items list, `meta.time`), decoded through 5 paths.
fn nested(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let gen = EventGenerator::new(&GeneratorConfig {
        sensors: 10_000,
        partitions: 1,
        ..Default::default()
    });
    let mut messages = gen.messages(0, 0, 8192);
    for m in &mut messages {
        let flat: serde_json::Value =
            serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).unwrap();
        let envelope = serde_json::json!({
            "eventId": flat["event_id"],
            "eventType": "ReadingTaken",
            "aggregateId": flat["sensor_id"],
            "version": 1,
            "payload": {
                "sensorId": flat["sensor_id"],
                "reading": {"temperature": flat["temperature"], "humidity": flat["humidity"]},
                "items": [{"sku": "probe", "qty": 1}],
            },
            "meta": {"time": flat["event_time"], "source": "bench", "trace": [1, 2, 3]},
        });
        m.payload = Some(serde_json::to_vec(&envelope).unwrap());
    }
    let batch = RawBatch::new("bench".into(), 0, messages);
    let schema: weir::operators::SchemaConfig = serde_json::from_str(
        r#"{"table":"sensors","event_time":"event_time","fields":[
        {"name":"event_id","path":"eventId","type":"string"},
        {"name":"sensor_id","path":"payload.sensorId","type":"string"},
        {"name":"temperature","path":"payload.reading.temperature","type":"float64"},
        {"name":"humidity","path":"payload.reading.humidity","type":"float64"},
        {"name":"event_time","path":"meta.time","type":"timestamp"}]}"#,
    )
    .unwrap();
    let mut decoder = JsonDecoder::new(&schema);
    let out = decoder.decode(&batch).unwrap();
    assert!(out.rejects.is_empty(), "{:?}", &out.rejects[..1]);
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_with_input(
        BenchmarkId::new("8192_rows_nested_envelope_5_paths", 0),
        &batch,
        |b, batch| b.iter(|| decoder.decode(batch).unwrap()),
    );
    // The same envelopes with `payload` kept whole: a struct holding a struct and a list of
    // structs.
    let typed: weir::operators::SchemaConfig = serde_json::from_str(
        r#"{"table":"sensors","event_time":"event_time","fields":[
        {"name":"event_id","path":"eventId","type":"string"},
        {"name":"payload","type":"struct","fields":[
            {"name":"sensorId","type":"string"},
            {"name":"reading","type":"struct","fields":[
                {"name":"temperature","type":"float64"},{"name":"humidity","type":"float64"}]},
            {"name":"items","type":"list","item":{"type":"struct","fields":[
                {"name":"sku","type":"string"},{"name":"qty","type":"int32"}]}}]},
        {"name":"event_time","path":"meta.time","type":"timestamp"}]}"#,
    )
    .unwrap();
    let mut decoder = JsonDecoder::new(&typed);
    let out = decoder.decode(&batch).unwrap();
    assert!(out.rejects.is_empty(), "{:?}", &out.rejects[..1]);
    g.bench_with_input(
        BenchmarkId::new("8192_rows_nested_envelope_payload_struct", 0),
        &batch,
        |b, batch| b.iter(|| decoder.decode(batch).unwrap()),
    );
}

criterion_group!(benches, decode);
criterion_main!(benches);
