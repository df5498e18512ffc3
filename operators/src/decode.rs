//! JSON messages to Arrow batches, losslessly or not at all.
//!
//! Each message is read once by our own JSON reader ([`json`]), straight into per-column
//! buffers: each key is matched to its declared field, and [`rules`] decides from the value as
//! written whether it fits the field's type exactly (ARCHITECTURE.md, "Decode rules"). A
//! message that does not fit (invalid JSON, a duplicated key, a missing required field, a
//! value of the wrong type or out of range, an implausible epoch time) is rolled back out of
//! the buffers and dead-lettered with the field and the value; the rest of the batch goes on.

mod json;
mod rules;

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use weir_runtime::batch::{RawBatch, RawMessage};
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Decoded, Decoder, RowReject, OFFSET_COLUMN};

use json::{Reader, Token};
use rules::{Fault, FieldRule, Scalar, Value};

use crate::schema::{FieldType, SchemaConfig};

/// Decodes JSON objects into the declared schema, plus the [`OFFSET_COLUMN`].
pub struct JsonDecoder {
    /// Declared fields + offset column: what this decoder emits.
    output: SchemaRef,
    columns: Vec<Column>,
    /// Rows in the buffers (every column holds exactly this many values).
    rows: usize,
    /// Per column, the stamp of the last message that set it.
    set_in: Vec<u32>,
    /// The current message's stamp.
    stamp: u32,
    /// Undeclared keys of the current message, to find duplicates among them too.
    unknown: UnknownKeys,
}

impl JsonDecoder {
    pub fn new(schema: &SchemaConfig) -> Self {
        let events = schema.arrow_schema();
        let mut fields: Vec<Arc<Field>> = events.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(OFFSET_COLUMN, DataType::Int64, false)));
        let columns: Vec<Column> = schema
            .fields
            .iter()
            .map(|f| Column::new(FieldRule::new(f)))
            .collect();
        Self {
            output: Arc::new(Schema::new(fields)),
            set_in: vec![0; columns.len()],
            columns,
            rows: 0,
            stamp: 0,
            unknown: UnknownKeys::default(),
        }
    }

    /// Append `payload` as one row, or leave the buffers as they were and say why not.
    fn decode_message(&mut self, payload: &[u8]) -> std::result::Result<(), Fault> {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.set_in.fill(0);
            self.stamp = 1;
        }
        self.unknown.clear();
        let mut row = Row {
            columns: &mut self.columns,
            set_in: &mut self.set_in,
            stamp: self.stamp,
            unknown: &mut self.unknown,
            next: 0,
            fault: None,
        };
        let outcome = match row.read(payload) {
            Err(e) => Err(Fault::new(
                ErrorKind::InvalidJson,
                format!("invalid JSON: {}", e.message),
            )),
            Ok(()) => match row.fault.take() {
                Some(fault) => Err(fault),
                None => self.fill_absent(),
            },
        };
        match outcome {
            Ok(()) => self.rows += 1,
            Err(_) => {
                for c in &mut self.columns {
                    c.truncate(self.rows);
                }
            }
        }
        outcome
    }

    /// Nulls for the nullable fields the message left out; a fault for a required one.
    fn fill_absent(&mut self) -> std::result::Result<(), Fault> {
        for (c, set) in self.columns.iter_mut().zip(&self.set_in) {
            if *set != self.stamp {
                if !c.rule.nullable {
                    return Err(c.rule.missing());
                }
                c.push(Value::Null);
            }
        }
        Ok(())
    }

    /// The buffered rows as a batch (with `offsets`), emptying the buffers.
    fn finish(&mut self, offsets: Vec<i64>) -> Result<Option<RecordBatch>> {
        debug_assert_eq!(offsets.len(), self.rows);
        if self.rows == 0 {
            return Ok(None);
        }
        let mut arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        arrays.push(Arc::new(Int64Array::from(offsets)));
        self.rows = 0;
        RecordBatch::try_new(self.output.clone(), arrays)
            .map(Some)
            .map_err(|e| WeirError::operator("decode", e))
    }
}

