//! JSON messages to Arrow batches, losslessly or not at all.
//!
//! Each message is read once by our own JSON reader ([`json`]), straight into per-column
//! buffers: each key is matched to its declared field, and [`rules`] decides from the value as
//! written whether it fits the field's type exactly (ARCHITECTURE.md, "Decode rules"). A
//! message that does not fit (invalid JSON, a duplicated key, a missing required field, a
//! value of the wrong type or out of range, an implausible epoch time) is rolled back out of
//! the buffers and dead-lettered with the field and the value; the rest of the batch goes on.

mod json;
mod nested;
mod rules;
mod tree;

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, StringArray, TimestampMillisecondArray,
    UInt16Array, UInt32Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use weir_runtime::batch::{RawBatch, RawMessage};
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Decoded, Decoder, RowReject, OFFSET_COLUMN};

use json::{Reader, Token};
use rules::{Fault, FieldRule, Scalar, Value};
use tree::{Node, NodeKind};

use crate::schema::{FieldType, MetadataSource, SchemaConfig};

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
    /// Where the declared fields are in an event.
    nodes: Vec<Node>,
    /// The metadata columns (they follow the fields' columns), with what each holds and,
    /// for a header, its name.
    metadata: Vec<(MetadataSource, String)>,
}

impl JsonDecoder {
    pub fn new(schema: &SchemaConfig) -> Self {
        let events = schema.arrow_schema();
        let mut fields: Vec<Arc<Field>> = events.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(OFFSET_COLUMN, DataType::Int64, false)));
        let columns: Vec<Column> = schema.columns().iter().map(Column::of).collect();
        let headers = schema.metadata.header_names();
        let metadata = schema
            .metadata
            .columns()
            .into_iter()
            .map(|(_, source, _)| {
                let header = match source {
                    MetadataSource::Header(h) => headers[h].clone(),
                    _ => String::new(),
                };
                (source, header)
            })
            .collect();
        Self {
            output: Arc::new(Schema::new(fields)),
            set_in: vec![0; columns.len()],
            columns,
            rows: 0,
            stamp: 0,
            nodes: tree::build(&schema.fields),
            metadata,
        }
    }

    /// Append `payload` as one row, or leave the buffers as they were and say why not.
    fn decode_message(
        &mut self,
        payload: &[u8],
        m: &RawMessage,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(), Fault> {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.set_in.fill(0);
            for n in &mut self.nodes {
                n.stamp = 0;
            }
            self.stamp = 1;
        }
        let mut row = Row {
            columns: &mut self.columns,
            set_in: &mut self.set_in,
            nodes: &mut self.nodes,
            stamp: self.stamp,
            fault: None,
        };
        let outcome = match row.read(payload) {
            Err(e) => Err(Fault::new(
                ErrorKind::InvalidJson,
                format!("invalid JSON: {}", e.message),
            )),
            Ok(()) => match row.fault.take() {
                Some(fault) => Err(fault),
                None => self
                    .fill_absent()
                    .and_then(|()| self.put_metadata(m, topic, partition)),
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
        let fields = self.columns.len() - self.metadata.len();
        for (c, set) in self.columns[..fields].iter_mut().zip(&self.set_in) {
            if *set != self.stamp {
                if !c.rule.nullable {
                    return Err(c.rule.missing());
                }
                c.push(Value::Null)?;
            }
        }
        Ok(())
    }

    /// The metadata columns of message `m` (after the fields' columns).
    fn put_metadata(
        &mut self,
        m: &RawMessage,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(), Fault> {
        let first = self.columns.len() - self.metadata.len();
        for (i, (source, header)) in self.metadata.iter().enumerate() {
            let column = &mut self.columns[first + i];
            let not_utf8 = |what: String| {
                Fault::new(
                    ErrorKind::WrongType,
                    format!(
                        "metadata column `{}`: {what} is not UTF-8",
                        column.rule.name
                    ),
                )
            };
            let value = match source {
                MetadataSource::Key => match m.key.as_deref() {
                    None => Value::Null,
                    Some(k) => Value::Str(
                        std::str::from_utf8(k).map_err(|_| not_utf8("the message key".into()))?,
                    ),
                },
                MetadataSource::Timestamp => match m.timestamp_ms {
                    Some(t) => Value::TimestampMs(t),
                    None if column.rule.nullable => Value::Null,
                    None => {
                        return Err(Fault::new(
                            ErrorKind::MissingField,
                            format!(
                                "the message has no timestamp, and `{}` (its timestamp) is the \
                                 event time",
                                column.rule.name
                            ),
                        ))
                    }
                },
                MetadataSource::Topic => Value::Str(topic),
                MetadataSource::Partition => Value::I32(partition),
                MetadataSource::Offset => Value::I64(m.offset),
                MetadataSource::Header(h) => match m.headers.get(*h).and_then(|v| v.as_deref()) {
                    None => Value::Null,
                    Some(v) if column.rule.field_type == FieldType::Binary => Value::Bytes(v),
                    Some(v) => Value::Str(
                        std::str::from_utf8(v)
                            .map_err(|_| not_utf8(format!("header `{header}`")))?,
                    ),
                },
            };
            column.push(value)?;
        }
        Ok(())
    }

    /// The buffered rows as a batch (with `offsets`), emptying the buffers.
    fn finish(&mut self, offsets: Vec<i64>) -> Result<Option<RecordBatch>> {
        debug_assert_eq!(offsets.len(), self.rows);
        if self.rows == 0 {
            return Ok(None);
        }
        let arrays: std::result::Result<Vec<ArrayRef>, _> =
            self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        let mut arrays = arrays.map_err(|e| WeirError::operator("decode", e))?;
        arrays.push(Arc::new(Int64Array::from(offsets)));
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
                Some(p) => match self.decode_message(p, m, &raw.topic, raw.partition) {
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
    /// Like `Str`, for decoded base64.
    Bin {
        offsets: Vec<i32>,
        bytes: Vec<u8>,
    },
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    /// Unscaled values, with the precision and scale.
    Decimal(Vec<i128>, u8, i8),
    /// Days since the epoch.
    Date(Vec<i32>),
    TimestampMs(Vec<i64>),
    /// A struct, list or map (with its own validity).
    Nested(Box<nested::Builder>),
}

/// `$body` with `$v` bound to the value vector of every fixed-width variant, `$bytes` to
/// the offsets of the variable-width ones.
macro_rules! each_values {
    ($values:expr, $v:ident => $body:expr, $offsets:ident, $bytes:ident => $var:expr) => {
        match $values {
            Values::Str {
                offsets: $offsets,
                bytes: $bytes,
            }
            | Values::Bin {
                offsets: $offsets,
                bytes: $bytes,
            } => $var,
            Values::I8($v) => $body,
            Values::I16($v) => $body,
            Values::I32($v) | Values::Date($v) => $body,
            Values::I64($v) | Values::TimestampMs($v) => $body,
            Values::U8($v) => $body,
            Values::U16($v) => $body,
            Values::U32($v) => $body,
            Values::U64($v) => $body,
            Values::F32($v) => $body,
            Values::F64($v) => $body,
            Values::Bool($v) => $body,
            Values::Decimal($v, _, _) => $body,
            Values::Nested(_) => unreachable!("invariant: nested columns are handled first"),
        }
    };
}

/// One variable-width value's end, or false when the batch's bytes would pass 2 GiB.
fn push_end(offsets: &mut Vec<i32>, bytes: &[u8]) -> bool {
    match i32::try_from(bytes.len()) {
        Ok(end) => {
            offsets.push(end);
            true
        }
        Err(_) => false,
    }
}

impl Column {
    /// The column of field `f`.
    fn of(f: &crate::schema::FieldConfig) -> Self {
        if f.is_nested() {
            return Self {
                rule: FieldRule::new(f),
                values: Values::Nested(Box::new(nested::Builder::new(f))),
                valid: Vec::new(),
            };
        }
        Self::new(FieldRule::new(f))
    }

    /// The values buffered.
    fn len(&self) -> usize {
        match &self.values {
            Values::Nested(b) => b.len(),
            values => each_values!(values, v => v.len(), offsets, _b => offsets.len() - 1),
        }
    }

    fn new(rule: FieldRule) -> Self {
        let values = match rule.field_type {
            FieldType::String => Values::Str {
                offsets: vec![0],
                bytes: Vec::new(),
            },
            FieldType::Binary => Values::Bin {
                offsets: vec![0],
                bytes: Vec::new(),
            },
            FieldType::Int8 => Values::I8(Vec::new()),
            FieldType::Int16 => Values::I16(Vec::new()),
            FieldType::Int32 => Values::I32(Vec::new()),
            FieldType::Int64 => Values::I64(Vec::new()),
            FieldType::UInt8 => Values::U8(Vec::new()),
            FieldType::UInt16 => Values::U16(Vec::new()),
            FieldType::UInt32 => Values::U32(Vec::new()),
            FieldType::UInt64 => Values::U64(Vec::new()),
            FieldType::Float32 => Values::F32(Vec::new()),
            FieldType::Float64 => Values::F64(Vec::new()),
            FieldType::Bool => Values::Bool(Vec::new()),
            FieldType::Decimal { precision, scale } => {
                Values::Decimal(Vec::new(), precision, scale)
            }
            FieldType::Date => Values::Date(Vec::new()),
            FieldType::Timestamp => Values::TimestampMs(Vec::new()),
            FieldType::Struct | FieldType::List | FieldType::Map => {
                unreachable!("invariant: Column::of builds nested columns")
            }
        };
        Self {
            rule,
            values,
            valid: Vec::new(),
        }
    }

    fn reserve(&mut self, rows: usize) {
        if let Values::Nested(_) = self.values {
            return;
        }
        each_values!(&mut self.values, v => v.reserve(rows), offsets, _bytes => offsets.reserve(rows))
    }

    /// Append `value`, which [`FieldRule::convert`] made for this column; a fault when the
    /// value cannot be stored after all (bytes that are not base64, more than 2 GiB of
    /// strings in one batch), with the column as it was.
    fn push(&mut self, value: Value<'_>) -> std::result::Result<(), Fault> {
        let too_long = |rule: &FieldRule| {
            Fault::new(
                ErrorKind::WrongType,
                format!("field `{}`: the batch's values would pass 2 GiB", rule.name),
            )
        };
        match (&mut self.values, value) {
            (Values::Nested(b), Value::Null) => {
                b.push_null();
                return Ok(());
            }
            (Values::Str { offsets, bytes }, Value::Str(s)) => {
                bytes.extend_from_slice(s.as_bytes());
                if !push_end(offsets, bytes) {
                    return Err(too_long(&self.rule));
                }
            }
            (Values::Bin { offsets, bytes }, Value::Base64(s)) => {
                if let Err(why) = weir_runtime::base64::decode_into(s, bytes) {
                    return Err(self
                        .rule
                        .wrong(Scalar::Str(s), &format!("is not base64: {why}")));
                }
                if !push_end(offsets, bytes) {
                    return Err(too_long(&self.rule));
                }
            }
            (Values::Bin { offsets, bytes }, Value::Bytes(b)) => {
                bytes.extend_from_slice(b);
                if !push_end(offsets, bytes) {
                    return Err(too_long(&self.rule));
                }
            }
            (Values::Str { offsets, .. } | Values::Bin { offsets, .. }, Value::Null) => {
                let end = *offsets.last().expect("invariant: offsets start with 0");
                offsets.push(end)
            }
            (Values::I8(v), Value::I8(x)) => v.push(x),
            (Values::I16(v), Value::I16(x)) => v.push(x),
            (Values::I32(v), Value::I32(x)) => v.push(x),
            (Values::I64(v), Value::I64(x)) => v.push(x),
            (Values::U8(v), Value::U8(x)) => v.push(x),
            (Values::U16(v), Value::U16(x)) => v.push(x),
            (Values::U32(v), Value::U32(x)) => v.push(x),
            (Values::U64(v), Value::U64(x)) => v.push(x),
            (Values::F32(v), Value::F32(x)) => v.push(x),
            (Values::F64(v), Value::F64(x)) => v.push(x),
            (Values::Bool(v), Value::Bool(x)) => v.push(x),
            (Values::Decimal(v, _, _), Value::Decimal(x)) => v.push(x),
            (Values::Date(v), Value::Date(x)) => v.push(x),
            (Values::TimestampMs(v), Value::TimestampMs(x)) => v.push(x),
            (values, Value::Null) => {
                each_values!(values, v => v.push(Default::default()), _o, _b => unreachable!("invariant: handled above"))
            }
            _ => unreachable!("invariant: FieldRule::convert yields its column's value type"),
        }
        if self.rule.nullable {
            self.valid.push(value != Value::Null);
        }
        Ok(())
    }

    /// Back to the first `rows` rows.
    fn truncate(&mut self, rows: usize) {
        if let Values::Nested(b) = &mut self.values {
            return b.truncate(rows);
        }
        self.valid.truncate(rows);
        each_values!(&mut self.values, v => v.truncate(rows), offsets, bytes => {
            offsets.truncate(rows + 1);
            bytes.truncate(offsets[rows] as usize);
        })
    }

    /// The buffered values as an array, emptying the buffers.
    fn finish(&mut self) -> std::result::Result<ArrayRef, ArrowError> {
        if let Values::Nested(b) = &mut self.values {
            return b.finish();
        }
        let valid = std::mem::take(&mut self.valid);
        let nulls = (valid.iter().any(|v| !v)).then(|| NullBuffer::from(valid));
        let take = |offsets: &mut Vec<i32>, bytes: &mut Vec<u8>| {
            (
                OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0]))),
                Buffer::from_vec(std::mem::take(bytes)),
            )
        };
        Ok(match &mut self.values {
            Values::Nested(_) => unreachable!("invariant: returned above"),
            Values::Str { offsets, bytes } => {
                let (offsets, bytes) = take(offsets, bytes);
                Arc::new(
                    StringArray::try_new(offsets, bytes, nulls).expect(
                        "invariant: offsets grow from 0 over the bytes of whole &str values",
                    ),
                )
            }
            Values::Bin { offsets, bytes } => {
                let (offsets, bytes) = take(offsets, bytes);
                Arc::new(BinaryArray::new(offsets, bytes, nulls))
            }
            Values::I8(v) => Arc::new(Int8Array::new(std::mem::take(v).into(), nulls)),
            Values::I16(v) => Arc::new(Int16Array::new(std::mem::take(v).into(), nulls)),
            Values::I32(v) => Arc::new(Int32Array::new(std::mem::take(v).into(), nulls)),
            Values::I64(v) => Arc::new(Int64Array::new(std::mem::take(v).into(), nulls)),
            Values::U8(v) => Arc::new(UInt8Array::new(std::mem::take(v).into(), nulls)),
            Values::U16(v) => Arc::new(UInt16Array::new(std::mem::take(v).into(), nulls)),
            Values::U32(v) => Arc::new(UInt32Array::new(std::mem::take(v).into(), nulls)),
            Values::U64(v) => Arc::new(UInt64Array::new(std::mem::take(v).into(), nulls)),
            Values::F32(v) => Arc::new(Float32Array::new(std::mem::take(v).into(), nulls)),
            Values::F64(v) => Arc::new(Float64Array::new(std::mem::take(v).into(), nulls)),
            Values::Bool(v) => Arc::new(BooleanArray::new(
                BooleanBuffer::from_iter(std::mem::take(v)),
                nulls,
            )),
            Values::Decimal(v, precision, scale) => Arc::new(
                Decimal128Array::new(std::mem::take(v).into(), nulls)
                    .with_precision_and_scale(*precision, *scale)
                    .expect("invariant: the schema checked the precision and scale"),
            ),
            Values::Date(v) => Arc::new(Date32Array::new(std::mem::take(v).into(), nulls)),
            Values::TimestampMs(v) => Arc::new(TimestampMillisecondArray::new(
                std::mem::take(v).into(),
                nulls,
            )),
        })
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
    nodes: &'a mut [Node],
    stamp: u32,
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
        self.object(&mut r, tree::ROOT)?;
        r.end()
    }

    /// The object at the reader into the fields beneath object node `n`.
    fn object(
        &mut self,
        r: &mut Reader<'_>,
        n: usize,
    ) -> std::result::Result<(), json::SyntaxError> {
        if let NodeKind::Object { unknown, .. } = &mut self.nodes[n].kind {
            unknown.clear();
        }
        if r.begin_object()? {
            return Ok(());
        }
        loop {
            let key = r.key()?;
            match self.child(n, &key) {
                Some(c) => self.value(r, c)?,
                None => {
                    r.value()?;
                }
            }
            if !r.next_member()? {
                return Ok(());
            }
        }
    }

    /// The array at the reader into the fields beneath array node `n`.
    fn array(
        &mut self,
        r: &mut Reader<'_>,
        n: usize,
    ) -> std::result::Result<(), json::SyntaxError> {
        if r.begin_array()? {
            return Ok(());
        }
        let mut index = 0;
        loop {
            let child = match &self.nodes[n].kind {
                NodeKind::Array { children } => {
                    children.iter().find(|(i, _)| *i == index).map(|(_, c)| *c)
                }
                _ => None,
            };
            match child {
                Some(c) => self.value(r, c)?,
                None => {
                    r.value()?;
                }
            }
            index += 1;
            if !r.next_element()? {
                return Ok(());
            }
        }
    }

    /// The value at the reader, for node `c`: a column's value, or the object or array
    /// holding further fields.
    fn value(
        &mut self,
        r: &mut Reader<'_>,
        c: usize,
    ) -> std::result::Result<(), json::SyntaxError> {
        let (want, open) = match self.nodes[c].kind {
            NodeKind::Column(i) => {
                self.set_in[i] = self.stamp;
                if let Values::Nested(b) = &mut self.columns[i].values {
                    if self.fault.is_some() {
                        r.value()?;
                    } else if let Err(miss) = b.read(r)? {
                        let f = miss.into_fault(&self.columns[i].rule);
                        self.fault(f);
                    }
                    return Ok(());
                }
                let value = r.value()?;
                self.put(i, scalar(&value));
                return Ok(());
            }
            NodeKind::Object { .. } => ("an object", b'{'),
            NodeKind::Array { .. } => ("an array", b'['),
        };
        if r.first() == Some(open) {
            return if open == b'{' {
                self.object(r, c)
            } else {
                self.array(r, c)
            };
        }
        let value = r.value()?;
        let value = scalar(&value);
        // A null object or array: the fields beneath it are absent.
        if value != Scalar::Null {
            let node = &self.nodes[c];
            let f = self.columns[node.first_column]
                .rule
                .misshapen(&node.at, value, want);
            self.fault(f);
        }
        Ok(())
    }

    /// The node that `key` of object node `n` leads to, when declared and first seen in
    /// this object; a repeated key (declared or not) faults the message.
    fn child(&mut self, n: usize, key: &str) -> Option<usize> {
        let NodeKind::Object {
            children,
            unknown,
            next,
        } = &mut self.nodes[n].kind
        else {
            return None;
        };
        let len = children.len();
        let hint = *next;
        let found = (0..len)
            .map(|i| (hint + i) % len)
            .find(|&i| children[i].0 == key);
        let first = match found {
            Some(i) => {
                *next = i + 1;
                let c = children[i].1;
                let first = self.nodes[c].stamp != self.stamp;
                self.nodes[c].stamp = self.stamp;
                if first {
                    return Some(c);
                }
                false
            }
            None => unknown.insert(key),
        };
        if !first {
            let within = match self.nodes[n].at.as_str() {
                "" => "the object".to_string(),
                at => format!("`{at}`"),
            };
            self.fault(Fault::new(
                ErrorKind::InvalidJson,
                format!("duplicate key `{key}` in {within}"),
            ));
        }
        None
    }

    fn fault(&mut self, f: Fault) {
        self.fault.get_or_insert(f);
    }

    /// `value` into column `i`, unless the message is already faulty.
    fn put(&mut self, i: usize, value: Scalar<'_>) {
        if self.fault.is_some() {
            return;
        }
        let column = &mut self.columns[i];
        if let Err(f) = column.rule.convert(value).and_then(|v| column.push(v)) {
            self.fault(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldConfig, FieldType};
    use datafusion::arrow::array::{Array, Float64Array, StructArray, TimestampMillisecondArray};
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
            metadata: Default::default(),
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

    /// A schema of `id`, the field `f` of type `ty` (nullable, with `extra` keys) and `ts`.
    fn with(ty: &str, extra: &str) -> SchemaConfig {
        let text = format!(
            r#"{{"event_time":"ts","fields":[{{"name":"id","type":"string"}},
            {{"name":"f","type":"{ty}","nullable":true{extra}}},{{"name":"ts","type":"timestamp"}}]}}"#
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("schema {text}: {e}"))
    }

    /// The unscaled decimal of the single accepted row's `f`, with its type.
    fn decimal_of(out: &Decoded) -> (i128, DataType) {
        let a = accepted(out, "f");
        let d = a
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .expect("decimal");
        (d.value(0), a.data_type().clone())
    }

    #[test]
    fn a_decimal_is_read_exactly_from_the_digits_as_written() {
        let s = with("decimal(18, 4)", "");
        for (text, unscaled) in [
            ("178.55", 1_785_500),
            ("0.1", 1_000),
            ("-0.0001", -1),
            ("1e2", 1_000_000),
            ("12.340000", 123_400),
            ("-0", 0),
            ("0.00000", 0),
            ("5E-4", 5),
            ("99999999999999.9999", 999_999_999_999_999_999),
            ("-99999999999999.9999", -999_999_999_999_999_999),
        ] {
            let (n, t) = decimal_of(&one(&s, &format!(r#""f":{text}"#)));
            assert_eq!(n, unscaled, "{text}");
            assert_eq!(t, DataType::Decimal128(18, 4), "{text}");
        }
        // Beyond what a float64 holds: 2^53 + 1 with a fraction, at precision 38.
        let s = with("decimal(38, 4)", "");
        let (n, _) = decimal_of(&one(&s, r#""f":9007199254740993.0001"#));
        assert_eq!(n, 90_071_992_547_409_930_001);
        let (n, _) = decimal_of(&one(&s, r#""f":-9999999999999999999999999999999999.9999"#));
        assert_eq!(n, -(10i128.pow(38) - 1));
    }

    #[test]
    fn a_decimal_with_more_fraction_digits_than_its_scale_is_wrong_type() {
        let s = with("decimal(18,4)", "");
        for text in ["1.23456", "0.00001", "1e-5", "178.550001"] {
            let (kind, message) = rejected(&one(&s, &format!(r#""f":{text}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{text}");
            names(&message, "f", text);
            assert!(message.contains("decimal(18, 4)"), "{message}");
            assert!(
                message.contains("more than 4 digits after the point"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_decimal_beyond_its_precision_is_wrong_type() {
        let s = with("decimal(6,2)", "");
        assert_eq!(decimal_of(&one(&s, r#""f":9999.99"#)).0, 999_999);
        for text in ["10000", "-10000.00", "1e4", "1e999999999999999999999"] {
            let (kind, message) = rejected(&one(&s, &format!(r#""f":{text}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{text}");
            names(&message, "f", text);
            assert!(
                message.contains("at most 4 digits before the point"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_decimal_written_as_a_string_needs_coerce_and_is_read_exactly_then() {
        let (kind, message) = rejected(&one(&with("decimal(10,2)", ""), r#""f":"178.55""#));
        assert_eq!(kind, ErrorKind::WrongType);
        names(&message, "f", "\"178.55\"");
        assert!(message.contains("coerce = true"), "{message}");
        let s = with("decimal(10,2)", r#","coerce":true"#);
        assert_eq!(decimal_of(&one(&s, r#""f":"178.55""#)).0, 17_855);
        for bad in [r#""178.555""#, r#"" 1.5""#, r#""1,5""#, r#""NaN""#] {
            let (kind, _) = rejected(&one(&s, &format!(r#""f":{bad}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{bad}");
        }
    }

    #[test]
    fn a_decimal_field_refuses_what_is_not_a_number() {
        let s = with("decimal(10,2)", "");
        for (value, shown) in [("true", "true"), ("{}", "an object"), ("[1]", "an array")] {
            let (kind, message) = rejected(&one(&s, &format!(r#""f":{value}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{value}");
            names(&message, "f", shown);
        }
    }

    #[test]
    fn each_integer_type_takes_exactly_its_range() {
        for (ty, low, high) in [
            ("int8", "-128", "127"),
            ("int16", "-32768", "32767"),
            ("int32", "-2147483648", "2147483647"),
            ("int64", "-9223372036854775808", "9223372036854775807"),
            ("uint8", "0", "255"),
            ("uint16", "0", "65535"),
            ("uint32", "0", "4294967295"),
            ("uint64", "0", "18446744073709551615"),
        ] {
            let s = with(ty, "");
            for edge in [low, high] {
                let a = accepted(&one(&s, &format!(r#""f":{edge}"#)), "f");
                let shown = datafusion::arrow::util::display::array_value_to_string(&a, 0).unwrap();
                assert_eq!(shown, edge, "{ty}");
            }
            let below = (low.parse::<i128>().unwrap() - 1).to_string();
            let above = (high.parse::<i128>().unwrap() + 1).to_string();
            for outside in [below, above] {
                let (kind, message) = rejected(&one(&s, &format!(r#""f":{outside}"#)));
                assert_eq!(kind, ErrorKind::WrongType, "{ty} {outside}");
                names(&message, "f", &outside);
                assert!(
                    message.contains(&format!("out of range for {ty}")),
                    "{message}"
                );
            }
            let (kind, _) = rejected(&one(&s, r#""f":1.5"#));
            assert_eq!(kind, ErrorKind::WrongType, "{ty}");
        }
    }

    #[test]
    fn a_binary_field_takes_padded_base64_and_stores_the_bytes() {
        let s = with("binary", "");
        let a = accepted(&one(&s, r#""f":"Zm9vYg==""#), "f");
        let b = a.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(b.value(0), b"foob");
        for (value, shown) in [
            (r#""Zm9vYg""#, "\"Zm9vYg\""),
            (r#""Zm*v""#, "\"Zm*v\""),
            ("12", "12"),
        ] {
            let (kind, message) = rejected(&one(&s, &format!(r#""f":{value}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{value}");
            names(&message, "f", shown);
        }
    }

    #[test]
    fn a_date_field_takes_a_calendar_day_written_yyyy_mm_dd() {
        let s = with("date", "");
        for (text, days) in [
            ("1970-01-01", 0),
            ("2026-01-05", 20_458),
            ("2024-02-29", 19_782),
            ("1969-12-31", -1),
        ] {
            let a = accepted(&one(&s, &format!(r#""f":"{text}""#)), "f");
            let d = a.as_any().downcast_ref::<Date32Array>().unwrap();
            assert_eq!(d.value(0), days, "{text}");
        }
        for bad in [
            r#""2023-02-29""#,
            r#""2026-1-5""#,
            r#""2026-13-01""#,
            r#""2026-01-05T00:00:00Z""#,
            "20458",
        ] {
            let (kind, message) = rejected(&one(&s, &format!(r#""f":{bad}"#)));
            assert_eq!(kind, ErrorKind::WrongType, "{bad}");
            names(&message, "f", bad);
        }
    }

    #[test]
    fn a_message_rejected_after_a_binary_value_leaves_no_bytes_behind() {
        let s = with("binary", "");
        let out = JsonDecoder::new(&s)
            .decode(&raw(&[
                Some(&format!(r#"{{"id":"a","f":"YQ==","ts":{T}}}"#)),
                Some(&format!(r#"{{"f":"Yg==","id":7,"ts":{T}}}"#)),
                Some(&format!(r#"{{"id":"c","f":"Yw==","ts":{T}}}"#)),
            ]))
            .unwrap();
        assert_eq!(out.rejects.len(), 1);
        let b = out.batch.unwrap();
        let f = b.column(1).as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            vec![Some(&b"a"[..]), Some(&b"c"[..])]
        );
    }

    #[test]
    fn an_undeclared_field_is_ignored_whatever_it_holds() {
        let s = with("decimal(10,2)", "");
        let out = one(&s, r#""f":1.5,"other":{"deep":[1,{"x":"y"}]},"more":"z""#);
        assert_eq!(decimal_of(&out).0, 150);
    }

    /// An order envelope: `id` at the top, `amount`, `status` and two item SKUs in `payload`.
    fn envelope() -> SchemaConfig {
        serde_json::from_str(
            r#"{"event_time":"ts","fields":[
            {"name":"id","path":"eventId","type":"string"},
            {"name":"amount","path":"payload.amount","type":"decimal(18,4)"},
            {"name":"status","path":"payload.status","type":"string","nullable":true},
            {"name":"sku0","path":"payload.items[0].sku","type":"string","nullable":true},
            {"name":"sku1","path":"payload.items[1].sku","type":"string","nullable":true},
            {"name":"ts","path":"meta.time","type":"timestamp"}]}"#,
        )
        .unwrap()
    }

    fn one_envelope(payload: &str) -> Decoded {
        JsonDecoder::new(&envelope())
            .decode(&raw(&[Some(payload)]))
            .unwrap()
    }

    fn str_at(b: &RecordBatch, name: &str) -> Option<String> {
        let a = b.column_by_name(name).unwrap();
        let a = a.as_any().downcast_ref::<StringArray>().unwrap();
        a.is_valid(0).then(|| a.value(0).to_string())
    }

    #[test]
    fn fields_are_read_from_their_paths_in_nested_objects_and_arrays() {
        let out = one_envelope(&format!(
            r#"{{"eventType":"OrderPlaced","eventId":"e1","version":3,
            "payload":{{"customer":{{"id":7}},"items":[{{"sku":"A-1","qty":2}},{{"qty":1,"sku":"B-2"}},{{"sku":"C"}}],
            "amount":178.55,"status":"new"}},"meta":{{"time":{T},"trace":[1,2]}}}}"#
        ));
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.unwrap();
        assert_eq!(str_at(&b, "id").as_deref(), Some("e1"));
        assert_eq!(str_at(&b, "status").as_deref(), Some("new"));
        assert_eq!(str_at(&b, "sku0").as_deref(), Some("A-1"));
        assert_eq!(str_at(&b, "sku1").as_deref(), Some("B-2"));
        let amount = b.column_by_name("amount").unwrap();
        let amount = amount.as_any().downcast_ref::<Decimal128Array>().unwrap();
        assert_eq!(amount.value(0), 1_785_500);
        assert_eq!(ts_of(b.column_by_name("ts").unwrap()), T);
    }

    #[test]
    fn an_absent_or_null_container_on_the_path_leaves_its_fields_absent() {
        for items in [
            r#""items":[]"#,
            r#""items":null"#,
            r#""items":[{"qty":1}]"#,
            r#""x":1"#,
        ] {
            let out = one_envelope(&format!(
                r#"{{"eventId":"e1","payload":{{"amount":1,{items}}},"meta":{{"time":{T}}}}}"#
            ));
            assert!(out.rejects.is_empty(), "{items}: {:?}", out.rejects);
            let b = out.batch.unwrap();
            assert_eq!(str_at(&b, "sku0"), None, "{items}");
            assert_eq!(str_at(&b, "sku1"), None, "{items}");
        }
        for payload in [
            format!(r#"{{"eventId":"e1","payload":null,"meta":{{"time":{T}}}}}"#),
            format!(r#"{{"eventId":"e1","meta":{{"time":{T}}}}}"#),
        ] {
            let (kind, message) = rejected(&one_envelope(&payload));
            assert_eq!(kind, ErrorKind::MissingField, "{payload}");
            assert!(
                message.contains("`amount` (at payload.amount) is missing"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_value_where_the_path_needs_an_object_or_array_is_wrong_type_naming_the_position() {
        for (payload, shown) in [
            (r#""payload":"p""#, "`payload` is \"p\", not an object"),
            (r#""payload":[1]"#, "`payload` is an array, not an object"),
            (
                r#""payload":{"amount":1,"items":{"sku":"A"}}"#,
                "`payload.items` is an object, not an array",
            ),
            (
                r#""payload":{"amount":1,"items":[7]}"#,
                "`payload.items[0]` is 7, not an object",
            ),
        ] {
            let out = one_envelope(&format!(
                r#"{{"eventId":"e1",{payload},"meta":{{"time":{T}}}}}"#
            ));
            let (kind, message) = rejected(&out);
            assert_eq!(kind, ErrorKind::WrongType, "{payload}");
            assert!(message.contains(shown), "{message}");
        }
        let (_, message) = rejected(&one_envelope(&format!(
            r#"{{"eventId":"e1","payload":{{"amount":1.23456}},"meta":{{"time":{T}}}}}"#
        )));
        assert!(
            message.starts_with("field `amount` (decimal(18, 4), at payload.amount): 1.23456"),
            "{message}"
        );
    }

    #[test]
    fn a_duplicate_key_in_an_object_on_a_path_is_invalid_json() {
        for (payload, key) in [
            (
                r#""payload":{"amount":1,"amount":2}"#,
                "`amount` in `payload`",
            ),
            (
                r#""payload":{"amount":1,"note":1,"note":2}"#,
                "`note` in `payload`",
            ),
            (
                r#""payload":{"amount":1},"payload":{"amount":1}"#,
                "`payload` in the object",
            ),
        ] {
            let out = one_envelope(&format!(
                r#"{{"eventId":"e1",{payload},"meta":{{"time":{T}}}}}"#
            ));
            let (kind, message) = rejected(&out);
            assert_eq!(kind, ErrorKind::InvalidJson, "{payload}");
            assert!(
                message.contains(&format!("duplicate key {key}")),
                "{message}"
            );
        }
        // Objects no path goes into are checked for syntax only, as undeclared keys always were.
        let out = one_envelope(&format!(
            r#"{{"eventId":"e1","payload":{{"amount":1,"customer":{{"id":1,"id":2}}}},"meta":{{"time":{T}}}}}"#
        ));
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    }

    #[test]
    fn invalid_json_after_a_misfit_nested_value_is_reported_as_invalid_json() {
        let out = one_envelope(&format!(
            r#"{{"eventId":"e1","payload":{{"amount":"x"}},"meta":{{"time":{T}}},}}"#
        ));
        let (kind, _) = rejected(&out);
        assert_eq!(kind, ErrorKind::InvalidJson);
    }

    /// `id` from the payload; key, broker timestamp (the event time), topic, partition,
    /// offset and two headers from the message.
    fn with_metadata() -> SchemaConfig {
        serde_json::from_str(
            r#"{"event_time":"broker_ts","fields":[{"name":"id","type":"string"}],
            "metadata":{"key":"msg_key","timestamp":"broker_ts","topic":"topic","partition":"part",
            "offset":"off","headers":{"correlation_id":"correlation-id","trace":"traceparent"}}}"#,
        )
        .unwrap()
    }

    fn message(
        offset: i64,
        key: Option<&[u8]>,
        ts: Option<i64>,
        headers: Vec<Option<&[u8]>>,
    ) -> RawMessage {
        RawMessage {
            offset,
            key: key.map(<[u8]>::to_vec),
            payload: Some(format!(r#"{{"id":"e{offset}"}}"#).into_bytes()),
            timestamp_ms: ts,
            headers: headers.into_iter().map(|h| h.map(<[u8]>::to_vec)).collect(),
        }
    }

    #[test]
    fn a_binary_header_column_holds_the_bytes_as_they_are() {
        let s: SchemaConfig = serde_json::from_str(
            r#"{"event_time":"ts","fields":[{"name":"id","type":"string"},{"name":"ts","type":"timestamp","nullable":false}],
            "metadata":{"headers":{"corr":"correlation-id","trace":{"header":"trace-bin","type":"binary"}}}}"#,
        )
        .unwrap();
        let types: Vec<DataType> = s
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(types[2..], [DataType::Utf8, DataType::Binary]);
        let m = |offset, headers| RawMessage {
            payload: Some(format!(r#"{{"id":"e","ts":{T}}}"#).into_bytes()),
            ..message(offset, None, None, headers)
        };
        let raw = RawBatch::new(
            "t".into(),
            0,
            vec![
                m(1, vec![Some(&b"c"[..]), Some(&[0xff, 0x00][..])]),
                m(2, vec![None, None]),
                // Not UTF-8 in the string header: dead-lettered; the binary one takes anything.
                m(3, vec![Some(&[0xff][..]), Some(&b"x"[..])]),
                m(4, vec![None, Some(&b""[..])]),
            ],
        );
        let out = JsonDecoder::new(&s).decode(&raw).unwrap();
        assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
        assert_eq!(out.rejects[0].offset, 3);
        let b = out.batch.unwrap();
        let trace = b.column_by_name("trace").unwrap();
        let trace = trace.as_any().downcast_ref::<BinaryArray>().unwrap();
        assert_eq!(
            trace.iter().collect::<Vec<_>>(),
            [Some(&[0xff, 0x00][..]), None, Some(&b""[..])]
        );
        let err = serde_json::from_str::<SchemaConfig>(
            r#"{"event_time":"ts","fields":[],"metadata":{"headers":{"t":{"header":"h","type":"int64"}}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `int64`"), "{err}");
    }

    #[test]
    fn metadata_columns_hold_the_key_timestamp_topic_partition_offset_and_headers() {
        let s = with_metadata();
        let names: Vec<String> = s
            .arrow_schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "id",
                "msg_key",
                "broker_ts",
                "topic",
                "part",
                "off",
                "correlation_id",
                "trace"
            ]
        );
        assert_eq!(s.metadata.header_names(), ["correlation-id", "traceparent"]);
        let mut d = JsonDecoder::new(&s);
        let raw = RawBatch::new(
            "orders".into(),
            3,
            vec![
                message(7, Some(b"k-1"), Some(T), vec![Some(b"c-1"), None]),
                message(8, None, Some(T + 1), vec![None, Some(b"00-ab")]),
            ],
        );
        let out = d.decode(&raw).unwrap();
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.unwrap();
        let text = |name: &str| -> Vec<Option<String>> {
            let a = b.column_by_name(name).unwrap();
            let a = a.as_any().downcast_ref::<StringArray>().unwrap();
            a.iter().map(|v| v.map(str::to_string)).collect()
        };
        assert_eq!(text("msg_key"), [Some("k-1".into()), None]);
        assert_eq!(
            text("topic"),
            [Some("orders".into()), Some("orders".into())]
        );
        assert_eq!(text("correlation_id"), [Some("c-1".into()), None]);
        assert_eq!(text("trace"), [None, Some("00-ab".into())]);
        let ts = b.column_by_name("broker_ts").unwrap();
        let ts = ts
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[T, T + 1]);
        let part = b.column_by_name("part").unwrap();
        assert_eq!(
            part.as_any().downcast_ref::<Int32Array>().unwrap().values(),
            &[3, 3]
        );
        let off = b.column_by_name("off").unwrap();
        assert_eq!(
            off.as_any().downcast_ref::<Int64Array>().unwrap().values(),
            &[7, 8]
        );
    }

    #[test]
    fn a_message_whose_metadata_does_not_fit_is_dead_lettered_and_the_rest_goes_on() {
        let mut d = JsonDecoder::new(&with_metadata());
        let raw = RawBatch::new(
            "orders".into(),
            0,
            vec![
                message(1, Some(b"\xff"), Some(T), vec![None, None]),
                message(2, Some(b"k"), None, vec![None, None]),
                message(3, Some(b"k"), Some(T), vec![Some(b"\xfe"), None]),
                message(4, Some(b"k"), Some(T), vec![None, None]),
            ],
        );
        let out = d.decode(&raw).unwrap();
        let got: Vec<(i64, ErrorKind)> = out.rejects.iter().map(|r| (r.offset, r.kind)).collect();
        assert_eq!(
            got,
            [
                (1, ErrorKind::WrongType),
                (2, ErrorKind::MissingField),
                (3, ErrorKind::WrongType)
            ]
        );
        assert!(
            out.rejects[0]
                .message
                .contains("`msg_key`: the message key is not UTF-8"),
            "{:?}",
            out.rejects
        );
        assert!(
            out.rejects[1].message.contains("no timestamp"),
            "{:?}",
            out.rejects
        );
        assert!(
            out.rejects[2]
                .message
                .contains("header `correlation-id` is not UTF-8"),
            "{:?}",
            out.rejects
        );
        let b = out.batch.unwrap();
        assert_eq!(b.num_rows(), 1);
        let off = b.column_by_name("off").unwrap();
        assert_eq!(
            off.as_any().downcast_ref::<Int64Array>().unwrap().values(),
            &[4]
        );
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

    /// An order event with nested types: `payload` a struct holding a list of item structs
    /// and a nullable map of attributes.
    fn typed_order() -> SchemaConfig {
        serde_json::from_str(
            r#"{"event_time":"ts","fields":[
            {"name":"id","type":"string"},
            {"name":"payload","type":"struct","fields":[
                {"name":"status","type":"string"},
                {"name":"amount","type":"decimal(18,4)"},
                {"name":"note","type":"string","nullable":true},
                {"name":"items","type":"list","item":{"type":"struct","fields":[
                    {"name":"sku","type":"string"},
                    {"name":"qty","type":"int32"},
                    {"name":"price","type":"decimal(10,2)","nullable":true}]}},
                {"name":"tags","type":"list","nullable":true,"item":{"type":"string","nullable":true}}]},
            {"name":"attrs","type":"map","nullable":true,"value":"int64"},
            {"name":"ts","type":"timestamp"}]}"#,
        )
        .unwrap()
    }

    /// The rows of `b` (without the offset column) as JSON objects, as a sink writes them.
    fn json_rows(b: &RecordBatch) -> Vec<serde_json::Value> {
        let b = b
            .project(&(0..b.num_columns() - 1).collect::<Vec<_>>())
            .unwrap();
        let mut buf = Vec::new();
        let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        w.write(&b).unwrap();
        w.finish().unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn typed_orders(payloads: &[&str]) -> Decoded {
        JsonDecoder::new(&typed_order())
            .decode(&raw(&payloads.iter().map(|p| Some(*p)).collect::<Vec<_>>()))
            .unwrap()
    }

    fn order(payload: &str, rest: &str) -> String {
        format!(r#"{{"id":"o1","payload":{payload}{rest},"ts":{T}}}"#)
    }

    const PAYLOAD: &str = r#"{"status":"new","amount":178.55,"items":[{"sku":"A","qty":2,"price":9.99},{"qty":1,"sku":"B"}]}"#;

    #[test]
    fn structs_lists_and_maps_are_decoded_into_arrow_nested_columns() {
        let out = typed_orders(&[
            &order(PAYLOAD, r#","attrs":{"x":1,"y":-2}"#),
            &order(
                r#"{"amount":12.5,"status":"paid","items":[],"tags":["a",null],"note":"n","extra":{"deep":[1]}}"#,
                "",
            ),
        ]);
        assert!(out.rejects.is_empty(), "{:?}", out.rejects);
        let b = out.batch.unwrap();
        let schema = b.schema();
        let payload = schema.field_with_name("payload").unwrap();
        let DataType::Struct(children) = payload.data_type() else {
            panic!("{payload:?}")
        };
        assert_eq!(children[1].data_type(), &DataType::Decimal128(18, 4));
        assert!(
            matches!(children[3].data_type(), DataType::List(item) if matches!(item.data_type(), DataType::Struct(_)) && !item.is_nullable())
        );
        assert!(matches!(
            schema.field_with_name("attrs").unwrap().data_type(),
            DataType::Map(_, false)
        ));
        assert_eq!(
            json_rows(&b),
            vec![
                serde_json::json!({"id":"o1","payload":{"status":"new","amount":178.55,
                    "items":[{"sku":"A","qty":2,"price":9.99},{"sku":"B","qty":1}]},
                    "attrs":{"x":1,"y":-2},"ts":"2026-01-05T14:40:00"}),
                serde_json::json!({"id":"o1","payload":{"status":"paid","amount":12.5,"note":"n",
                    "items":[],"tags":["a",null]},"ts":"2026-01-05T14:40:00"}),
            ]
        );
        // The decimal inside is exact, at its scale.
        let p = b.column_by_name("payload").unwrap();
        let p = p.as_any().downcast_ref::<StructArray>().unwrap();
        let amount = p
            .column(1)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!(amount.value(0), 1_785_500);
    }

    #[test]
    fn a_nested_value_that_does_not_fit_is_dead_lettered_with_its_path_and_value() {
        let item = |qty: &str| {
            order(
                &PAYLOAD.replace(r#""qty":1"#, &format!(r#""qty":{qty}"#)),
                "",
            )
        };
        for (payload, kind, says) in [
            (
                item(r#""1""#),
                ErrorKind::WrongType,
                r#"field `payload` at `payload.items[1].qty` (int32): "1" is a string, not a number"#,
            ),
            (
                item("1.5"),
                ErrorKind::WrongType,
                "field `payload` at `payload.items[1].qty` (int32): 1.5 is not a whole number",
            ),
            (
                item("3000000000"),
                ErrorKind::WrongType,
                "field `payload` at `payload.items[1].qty` (int32): 3000000000 is out of range for int32",
            ),
            (
                item("null"),
                ErrorKind::MissingField,
                "field `payload`: the required value at `payload.items[1].qty` is missing or null",
            ),
            (
                order(&PAYLOAD.replace("9.99", "9.999"), ""),
                ErrorKind::WrongType,
                "field `payload` at `payload.items[0].price` (decimal(10, 2)): 9.999 has more than 2 digits",
            ),
            (
                order(&PAYLOAD.replace(r#""status":"new","#, ""), ""),
                ErrorKind::MissingField,
                "field `payload`: the required value at `payload.status` is missing or null",
            ),
            (
                order(r#"{"status":"new","amount":1,"items":{"sku":"A"}}"#, ""),
                ErrorKind::WrongType,
                "field `payload` at `payload.items` (list<struct<sku: string, qty: int32, price: decimal(10, 2)>>): an object is not an array",
            ),
            (
                order(r#"{"status":"new","amount":1,"items":[null]}"#, ""),
                ErrorKind::MissingField,
                "the required value at `payload.items[0]` is missing or null",
            ),
            (
                order(r#"{"status":"new","amount":1,"items":["A"]}"#, ""),
                ErrorKind::WrongType,
                r#"field `payload` at `payload.items[0]` (struct<sku: string, qty: int32, price: decimal(10, 2)>): "A" is not an object"#,
            ),
            (
                order("17", ""),
                ErrorKind::WrongType,
                "field `payload` (struct<status: string, amount: decimal(18, 4), note: string, items: list<struct<sku: string, qty: int32, price: decimal(10, 2)>>, tags: list<string>>): 17 is not an object",
            ),
            (
                order("null", ""),
                ErrorKind::MissingField,
                "required field `payload` is missing or null",
            ),
            (
                order(PAYLOAD, r#","attrs":{"x":"1"}"#),
                ErrorKind::WrongType,
                r#"field `attrs` at `attrs.x` (int64): "1" is a string, not a number"#,
            ),
            (
                order(PAYLOAD, r#","attrs":[1]"#),
                ErrorKind::WrongType,
                "field `attrs` (map<string, int64>): an array is not an object",
            ),
            (
                order(&PAYLOAD.replace(r#""status":"new""#, r#""status":"new","status":"x""#), ""),
                ErrorKind::InvalidJson,
                "duplicate key `status` in `payload`",
            ),
            (
                order(PAYLOAD, r#","attrs":{"x":1,"x":2}"#),
                ErrorKind::InvalidJson,
                "duplicate key `x` in `attrs`",
            ),
            (
                order(&PAYLOAD.replace(r#""status":"new""#, r#""u":1,"status":"new","u":2"#), ""),
                ErrorKind::InvalidJson,
                "duplicate key `u` in `payload`",
            ),
            // A misfit first, then invalid JSON further on: invalid JSON wins.
            (
                order(&PAYLOAD.replace(r#""qty":2"#, r#""qty":"2""#), r#","attrs":{"x":}"#),
                ErrorKind::InvalidJson,
                "invalid JSON",
            ),
        ] {
            let out = typed_orders(&[&payload]);
            let (k, message) = rejected(&out);
            assert_eq!(k, kind, "{payload}: {message}");
            assert!(message.contains(says), "{payload}:\n{message}\nwanted: {says}");
        }
    }

    #[test]
    fn a_rejected_nested_message_leaves_no_trace_in_the_rows_around_it() {
        let good = |sku: &str| {
            order(
                &PAYLOAD.replace(r#""sku":"A""#, &format!(r#""sku":"{sku}""#)),
                r#","attrs":{"k":1}"#,
            )
        };
        // Fails deep inside the second item's struct, after the first item and the map were
        // partly written.
        let bad = order(&PAYLOAD.replace(r#""qty":1"#, r#""qty":true"#), "")
            .replace(r#""payload""#, r#""attrs":{"a":1,"b":2},"payload""#);
        let out = typed_orders(&[&good("A1"), &bad, &good("A3")]);
        assert_eq!(out.rejects.len(), 1, "{:?}", out.rejects);
        assert_eq!(out.rejects[0].offset, 11);
        let b = out.batch.unwrap();
        for c in b.columns() {
            c.to_data().validate_full().unwrap();
        }
        let rows = json_rows(&b);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["payload"]["items"][0]["sku"], "A1");
        assert_eq!(rows[1]["payload"]["items"][0]["sku"], "A3");
        assert_eq!(rows[1]["payload"]["items"].as_array().unwrap().len(), 2);
        assert_eq!(rows[1]["attrs"], serde_json::json!({"k":1}));
    }

    #[test]
    fn an_absent_or_null_nullable_nested_value_is_null_and_a_required_one_is_missing() {
        let out = typed_orders(&[
            &order(PAYLOAD, r#","attrs":null"#),
            &order(PAYLOAD, ""),
            &format!(r#"{{"id":"o1","ts":{T}}}"#),
        ]);
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(out.rejects[0].kind, ErrorKind::MissingField);
        assert!(out.rejects[0]
            .message
            .contains("required field `payload` is missing or null"));
        let b = out.batch.unwrap();
        let attrs = b.column_by_name("attrs").unwrap();
        assert_eq!(attrs.null_count(), 2);
    }

    #[test]
    fn nested_type_keys_are_checked_where_they_are_written() {
        let s: SchemaConfig = serde_json::from_str(
            r#"{"event_time":"ts","fields":[
            {"name":"a","type":"list"},
            {"name":"b","type":"struct","fields":[{"name":"x","type":"int64","path":"y"},{"name":"x","type":"string"}]},
            {"name":"c","type":"string","item":"int64"},
            {"name":"d","type":"map","value":{"type":"timestamp","coerce":true,"unit":"s"}},
            {"name":"e","type":"struct","fields":[]},
            {"name":"ts","type":"timestamp"}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.validate("schema"),
            vec![
                "schema.fields[0].item: list `a` needs `item`, its element type (e.g. `item = \"string\"`)",
                "schema.fields[1].fields[0].path: a struct's fields are read by their names; `path` is for top-level fields only",
                "schema.fields[1].fields[1].name: duplicate field `x` in struct `b`",
                "schema.fields[2].item: only a `list` field has `item`; `c` is string",
                "schema.fields[4].fields: struct `e` needs at least one field",
            ]
        );
        let err = serde_json::from_str::<SchemaConfig>(
            r#"{"event_time":"ts","fields":[{"name":"a","type":"list","item":{"type":"int64","name":"x"}}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `name`"), "{err}");
    }

    /// A valid envelope of [`envelope`]'s schema.
    fn valid_envelope(i: u32) -> String {
        format!(
            r#"{{"eventId":"e{i}","payload":{{"amount":{i}.25,"status":"new","items":[{{"sku":"A{i}"}},{{"sku":"B"}}]}},"meta":{{"time":{T}}}}}"#
        )
    }

    proptest! {
        #[test]
        fn a_nested_event_mutated_byte_by_byte_is_accepted_whole_or_dead_lettered(
            events in proptest::collection::vec(
                (0u32..1000, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)),
                1..20,
            )
        ) {
            let mut payloads = Vec::new();
            for (i, edits) in &events {
                let mut bytes = valid_envelope(*i).into_bytes();
                for (at, b) in edits {
                    let at = at.index(bytes.len());
                    bytes[at] = *b;
                }
                payloads.push(Some(bytes));
            }
            let msgs: Vec<RawMessage> = payloads.iter().enumerate().map(|(i, p)| RawMessage { offset: i as i64, key: None, payload: p.clone(), timestamp_ms: None, headers: Vec::new() }).collect();
            let n = msgs.len();
            let out = JsonDecoder::new(&envelope()).decode(&RawBatch::new("t".into(), 0, msgs)).unwrap();
            let rows = out.batch.as_ref().map_or(0, |b| b.num_rows());
            prop_assert_eq!(rows + out.rejects.len(), n);
            // An unmutated event is always accepted, with its values.
            let untouched = events.iter().filter(|(_, e)| e.is_empty()).count();
            prop_assert!(rows >= untouched);
            if let Some(b) = &out.batch {
                let ids = b.column_by_name("id").unwrap();
                let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
                let amount = b.column_by_name("amount").unwrap();
                let amount = amount.as_any().downcast_ref::<Decimal128Array>().unwrap();
                let offsets = b.column_by_name(OFFSET_COLUMN).unwrap();
                let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
                for r in 0..b.num_rows() {
                    let (i, edits) = &events[offsets.value(r) as usize];
                    if edits.is_empty() {
                        prop_assert_eq!(ids.value(r), format!("e{i}"));
                        prop_assert_eq!(amount.value(r), i128::from(*i) * 10_000 + 2_500);
                    }
                }
            }
        }

        #[test]
        fn a_typed_nested_event_mutated_byte_by_byte_is_accepted_whole_or_dead_lettered(
            events in proptest::collection::vec(
                (0u32..1000, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4)),
                1..20,
            )
        ) {
            let valid = |i: u32| order(&PAYLOAD.replace(r#""sku":"A""#, &format!(r#""sku":"A{i}""#)), r#","attrs":{"k":1,"l":2}"#);
            let msgs: Vec<RawMessage> = events.iter().enumerate().map(|(n, (i, edits))| {
                let mut bytes = valid(*i).into_bytes();
                for (at, b) in edits {
                    let at = at.index(bytes.len());
                    bytes[at] = *b;
                }
                RawMessage { offset: n as i64, key: None, payload: Some(bytes), timestamp_ms: None, headers: Vec::new() }
            }).collect();
            let n = msgs.len();
            let out = JsonDecoder::new(&typed_order()).decode(&RawBatch::new("t".into(), 0, msgs)).unwrap();
            let rows = out.batch.as_ref().map_or(0, |b| b.num_rows());
            prop_assert_eq!(rows + out.rejects.len(), n);
            prop_assert!(rows >= events.iter().filter(|(_, e)| e.is_empty()).count());
            if let Some(b) = &out.batch {
                for c in b.columns() {
                    prop_assert!(c.to_data().validate_full().is_ok());
                }
                let offsets = b.column_by_name(OFFSET_COLUMN).unwrap();
                let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                for (r, row) in json_rows(b).iter().enumerate() {
                    let (i, edits) = &events[offsets.value(r) as usize];
                    if edits.is_empty() {
                        prop_assert_eq!(&row["payload"]["items"][0]["sku"], &serde_json::json!(format!("A{i}")));
                        prop_assert_eq!(&row["attrs"], &serde_json::json!({"k":1,"l":2}));
                    }
                }
            }
        }

        #[test]
        fn decode_never_panics_and_accounts_for_every_message(payloads in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..40)) {
            let msgs: Vec<RawMessage> = payloads.into_iter().enumerate().map(|(i, p)| RawMessage { offset: i as i64, key: None, payload: p, timestamp_ms: None, headers: Vec::new() }).collect();
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
