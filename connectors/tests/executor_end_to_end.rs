//! The connectors driven by the runtime's executor: generator → (a minimal JSON decoder) →
//! JSONL sink, poison → JSONL DLQ, with a crash in the middle and a restart from the
//! checkpoint. Every event must end up exactly once in the sink or in the DLQ.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weir_connectors::{
    read_dlq_dir, read_jsonl_dir, EventGenerator, GeneratorConfig, GeneratorSource, JsonlDlq,
    JsonlDlqConfig, JsonlSink, JsonlSinkConfig,
};
use weir_runtime::arrow::array::{Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::Result;
use weir_runtime::executor::TaskFactory;
use weir_runtime::testkit::MemorySink;
use weir_runtime::{
    Decoded, Decoder, ErrorKind, Executor, ExecutorConfig, LocalCheckpointStore, PartitionTask,
    RawBatch, RowReject, Shutdown, SinkWriter, OFFSET_COLUMN,
};

/// Just enough decoding for the generator's payloads.
struct TestDecoder {
    schema: SchemaRef,
}

impl TestDecoder {
    fn new() -> Self {
        Self {
            schema: Arc::new(Schema::new(vec![
                Field::new("event_id", DataType::Utf8, false),
                Field::new("sensor_id", DataType::Utf8, false),
                Field::new("event_time", DataType::Int64, false),
                Field::new(OFFSET_COLUMN, DataType::Int64, false),
            ])),
        }
    }
}

fn classify(payload: Option<&[u8]>) -> std::result::Result<(String, String, i64), ErrorKind> {
    let bytes = payload.ok_or(ErrorKind::NullPayload)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ErrorKind::EmptyMessage);
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| ErrorKind::InvalidJson)?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let time = v
        .get("event_time")
        .ok_or(ErrorKind::MissingField)?
        .as_i64()
        .ok_or(ErrorKind::WrongType)?;
    v.get("temperature")
        .ok_or(ErrorKind::MissingField)?
        .as_f64()
        .ok_or(ErrorKind::WrongType)?;
    Ok((
        text("event_id").ok_or(ErrorKind::MissingField)?,
        text("sensor_id").ok_or(ErrorKind::MissingField)?,
        time,
    ))
}

impl Decoder for TestDecoder {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
        let (mut ids, mut sensors, mut times, mut offsets) = (vec![], vec![], vec![], vec![]);
        let mut rejects = Vec::new();
        for m in &raw.messages {
            match classify(m.payload.as_deref()) {
                Ok((id, sensor, time)) => {
                    ids.push(id);
                    sensors.push(sensor);
                    times.push(time);
                    offsets.push(m.offset);
                }
                Err(kind) => rejects.push(RowReject {
                    offset: m.offset,
                    kind,
                    message: kind.as_str().to_string(),
                }),
            }
        }
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(StringArray::from(sensors)),
                Arc::new(Int64Array::from(times)),
                Arc::new(Int64Array::from(offsets)),
            ],
        )?;
        Ok(Decoded {
            batch: Some(batch),
            rejects,
        })
    }
}

fn tasks() -> TaskFactory {
    Box::new(|topic, partition| {
        Ok(PartitionTask::new(
            Arc::from("e2e"),
            topic.clone(),
            partition,
            Box::new(TestDecoder::new()),
            Vec::new(),
        ))
    })
}

fn run(
    generator: &GeneratorConfig,
    dir: &std::path::Path,
    fail_after_writes: Option<usize>,
) -> Result<()> {
    let mut config = ExecutorConfig::new("e2e");
    config.cpu_threads = 2;
    config.max_rows = 37;
    config.linger = Duration::from_millis(5);
    config.checkpoint_interval = Duration::from_millis(1);
    let mut sinks: Vec<Box<dyn SinkWriter>> = vec![Box::new(JsonlSink::new(
        "out",
        &JsonlSinkConfig {
            path: dir.join("out"),
        },
    )?)];
    if let Some(n) = fail_after_writes {
        sinks.push(Box::new(MemorySink {
            fail_after_writes: Some(n),
            ..Default::default()
        }));
    }
    let dlq = JsonlDlq::new(&JsonlDlqConfig {
        path: dir.join("dlq"),
    })?;
    let executor = Executor::new(
        config,
        Box::new(GeneratorSource::new(generator.clone())?),
        tasks(),
        sinks,
        Box::new(dlq),
        Arc::new(LocalCheckpointStore::new(dir.join("ckpt"), "e2e")),
    );
    executor.run(Shutdown::new()).map(|_| ())
}

#[test]
fn a_crash_and_restart_leaves_every_event_exactly_once_in_the_sink_or_the_dlq() {
    let generator = GeneratorConfig {
        sensors: 40,
        partitions: 3,
        events: Some(3000),
        max_out_of_orderness_ms: 200,
        poison_ratio: 0.05,
        ..Default::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    assert!(
        run(&generator, tmp.path(), Some(25)).is_err(),
        "the injected crash stops the run"
    );
    let partial = read_jsonl_dir(tmp.path().join("out")).unwrap().len();
    assert!(
        partial > 0 && partial < 3000,
        "the crash came after some checkpoints and before the end: {partial} rows"
    );
    run(&generator, tmp.path(), None).unwrap();

    // What the generator says should be where.
    let g = EventGenerator::new(&generator);
    let mut expected_rows = BTreeMap::new();
    let mut expected_dead = BTreeMap::new();
    for p in 0..3 {
        for o in 0..g.events_in_partition(p).unwrap() as i64 {
            let e = g.event(p, o).unwrap();
            match e.poison {
                None => {
                    expected_rows.insert(format!("{p}-{o}"), e.sensor_id());
                }
                Some(kind) => {
                    expected_dead.insert((p, o), kind.error_kind());
                }
            }
        }
    }

    let mut rows = BTreeMap::new();
    for row in read_jsonl_dir(tmp.path().join("out")).unwrap() {
        assert!(row.get(OFFSET_COLUMN).is_none());
        let id = row["event_id"].as_str().unwrap().to_string();
        let previous = rows.insert(id.clone(), row["sensor_id"].as_str().unwrap().to_string());
        assert!(previous.is_none(), "{id} written twice");
    }
    assert_eq!(rows, expected_rows);

    let mut dead = BTreeMap::new();
    for record in read_dlq_dir(tmp.path().join("dlq")).unwrap() {
        let at = (record.partition, record.offset);
        let original = g.message(at.0, at.1).unwrap();
        assert_eq!(record.payload, original.payload, "original bytes at {at:?}");
        assert_eq!(record.key, original.key);
        assert!(
            dead.insert(at, record.kind).is_none(),
            "{at:?} dead-lettered twice"
        );
    }
    assert_eq!(dead, expected_dead);
    assert!(!expected_dead.is_empty());
}
