//! Test support shared by the executor tests of this crate: a decoder just good enough for
//! the generator's payloads (the real one lives in weir-operators, which connectors must not
//! depend on) and the partition tasks that use it.
#![allow(dead_code)]

use std::sync::Arc;

use weir_runtime::arrow::array::{Int64Array, StringArray};
use weir_runtime::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::error::Result;
use weir_runtime::executor::TaskFactory;
use weir_runtime::{
    Decoded, Decoder, ErrorKind, PartitionTask, RawBatch, RowReject, OFFSET_COLUMN,
};

/// Just enough decoding for the generator's payloads.
pub struct TestDecoder {
    schema: SchemaRef,
}

impl TestDecoder {
    pub fn new() -> Self {
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

pub fn classify(payload: Option<&[u8]>) -> std::result::Result<(String, String, i64), ErrorKind> {
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

pub fn tasks() -> TaskFactory {
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

/// Every event of `generator` is exactly once in the JSONL output `dir/out` (valid ones) or in
/// the DLQ `dir/dlq` (poison, with its original bytes and kind).
pub fn assert_exactly_once(generator: &weir_connectors::GeneratorConfig, dir: &std::path::Path) {
    let rows = weir_connectors::read_jsonl_dir(dir.join("out")).unwrap();
    assert_rows_and_dlq_exactly_once(generator, &rows, dir);
}

/// Every valid event of `generator` is exactly once in `rows`, every poison one exactly once
/// in the DLQ `dir/dlq`, with its original bytes and kind.
pub fn assert_rows_and_dlq_exactly_once(
    generator: &weir_connectors::GeneratorConfig,
    output: &[serde_json::Value],
    dir: &std::path::Path,
) {
    use std::collections::BTreeMap;
    use weir_connectors::{read_dlq_dir, EventGenerator};

    // What the generator says should be where.
    let g = EventGenerator::new(generator);
    let mut expected_rows = BTreeMap::new();
    let mut expected_dead = BTreeMap::new();
    for p in 0..generator.partitions as i32 {
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
    for row in output {
        assert!(row.get(OFFSET_COLUMN).is_none());
        let id = row["event_id"].as_str().unwrap().to_string();
        let previous = rows.insert(id.clone(), row["sensor_id"].as_str().unwrap().to_string());
        assert!(previous.is_none(), "{id} written twice");
    }
    assert_eq!(rows, expected_rows);

    let mut dead = BTreeMap::new();
    for record in read_dlq_dir(dir.join("dlq")).unwrap() {
        let at = (record.letter.partition, record.letter.offset);
        let original = g.message(at.0, at.1).unwrap();
        assert_eq!(
            record.letter.payload, original.payload,
            "original bytes at {at:?}"
        );
        assert_eq!(record.letter.key, original.key);
        assert!(
            dead.insert(at, record.letter.kind).is_none(),
            "{at:?} dead-lettered twice"
        );
    }
    assert_eq!(dead, expected_dead);
    assert!(!expected_dead.is_empty());
}

/// Runs a future to completion on this thread (the admin client's futures need no runtime).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => {
                std::thread::park_timeout(std::time::Duration::from_millis(20))
            }
        }
    }
}

/// Wait (bounded by `limit`) until `cond` holds.
pub fn wait_for(what: &str, limit: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The `part.0`-th of `part.1` equal slices of every generator partition's messages into the
/// same partition of `topic`, in offset order; the number sent.
pub fn produce_generated(
    brokers: &str,
    topic: &str,
    truth: &weir_connectors::EventGenerator,
    partitions: i32,
    part: (usize, usize),
) -> u64 {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut sent = 0;
    for p in 0..partitions {
        let n = truth.events_in_partition(p).unwrap() as usize;
        let (from, to) = (n * part.0 / part.1, n * (part.0 + 1) / part.1);
        for m in truth.messages(p, from as i64, to - from) {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(p);
            if let Some(k) = &m.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &m.payload {
                record = record.payload(v.as_slice());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        producer.poll(Duration::from_millis(10));
                        record = r;
                    }
                }
            }
            sent += 1;
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    sent
}