impl Decoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn decode(&mut self, raw: &RawBatch) -> Result<Decoded> {
        let mut rejects = Vec::new();
        let mut offsets = Vec::with_capacity(raw.len());
        for c in &mut self.columns {
            c.reserve(raw.len());
        }
        for m in &raw.messages {
            match m.payload.as_deref() {
                None => rejects.push(reject(
                    m,
                    ErrorKind::NullPayload,
                    "message has no payload (tombstone)".into(),
                )),
                Some(p) if p.iter().all(u8::is_ascii_whitespace) => rejects.push(reject(
                    m,
                    ErrorKind::EmptyMessage,
                    "payload is empty".into(),
                )),
                Some(p) => match self.decode_message(p) {
                    Ok(()) => offsets.push(m.offset),
                    Err(f) => rejects.push(reject(m, f.kind, f.message)),
                },
            }
        }
        let batch = self.finish(offsets)?;
        Ok(Decoded { batch, rejects })
    }
}

fn reject(m: &RawMessage, kind: ErrorKind, message: String) -> RowReject {
    RowReject {
        offset: m.offset,
        kind,
        message,
    }
}

/// One declared field's buffered values.
struct Column {
    rule: FieldRule,
    values: Values,
    /// Validity per row; only kept for nullable fields (a required one is never null).
    valid: Vec<bool>,
}

enum Values {
    /// `offsets` has one more entry than there are rows, starting at 0.
    Str {
        offsets: Vec<i32>,
        bytes: Vec<u8>,
    },
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    TimestampMs(Vec<i64>),
}

impl Column {
    fn new(rule: FieldRule) -> Self {
        let values = match rule.field_type {
            FieldType::String => Values::Str {
                offsets: vec![0],
                bytes: Vec::new(),
            },
            FieldType::Int32 => Values::I32(Vec::new()),
            FieldType::Int64 => Values::I64(Vec::new()),
            FieldType::Float32 => Values::F32(Vec::new()),
            FieldType::Float64 => Values::F64(Vec::new()),
            FieldType::Bool => Values::Bool(Vec::new()),
            FieldType::Timestamp => Values::TimestampMs(Vec::new()),
        };
        Self {
            rule,
            values,
            valid: Vec::new(),
        }
    }

    fn reserve(&mut self, rows: usize) {
        match &mut self.values {
            Values::Str { offsets, .. } => offsets.reserve(rows),
            Values::I32(v) => v.reserve(rows),
            Values::I64(v) | Values::TimestampMs(v) => v.reserve(rows),
            Values::F32(v) => v.reserve(rows),
            Values::F64(v) => v.reserve(rows),
            Values::Bool(v) => v.reserve(rows),
        }
    }

    /// Append `value`, which [`FieldRule::convert`] made for this column.
    fn push(&mut self, value: Value<'_>) -> bool {
        if self.rule.nullable {
            self.valid.push(value != Value::Null);
        }
        match (&mut self.values, value) {
            (Values::Str { offsets, bytes }, Value::Str(s)) => {
                bytes.extend_from_slice(s.as_bytes());
                match i32::try_from(bytes.len()) {
                    Ok(end) => offsets.push(end),
                    Err(_) => return false,
                }
            }
            (Values::Str { offsets, .. }, Value::Null) => {
                let end = *offsets.last().expect("invariant: offsets start with 0");
                offsets.push(end)
            }
            (Values::I32(v), Value::I32(x)) => v.push(x),
            (Values::I64(v), Value::I64(x)) => v.push(x),
            (Values::F32(v), Value::F32(x)) => v.push(x),
            (Values::F64(v), Value::F64(x)) => v.push(x),
            (Values::Bool(v), Value::Bool(x)) => v.push(x),
            (Values::TimestampMs(v), Value::TimestampMs(x)) => v.push(x),
            (Values::I32(v), Value::Null) => v.push(0),
            (Values::I64(v) | Values::TimestampMs(v), Value::Null) => v.push(0),
            (Values::F32(v), Value::Null) => v.push(0.0),
            (Values::F64(v), Value::Null) => v.push(0.0),
            (Values::Bool(v), Value::Null) => v.push(false),
            _ => unreachable!("invariant: FieldRule::convert yields its column's value type"),
        }
        true
    }

    /// Back to the first `rows` rows.
    fn truncate(&mut self, rows: usize) {
        self.valid.truncate(rows);
        match &mut self.values {
            Values::Str { offsets, bytes } => {
                offsets.truncate(rows + 1);
                bytes.truncate(offsets[rows] as usize);
            }
            Values::I32(v) => v.truncate(rows),
            Values::I64(v) | Values::TimestampMs(v) => v.truncate(rows),
            Values::F32(v) => v.truncate(rows),
            Values::F64(v) => v.truncate(rows),
            Values::Bool(v) => v.truncate(rows),
        }
    }

