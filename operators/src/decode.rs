//! JSON messages to Arrow batches.
//!
//! The fast path decodes a whole raw batch in one pass of arrow-json's tape decoder. When
//! that fails, the batch is split in halves and each half decoded again, down to single
//! messages, so a poison message costs `O(log n)` re-decodes of the batch instead of stopping
//! it; the poison message itself is classified and dead-lettered with its reason.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;
use weir_runtime::batch::{RawBatch, RawMessage};
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Decoded, Decoder, RowReject, OFFSET_COLUMN};

use crate::schema::SchemaConfig;

/// Chunks at or below this size are decoded message by message when they fail.
const SINGLE_MESSAGE_BELOW: usize = 8;

/// Decodes JSON objects into the declared schema, plus the [`OFFSET_COLUMN`].
pub struct JsonDecoder {
    /// Declared fields only: what arrow-json decodes into.
    events: SchemaRef,
    /// Declared fields + offset column: what this decoder emits.
    output: SchemaRef,
    buf: Vec<u8>,
}

impl JsonDecoder {
    pub fn new(schema: &SchemaConfig) -> Self {
        Self::from_arrow(schema.arrow_schema())
    }

    pub fn from_arrow(events: SchemaRef) -> Self {
        let mut fields: Vec<Arc<Field>> = events.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(OFFSET_COLUMN, DataType::Int64, false)));
        Self {
            output: Arc::new(Schema::new(fields)),
            events,
            buf: Vec::new(),
        }
    }

    /// Decode `msgs` (all with a non-blank payload) as one batch of exactly `msgs.len()` rows.
    fn decode_chunk(&mut self, msgs: &[&RawMessage]) -> Result<RecordBatch, ArrowError> {
        let mut decoder = ReaderBuilder::new(self.events.clone())
            .with_batch_size(msgs.len().max(1))
            .build_decoder()?;
        self.buf.clear();
        for m in msgs {
            self.buf
                .extend_from_slice(m.payload.as_deref().unwrap_or_default());
            self.buf.push(b'\n');
        }
        let read = decoder.decode(&self.buf)?;
        if read < self.buf.len() && self.buf[read..].iter().any(|b| !b.is_ascii_whitespace()) {
            return Err(ArrowError::JsonError(
                "more JSON values than messages".into(),
            ));
        }
        let batch = decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(self.events.clone()));
        if batch.num_rows() != msgs.len() {
            return Err(ArrowError::JsonError(format!(
                "{} JSON values in {} messages",
                batch.num_rows(),
                msgs.len()
            )));
        }
        let offsets: ArrayRef =
            Arc::new(Int64Array::from_iter_values(msgs.iter().map(|m| m.offset)));
        let mut columns = batch.columns().to_vec();
        columns.push(offsets);
        RecordBatch::try_new(self.output.clone(), columns)
    }

    fn decode_split(
        &mut self,
        msgs: &[&RawMessage],
        out: &mut Vec<RecordBatch>,
        rejects: &mut Vec<RowReject>,
    ) {
        if msgs.is_empty() {
            return;
        }
        match self.decode_chunk(msgs) {
            Ok(batch) => out.push(batch),
            Err(e) if msgs.len() == 1 => rejects.push(self.classify(msgs[0], &e)),
            Err(_) if msgs.len() <= SINGLE_MESSAGE_BELOW => {
                for m in msgs {
                    self.decode_split(std::slice::from_ref(m), out, rejects);
                }
            }
            Err(_) => {
                let (a, b) = msgs.split_at(msgs.len() / 2);
                self.decode_split(a, out, rejects);
                self.decode_split(b, out, rejects);
            }
        }
    }

    /// Why a single message did not decode, in words a user can act on.
    fn classify(&self, msg: &RawMessage, err: &ArrowError) -> RowReject {
        let payload = msg.payload.as_deref().unwrap_or_default();
        let reject = |kind, message: String| RowReject {
            offset: msg.offset,
            kind,
            message,
        };
        let value: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return reject(ErrorKind::InvalidJson, format!("invalid JSON: {e}")),
        };
        let Some(obj) = value.as_object() else {
            let what = match value {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return reject(
                ErrorKind::InvalidJson,
                format!("payload is {what}, not a JSON object"),
            );
        };
        for field in self.events.fields() {
            if !field.is_nullable() && obj.get(field.name()).is_none_or(|v| v.is_null()) {
                return reject(
                    ErrorKind::MissingField,
                    format!("required field `{}` is missing or null", field.name()),
                );
            }
        }
        let detail = err.to_string();
        let detail = detail.strip_prefix("Json error: ").unwrap_or(&detail);
        reject(ErrorKind::WrongType, detail.to_string())
    }
}

