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