    /// The buffered values as an array, emptying the buffers.
    fn finish(&mut self) -> ArrayRef {
        let valid = std::mem::take(&mut self.valid);
        let nulls = (valid.iter().any(|v| !v)).then(|| NullBuffer::from(valid));
        match &mut self.values {
            Values::Str { offsets, bytes } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                let bytes = std::mem::take(bytes);
                Arc::new(
                    StringArray::try_new(
                        OffsetBuffer::new(ScalarBuffer::from(offsets)),
                        Buffer::from_vec(bytes),
                        nulls,
                    )
                    .expect("invariant: offsets grow from 0 over the bytes of whole &str values"),
                )
            }
            Values::I32(v) => Arc::new(Int32Array::new(std::mem::take(v).into(), nulls)),
            Values::I64(v) => Arc::new(Int64Array::new(std::mem::take(v).into(), nulls)),
            Values::F32(v) => Arc::new(Float32Array::new(std::mem::take(v).into(), nulls)),
            Values::F64(v) => Arc::new(Float64Array::new(std::mem::take(v).into(), nulls)),
            Values::Bool(v) => Arc::new(BooleanArray::new(
                BooleanBuffer::from_iter(std::mem::take(v)),
                nulls,
            )),
            Values::TimestampMs(v) => Arc::new(TimestampMillisecondArray::new(
                std::mem::take(v).into(),
                nulls,
            )),
        }
    }
}

/// The undeclared keys of one message, in one buffer.
#[derive(Default)]
struct UnknownKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl UnknownKeys {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Record `key`; false when the message had it already.
    fn insert(&mut self, key: &str) -> bool {
        let mut start = 0;
        for &end in &self.ends {
            if &self.bytes[start..end] == key.as_bytes() {
                return false;
            }
            start = end;
        }
        self.bytes.extend_from_slice(key.as_bytes());
        self.ends.push(self.bytes.len());
        true
    }
}

/// A token as the decode rules see it.
fn scalar<'t>(token: &'t Token<'_>) -> Scalar<'t> {
    match token {
        Token::Null => Scalar::Null,
        Token::Bool(b) => Scalar::Bool(*b),
        Token::Number(text) => Scalar::Number(text),
        Token::Str(s) => Scalar::Str(s),
        Token::Object => Scalar::Object,
        Token::Array => Scalar::Array,
    }
}

/// The decoding state of one message.
struct Row<'a> {
    columns: &'a mut [Column],
    set_in: &'a mut [u32],
    stamp: u32,
    unknown: &'a mut UnknownKeys,
    /// The column the next key most likely names (events usually keep their key order).
    next: usize,
    /// The first reason this message does not fit; parsing goes on to the end regardless,
    /// so invalid JSON is reported as such wherever it is.
    fault: Option<Fault>,
}