impl Decoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
        let mut rejects = Vec::new();
        let mut good = Vec::with_capacity(raw.len());
        for m in &raw.messages {
            match m.payload.as_deref() {
                None => rejects.push(RowReject {
                    offset: m.offset,
                    kind: ErrorKind::NullPayload,
                    message: "message has no payload (tombstone)".into(),
                }),
                Some(p) if p.iter().all(u8::is_ascii_whitespace) => rejects.push(RowReject {
                    offset: m.offset,
                    kind: ErrorKind::EmptyMessage,
                    message: "payload is empty".into(),
                }),
                Some(_) => good.push(m),
            }
        }
        let mut batches = Vec::new();
        self.decode_split(&good, &mut batches, &mut rejects);
        rejects.sort_by_key(|r| r.offset);
        let batch = match batches.len() {
            0 => None,
            1 => batches.pop(),
            _ => Some(
                concat_batches(&self.output, &batches)
                    .map_err(|e| WeirError::operator("decode", e))?,
            ),
        };
        Ok(Decoded { batch, rejects })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldConfig, FieldType};
    use datafusion::arrow::array::{Array, Float64Array, TimestampMillisecondArray};
    use proptest::prelude::*;
    use weir_runtime::testkit::json_message;

    fn schema() -> SchemaConfig {
        SchemaConfig {
            table: "events".into(),
            event_time: "ts".into(),
            partition_key: None,
            partition_key_check: Default::default(),
            fields: vec![
                FieldConfig {
                    name: "id".into(),
                    field_type: FieldType::String,
                    nullable: false,
                },
                FieldConfig {
                    name: "v".into(),
                    field_type: FieldType::Float64,
                    nullable: true,
                },
                FieldConfig {
                    name: "ts".into(),
                    field_type: FieldType::Timestamp,
                    nullable: false,
                },
            ],
        }
    }

    fn raw(payloads: &[Option<&str>]) -> RawBatch {
        let msgs = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut m = json_message(i as i64 + 10, "k", "");
                m.payload = p.map(|s| s.as_bytes().to_vec());
                m
            })
            .collect();
        RawBatch::new("t".into(), 0, msgs)
    }

    #[test]
    fn decodes_epoch_millis_and_rfc3339_event_times() {
        let mut d = JsonDecoder::new(&schema());
        let out = d
            .decode(&raw(&[
                Some(r#"{"id":"a","v":1.5,"ts":1000}"#),
                Some(r#"{"id":"b","ts":"1970-01-01T00:00:02Z"}"#),
            ]))
            .unwrap();
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.unwrap();
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1000, 2000]);
        let v = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(v.is_null(1));
        let off = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(off.values(), &[10, 11]);
    }

    #[test]
    fn each_poison_message_is_rejected_with_its_reason_and_the_rest_goes_on() {
        let mut d = JsonDecoder::new(&schema());
        let out = d
            .decode(&raw(&[
                Some(r#"{"id":"a","ts":1}"#),
                Some(r#"{"id":"b","ts":"#),
                Some(r#"{"id":"c"}"#),
                Some(r#"{"id":"d","v":"hot","ts":3}"#),
                None,
                Some(""),
                Some(r#"{"id":"e","ts":4}{"id":"f","ts":5}"#),
                Some("[1,2]"),
                Some(r#"{"id":"g","ts":7}"#),
            ]))
            .unwrap();
        let kinds: Vec<(i64, ErrorKind)> = out.rejects.iter().map(|r| (r.offset, r.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (11, ErrorKind::InvalidJson),
                (12, ErrorKind::MissingField),
                (13, ErrorKind::WrongType),
                (14, ErrorKind::NullPayload),
                (15, ErrorKind::EmptyMessage),
                (16, ErrorKind::InvalidJson),
                (17, ErrorKind::InvalidJson),
            ]
        );
        assert!(
            out.rejects[1].message.contains("`ts`"),
            "{}",
            out.rejects[1].message
        );
        assert!(
            out.rejects[2].message.contains("'v'"),
            "{}",
            out.rejects[2].message
        );
        let b = out.batch.unwrap();
        let off = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(off.values(), &[10, 18]);
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_accounts_for_every_message(payloads in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..40)) {
            let msgs: Vec<RawMessage> = payloads.into_iter().enumerate().map(|(i, p)| RawMessage { offset: i as i64, key: None, payload: p, timestamp_ms: None }).collect();
            let n = msgs.len();
            let mut d = JsonDecoder::new(&schema());
            let out = d.decode(&RawBatch::new("t".into(), 0, msgs)).unwrap();
            let rows = out.batch.map_or(0, |b| b.num_rows());
            prop_assert_eq!(rows + out.rejects.len(), n);
        }
    }
}