impl Row<'_> {
    /// Read `payload`, one JSON object, into the columns. `Err` when it is not JSON; when it
    /// is JSON but does not fit, [`Row::fault`] says why.
    fn read(&mut self, payload: &[u8]) -> std::result::Result<(), json::SyntaxError> {
        let mut r = Reader::new(payload)?;
        let what = match r.first() {
            Some(b'{') => None,
            Some(b'[') => Some("an array"),
            Some(b'"') => Some("a string"),
            Some(b't' | b'f') => Some("a boolean"),
            Some(b'n') => Some("null"),
            Some(b'-' | b'0'..=b'9') => Some("a number"),
            _ => None,
        };
        if let Some(what) = what {
            r.value()?;
            r.end()?;
            self.fault(Fault::new(
                ErrorKind::InvalidJson,
                format!("payload is {what}, not a JSON object"),
            ));
            return Ok(());
        }
        if !r.begin_object()? {
            loop {
                let key = r.key()?;
                match self.key(&key) {
                    Some(i) => {
                        let value = r.value()?;
                        self.put(i, scalar(&value));
                    }
                    None => {
                        r.value()?;
                    }
                }
                if !r.next_member()? {
                    break;
                }
            }
        }
        r.end()
    }

    /// The column `key` names when it is declared and first seen in this message; a
    /// repeated key (declared or not) faults the message.
    fn key(&mut self, key: &str) -> Option<usize> {
        let first = match self.column_of(key) {
            Some(i) => {
                self.next = i + 1;
                let first = self.set_in[i] != self.stamp;
                self.set_in[i] = self.stamp;
                if first {
                    return Some(i);
                }
                false
            }
            None => self.unknown.insert(key),
        };
        if !first {
            self.fault(Fault::new(
                ErrorKind::InvalidJson,
                format!("duplicate key `{key}` in the object"),
            ));
        }
        None
    }

    fn fault(&mut self, f: Fault) {
        self.fault.get_or_insert(f);
    }

    /// The column named `key`, if declared.
    fn column_of(&self, key: &str) -> Option<usize> {
        let n = self.columns.len();
        let hint = self.next;
        (0..n)
            .map(|i| (hint + i) % n)
            .find(|&i| self.columns[i].rule.name == key)
    }

    /// `value` into column `i`, unless the message is already faulty.
    fn put(&mut self, i: usize, value: Scalar<'_>) {
        if self.fault.is_some() {
            return;
        }
        let column = &mut self.columns[i];
        match column.rule.convert(value) {
            Ok(v) => {
                if !column.push(v) {
                    let f = Fault::new(
                        ErrorKind::WrongType,
                        format!(
                            "field `{}`: the batch's strings would pass 2 GiB",
                            column.rule.name
                        ),
                    );
                    self.fault(f);
                }
            }
            Err(f) => self.fault(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldConfig, FieldType};
    use datafusion::arrow::array::{Array, Float64Array, TimestampMillisecondArray};
    use proptest::prelude::*;
    use weir_runtime::testkit::json_message;

    /// 2026-01-05T14:40:00Z in epoch milliseconds.
    const T: i64 = 1_767_624_000_000;

    fn schema() -> SchemaConfig {
        SchemaConfig {
            table: "events".into(),
            event_time: "ts".into(),
            partition_key: None,
            partition_key_check: Default::default(),
            fields: vec![
                FieldConfig::new("id", FieldType::String),
                FieldConfig {
                    nullable: true,
                    ..FieldConfig::new("v", FieldType::Float64)
                },
                FieldConfig::new("ts", FieldType::Timestamp),
            ],
        }
    }

    /// A schema with one nullable field of each kind, written as a pipeline file's
    /// `[schema]` would be (JSON here), with `extra` keys merged into field `name`.
    fn typed(name: &str, extra: &str) -> SchemaConfig {
        let fields = [
            ("id", "string", false),
            ("qty", "int64", true),
            ("n", "int32", true),
            ("price", "float64", true),
            ("ratio", "float32", true),
            ("ok", "bool", true),
            ("ts", "timestamp", false),
        ];
        let fields: Vec<String> = fields
            .iter()
            .map(|(f, t, nullable)| {
                let more = if *f == name {
                    format!(",{extra}")
                } else {
                    String::new()
                };
                format!(r#"{{"name":"{f}","type":"{t}","nullable":{nullable}{more}}}"#)
            })
            .collect();
        let text = format!(r#"{{"event_time":"ts","fields":[{}]}}"#, fields.join(","));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("schema {text}: {e}"))
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

    /// One event `{"id":"a", <field>, "ts":T}` through a decoder of `schema`.
    fn one(schema: &SchemaConfig, field: &str) -> Decoded {
        let payload = format!(r#"{{"id":"a",{field},"ts":{T}}}"#);
        JsonDecoder::new(schema)
            .decode(&raw(&[Some(&payload)]))
            .unwrap()
    }

    /// The single reject of `out`: its kind and message.
    fn rejected(out: &Decoded) -> (ErrorKind, String) {
        assert!(out.batch.is_none(), "accepted: {:?}", out.batch);
        assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
        (out.rejects[0].kind, out.rejects[0].message.clone())
    }

    /// Column `name` of the single accepted row.
    fn accepted(out: &Decoded, name: &str) -> ArrayRef {
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.as_ref().expect("a row");
        assert_eq!(b.num_rows(), 1);
        b.column_by_name(name).expect("column").clone()
    }

    fn i64_of(a: &ArrayRef) -> i64 {
        a.as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64")
            .value(0)
    }

    fn ts_of(a: &ArrayRef) -> i64 {
        a.as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("timestamp")
            .value(0)
    }

    /// `message` names the field and shows the value.
    fn names(message: &str, field: &str, value: &str) {
        assert!(message.contains(&format!("`{field}`")), "{message}");
        assert!(message.contains(value), "{value} not in: {message}");
    }

    #[test]
    fn decodes_epoch_millis_and_rfc3339_event_times() {
        let mut d = JsonDecoder::new(&schema());
        let out = d
            .decode(&raw(&[
                Some(r#"{"id":"a","v":1.5,"ts":1767624000000}"#),
                Some(r#"{"id":"b","ts":"2026-01-05T14:40:01Z"}"#),
            ]))
            .unwrap();
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.unwrap();
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[T, T + 1000]);
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
                Some(r#"{"id":"a","ts":1767624000000}"#),
                Some(r#"{"id":"b","ts":"#),
                Some(r#"{"id":"c"}"#),
                Some(r#"{"id":"d","v":"hot","ts":1767624000000}"#),
                None,
                Some(""),
                Some(r#"{"id":"e","ts":1767624000000}{"id":"f","ts":1767624000000}"#),
                Some("[1,2]"),
                Some(r#"{"id":"g","ts":1767624000000}"#),
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
        names(&out.rejects[2].message, "v", "\"hot\"");
        let b = out.batch.unwrap();
        let off = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(off.values(), &[10, 18]);
    }

    #[test]
    fn a_number_with_a_fraction_into_an_integer_field_is_wrong_type() {
        let (kind, message) = rejected(&one(&typed("", ""), r#""qty":3.7"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "qty", "3.7");
    }

    #[test]
    fn a_whole_number_written_with_a_fraction_or_exponent_fits_an_integer_field() {
        assert_eq!(
            i64_of(&accepted(&one(&typed("", ""), r#""qty":3.0"#), "qty")),
            3
        );
        assert_eq!(
            i64_of(&accepted(&one(&typed("", ""), r#""qty":1e3"#), "qty")),
            1000
        );
    }

    #[test]
    fn an_integer_field_reads_the_number_as_written_not_as_a_float() {
        // 2^53 + 1 is no float64: read through one it would silently become 2^53.
        let out = one(&typed("", ""), r#""qty":9007199254740993.0"#);
        assert_eq!(i64_of(&accepted(&out, "qty")), 9_007_199_254_740_993);
        // As a float this is 3.0; as written it is not a whole number.
        let (kind, message) = rejected(&one(&typed("", ""), r#""qty":3.0000000000000001"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "qty", "3.0000000000000001");
    }

    #[test]
    fn an_int32_out_of_range_is_wrong_type() {
        let (kind, message) = rejected(&one(&typed("", ""), r#""n":3000000000"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "n", "3000000000");
    }

    #[test]
    fn an_int64_out_of_range_is_wrong_type() {
        let (kind, message) = rejected(&one(&typed("", ""), r#""qty":9223372036854775808"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "qty", "9223372036854775808");
    }

    #[test]
    fn a_numeric_string_is_wrong_type_without_coerce() {
        let (kind, message) = rejected(&one(&typed("", ""), r#""price":"12.5""#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "price", "\"12.5\"");
        assert!(message.contains("coerce = true"), "{message}");
    }

    #[test]
    fn a_numeric_string_is_read_where_the_field_says_coerce() {
        let s = typed("price", r#""coerce":true"#);
        let price = accepted(&one(&s, r#""price":"12.5""#), "price");
        let price = price.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(price.value(0), 12.5);
        // The number inside the string follows the same rules as an unquoted one.
        let s = typed("qty", r#""coerce":true"#);
        assert_eq!(i64_of(&accepted(&one(&s, r#""qty":"12""#), "qty")), 12);
        let (kind, message) = rejected(&one(&s, r#""qty":"3.7""#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "qty", "\"3.7\"");
        for not_a_number in [r#"" 12""#, r#""12 ""#, r#""0x10""#, r#""""#, r#""NaN""#] {
            let (kind, _) = rejected(&one(&s, &format!(r#""qty":{not_a_number}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{not_a_number}");
        }
    }

    #[test]
    fn an_integer_too_large_for_a_float_field_to_hold_exactly_is_wrong_type() {
        let (kind, message) = rejected(&one(&typed("", ""), r#""price":9007199254740993"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "price", "9007199254740993");
        let (kind, message) = rejected(&one(&typed("", ""), r#""ratio":16777217"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "ratio", "16777217");
        let (kind, message) = rejected(&one(&typed("", ""), r#""ratio":1e300"#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "ratio", "1e300");
    }

    #[test]
    fn a_bool_field_takes_only_true_or_false() {
        for (value, shown) in [("1", "1"), ("0", "0"), (r#""true""#, "\"true\"")] {
            let (kind, message) = rejected(&one(&typed("", ""), &format!(r#""ok":{value}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{value}");
            names(&message, "ok", shown);
        }
        let s = typed("ok", r#""coerce":true"#);
        let ok = accepted(&one(&s, r#""ok":"true""#), "ok");
        assert!(ok.as_any().downcast_ref::<BooleanArray>().unwrap().value(0));
        let (kind, _) = rejected(&one(&s, r#""ok":1"#));
        assert_eq!(kind, ErrorKind::WrongType);
    }

    #[test]
    fn an_object_or_an_array_where_a_scalar_is_declared_is_wrong_type() {
        for (field, value, shown) in [
            ("qty", r#"{"a":1}"#, "an object"),
            ("price", "[1.5]", "an array"),
            ("id", r#"{"x":"a"}"#, "an object"),
        ] {
            let payload = format!(r#"{{"id":"a","{field}":{value},"ts":{T}}}"#);
            let payload = payload.replacen(r#""id":"a","id""#, r#""id""#, 1);
            let out = JsonDecoder::new(&typed("", ""))
                .decode(&raw(&[Some(&payload)]))
                .unwrap();
            let (kind, message) = rejected(&out);
            assert_eq!(kind, ErrorKind::WrongType, "{payload}");
            names(&message, field, shown);
        }
    }

    #[test]
    fn null_for_a_required_field_is_missing_field() {
        let out = JsonDecoder::new(&typed("", ""))
            .decode(&raw(&[Some(&format!(r#"{{"id":null,"ts":{T}}}"#))]))
            .unwrap();
        let (kind, message) = rejected(&out);
        assert_eq!(kind, ErrorKind::MissingField);
        assert!(message.contains("`id`"), "{message}");
    }

    #[test]
    fn a_duplicate_key_is_dead_lettered() {
        let s = typed("", "");
        for payload in [
            format!(r#"{{"id":"a","qty":1,"qty":2,"ts":{T}}}"#),
            format!(r#"{{"id":"a","extra":1,"ts":{T},"extra":2}}"#),
        ] {
            let out = JsonDecoder::new(&s)
                .decode(&raw(&[Some(&payload)]))
                .unwrap();
            let (kind, message) = rejected(&out);
            assert_eq!(kind, ErrorKind::InvalidJson, "{payload}");
            assert!(message.contains("duplicate key"), "{message}");
        }
    }

    #[test]
    fn epoch_seconds_in_a_millisecond_field_are_dead_lettered_with_the_unit_they_fit() {
        // The default unit is milliseconds: 1767624000 would be 1970-01-21.
        let out = JsonDecoder::new(&typed("", ""))
            .decode(&raw(&[Some(r#"{"id":"a","ts":1767624000}"#)]))
            .unwrap();
        let (kind, message) = rejected(&out);
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "ts", "1767624000");
        assert!(message.contains("1970-01-21"), "{message}");
        assert!(message.contains(r#"unit = "s""#), "{message}");
    }

    #[test]
    fn each_unit_reads_its_epoch_numbers_as_the_same_instant() {
        for (unit, value) in [
            ("s", "1767624000"),
            ("s", "1767624000.0009"),
            ("ms", "1767624000000"),
            ("us", "1767624000000999"),
            ("ns", "1767624000000999999"),
        ] {
            let s = typed("ts", &format!(r#""unit":"{unit}""#));
            let out = JsonDecoder::new(&s)
                .decode(&raw(&[Some(&format!(r#"{{"id":"a","ts":{value}}}"#))]))
                .unwrap();
            assert_eq!(ts_of(&accepted(&out, "ts")), T, "{value} {unit}");
        }
    }

    #[test]
    fn an_epoch_number_outside_its_units_plausible_range_is_dead_lettered() {
        for (unit, value) in [
            ("ms", "0"),
            ("ms", "-1000"),
            ("ms", "99999999999"),          // 1973-03-03 minus 1 ms
            ("ms", "10000000000000"),       // 2286-11-20
            ("ms", "1767624000000000"),     // microseconds
            ("s", "1767624000000"),         // milliseconds
            ("us", "1767624000000"),        // milliseconds
            ("ns", "1767624000000000"),     // microseconds
            ("ns", "18446744073709551615"), // u64::MAX
        ] {
            let s = typed("ts", &format!(r#""unit":"{unit}""#));
            let out = JsonDecoder::new(&s)
                .decode(&raw(&[Some(&format!(r#"{{"id":"a","ts":{value}}}"#))]))
                .unwrap();
            let (kind, message) = rejected(&out);
            assert_eq!(kind, ErrorKind::WrongType, "{value} {unit}");
            names(&message, "ts", value);
            assert!(message.contains("1973-03-03"), "{message}");
        }
    }

    #[test]
    fn any_epoch_reads_every_epoch_number_of_the_unit() {
        let s = typed("ts", r#""any_epoch":true"#);
        let out = JsonDecoder::new(&s)
            .decode(&raw(&[Some(r#"{"id":"a","ts":-1500}"#)]))
            .unwrap();
        assert_eq!(ts_of(&accepted(&out, "ts")), -1500);
    }

    #[test]
    fn an_rfc3339_string_is_read_whatever_the_unit() {
        let s = typed("ts", r#""unit":"s""#);
        let out = JsonDecoder::new(&s)
            .decode(&raw(&[Some(
                r#"{"id":"a","ts":"2026-01-05T15:40:00+01:00"}"#,
            )]))
            .unwrap();
        assert_eq!(ts_of(&accepted(&out, "ts")), T);
    }

    #[test]
    fn an_epoch_number_written_as_a_string_needs_coerce() {
        let s = typed("ts", r#""unit":"s""#);
        let out = JsonDecoder::new(&s)
            .decode(&raw(&[Some(r#"{"id":"a","ts":"1767624000"}"#)]))
            .unwrap();
        let (kind, message) = rejected(&out);
        assert_eq!(kind, ErrorKind::WrongType);
        assert!(message.contains("coerce = true"), "{message}");
        let s = typed("ts", r#""unit":"s","coerce":true"#);
        let out = JsonDecoder::new(&s)
            .decode(&raw(&[Some(r#"{"id":"a","ts":"1767624000"}"#)]))
            .unwrap();
        assert_eq!(ts_of(&accepted(&out, "ts")), T);
    }

    #[test]
    fn a_rejected_message_leaves_no_trace_in_the_rows_around_it() {
        // The bad value comes after good ones of the same message: they must not stay behind.
        let mut d = JsonDecoder::new(&typed("", ""));
        let out = d
            .decode(&raw(&[
                Some(&format!(r#"{{"id":"a","qty":1,"ts":{T}}}"#)),
                Some(&format!(r#"{{"id":"bad","price":2.5,"qty":3.7,"ts":{T}}}"#)),
                Some(&format!(r#"{{"ts":{T},"qty":3,"id":"c"}}"#)),
            ]))
            .unwrap();
        assert_eq!(out.rejects.len(), 1);
        let b = out.batch.unwrap();
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some("a"), Some("c")]);
        let price = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(price.null_count(), 2);
        let qty = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(qty.values(), &[1, 3]);
    }

    /// A valid event of [`typed`]'s schema as JSON fields: what the mutations start from.
    fn valid_event(id: u32, qty: i64, price: f64, ok: bool, ts: i64) -> Vec<(String, String)> {
        vec![
            ("id".into(), format!("\"e{id}\"")),
            ("qty".into(), qty.to_string()),
            ("n".into(), (qty % 1000).to_string()),
            ("price".into(), format!("{price:?}")),
            ("ok".into(), ok.to_string()),
            ("ts".into(), ts.to_string()),
        ]
    }

    /// What a mutation does to a valid event; each one's outcome is known.
    #[derive(Debug, Clone)]
    enum Mutation {
        /// Key order shuffled by rotation, white space added: still the same event.
        Reorder(usize),
        /// An undeclared field, possibly nested: ignored.
        Extra(&'static str),
        /// Field `.0` set to the `.1`-th value of that field's list of values that do not fit.
        Replace(usize, prop::sample::Index),
        /// A field repeated.
        Duplicate(usize),
        /// A required field dropped.
        DropRequired(bool),
        /// The payload cut short.
        Truncate(usize),
    }

    /// Per field of [`valid_event`], JSON values that do not fit it.
    const MISFITS: [&[&str]; 6] = [
        &["12", "true", "{}", "[\"a\"]"],
        &[
            "3.5",
            "\"12\"",
            "true",
            "{}",
            "[1]",
            "1e400",
            "-0.5",
            "99999999999999999999",
        ],
        &["3000000000", "-2147483649", "3.5", "\"1\"", "false", "[]"],
        &["\"12.5\"", "true", "{}", "[1.5]", "9007199254740993"],
        &["1", "0", "\"true\"", "{}", "[true]"],
        &[
            "1767624000",
            "0",
            "-5",
            "3.5",
            "\"12\"",
            "\"x\"",
            "true",
            "1767624000000000",
        ],
    ];

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (0usize..6).prop_map(Mutation::Reorder),
            prop_oneof![Just("1"), Just("{\"a\":[1,{\"b\":null}]}"), Just("\"s\"")]
                .prop_map(Mutation::Extra),
            (0usize..6, any::<prop::sample::Index>()).prop_map(|(i, w)| Mutation::Replace(i, w)),
            (0usize..6).prop_map(Mutation::Duplicate),
            any::<bool>().prop_map(Mutation::DropRequired),
            (1usize..40).prop_map(Mutation::Truncate),
        ]
    }

    /// The mutated payload and whether it must be accepted (with the event's own values).
    fn apply(mut fields: Vec<(String, String)>, m: &Mutation) -> (String, bool) {
        let join = |f: &[(String, String)], sep: &str| {
            let inner: Vec<String> = f.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(sep))
        };
        match m {
            Mutation::Reorder(r) => {
                fields.rotate_left(*r);
                (join(&fields, " ,\n "), true)
            }
            Mutation::Extra(v) => {
                fields.insert(2, ("extra".into(), v.to_string()));
                (join(&fields, ","), true)
            }
            Mutation::Replace(i, w) => {
                fields[*i].1 = w.get(MISFITS[*i]).to_string();
                (join(&fields, ","), false)
            }
            Mutation::Duplicate(i) => {
                let f = fields[*i].clone();
                fields.push(f);
                (join(&fields, ","), false)
            }
            Mutation::DropRequired(first) => {
                let name = if *first { "id" } else { "ts" };
                fields.retain(|(k, _)| k != name);
                (join(&fields, ","), false)
            }
            Mutation::Truncate(n) => {
                let full = join(&fields, ",");
                let cut = full.len().saturating_sub(*n).max(1);
                (full[..cut].to_string(), false)
            }
        }
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

        #[test]
        fn a_mutated_valid_event_is_accepted_exactly_or_dead_lettered(
            events in proptest::collection::vec(
                (0u32..1000, -1_000_000i64..1_000_000, -1e6f64..1e6, any::<bool>(), 0i64..1_000_000_000, mutation()),
                1..30,
            )
        ) {
            let mut payloads = Vec::new();
            let mut expect = Vec::new();
            for (id, qty, price, ok, dt, m) in &events {
                let (p, accept) = apply(valid_event(*id, *qty, *price, *ok, T + dt), m);
                payloads.push(p);
                expect.push(accept.then_some((*id, *qty, *price, *ok, T + dt)));
            }
            let msgs: Vec<Option<&str>> = payloads.iter().map(|p| Some(p.as_str())).collect();
            let mut d = JsonDecoder::new(&typed("", ""));
            let out = d.decode(&raw(&msgs)).unwrap();
            let rejected: Vec<i64> = out.rejects.iter().map(|r| r.offset).collect();
            let want_rejected: Vec<i64> = expect.iter().enumerate().filter(|(_, e)| e.is_none()).map(|(i, _)| i as i64 + 10).collect();
            prop_assert_eq!(&rejected, &want_rejected, "{:?}", out.rejects);
            let accepted: Vec<_> = expect.iter().flatten().collect();
            let rows = out.batch.as_ref().map_or(0, |b| b.num_rows());
            prop_assert_eq!(rows, accepted.len());
            if let Some(b) = &out.batch {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let qty = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                let price = b.column(3).as_any().downcast_ref::<Float64Array>().unwrap();
                let ok = b.column(5).as_any().downcast_ref::<BooleanArray>().unwrap();
                let ts = b.column(6).as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
                for (r, (id, q, p, o, t)) in accepted.iter().enumerate() {
                    prop_assert_eq!(ids.value(r), format!("e{id}"));
                    prop_assert_eq!(qty.value(r), *q);
                    prop_assert_eq!(price.value(r), *p);
                    prop_assert_eq!(ok.value(r), *o);
                    prop_assert_eq!(ts.value(r), *t);
                }
            }
        }
    }
}
