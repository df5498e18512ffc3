//! Upcasters: event versioning. Older versions of an event are mapped, one version at a time,
//! to the current shape before any projection sees them.
//!
//! Each row carries its version in an integer field (e.g. `version`). [`Upcasters`] holds one
//! step per old version (`from` → `from + 1`), a function over the event as a JSON object:
//! for example a v1 order event without `currency` becomes v2 with `"currency": "EUR"`. A row
//! of version `v < current` goes through steps `v`, `v + 1`, ... and leaves with the version
//! field set to `current`; a row already at `current` is unchanged. The result is decoded into
//! the current schema. A row goes to the DLQ with the reason, and the others go on, when its
//! version is missing, not an integer, newer than `current`, or has no step; when a step
//! refuses it or panics; or when the upcasted event does not fit the current schema. A step
//! that refuses an event with [`EventError::Retryable`] (or panics, when the pipeline retries
//! panics) has it tried again on the pipeline's retry schedule instead, the events of the
//! same message key waiting behind it (ARCHITECTURE.md, "Retries before the DLQ").
//!
//! In a pipeline the upcasters run right after decode, before every operator
//! ([`Pipeline::upcast`](../../weir/pipeline/struct.Pipeline.html)). The decoded schema must
//! accept every version (fields that older versions lack are nullable there); the current
//! schema says what the rest of the chain sees.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::{LineDelimitedWriter, ReaderBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, EventError, Failure, Operator, OFFSET_COLUMN};

/// One upcasting step: changes an event of version `from` into version `from + 1`.
/// `Err` (or a panic) sends the event to the DLQ with the message: at once, or after the
/// retry schedule's attempts for [`EventError::Retryable`].
pub type UpcastStep =
    Arc<dyn Fn(&mut Map<String, Value>) -> std::result::Result<(), EventError> + Send + Sync>;

/// The upcasting steps of one event stream, and the shape they lead to.
#[derive(Clone)]
pub struct Upcasters {
    version_field: String,
    current: i64,
    schema: SchemaRef,
    steps: BTreeMap<i64, UpcastStep>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters")
            .field("version_field", &self.version_field)
            .field("current", &self.current)
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upcasters {
    /// Events whose version is in `version_field`, upcast to version `current`, whose rows
    /// have the columns of `schema` (the current shape, without the offset column).
    pub fn new(version_field: &str, current: i64, schema: SchemaRef) -> Self {
        Self {
            version_field: version_field.to_string(),
            current,
            schema,
            steps: BTreeMap::new(),
        }
    }

    /// The step from version `from` to `from + 1`.
    pub fn step(
        mut self,
        from: i64,
        f: impl Fn(&mut Map<String, Value>) -> std::result::Result<(), EventError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.steps.insert(from, Arc::new(f));
        self
    }

    /// Every impossible setting, as lines: a step at or above the current version (it could
    /// never run), a version field missing from the current schema.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for from in self.steps.keys().filter(|v| **v >= self.current) {
            errors.push(format!(
                "upcaster step from version {from} is not older than the current version {}",
                self.current
            ));
        }
        if self.schema.index_of(&self.version_field).is_err() {
            errors.push(format!(
                "the version field {:?} is not in the current schema",
                self.version_field
            ));
        }
        errors
    }

    /// `event` upcast to the current version, or why it cannot be.
    pub fn upcast(&self, event: &mut Map<String, Value>) -> std::result::Result<(), String> {
        self.upcast_event(event).map_err(|(_, reason)| reason)
    }

    /// [`Upcasters::upcast`], with the kind of failure: a step's retryable error or panic
    /// may be retried, anything else is permanent.
    pub fn upcast_event(
        &self,
        event: &mut Map<String, Value>,
    ) -> std::result::Result<(), (Failure, String)> {
        let permanent = |reason: String| (Failure::Permanent, reason);
        let field = &self.version_field;
        let mut version = match event.get(field) {
            None | Some(Value::Null) => {
                return Err(permanent(format!("the event has no {field:?}")))
            }
            Some(v) => v
                .as_i64()
                .ok_or_else(|| permanent(format!("{field:?} is {v}, not an integer version")))?,
        };
        if version > self.current {
            return Err(permanent(format!(
                "version {version} is newer than the current version {}",
                self.current
            )));
        }
        while version < self.current {
            let step = self.steps.get(&version).ok_or_else(|| {
                permanent(format!(
                    "no upcaster from version {version} (current is {})",
                    self.current
                ))
            })?;
            match catch_unwind(AssertUnwindSafe(|| step(event))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err((e.failure(), format!("upcasting version {version}: {e}")))
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    return Err((
                        Failure::Panic,
                        format!("upcasting version {version} panicked: {msg}"),
                    ));
                }
            }
            version += 1;
            event.insert(field.clone(), Value::from(version));
        }
        Ok(())
    }
}

/// The operator that applies [`Upcasters`] to every row. See the module docs.
pub struct UpcastOperator {
    name: String,
    upcasters: Upcasters,
    /// Input columns as JSON can carry them (timestamps as integers in the output's unit).
    json_types: Vec<DataType>,
    json_schema: SchemaRef,
    offset_idx: Option<usize>,
    output: SchemaRef,
}

impl UpcastOperator {
    pub fn new(
        name: &str,
        upcasters: Upcasters,
        input: SchemaRef,
    ) -> std::result::Result<Self, String> {
        let errors = upcasters.validate();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if input.index_of(&upcasters.version_field).is_err() {
            return Err(format!(
                "the version field {:?} is not in the decoded schema",
                upcasters.version_field
            ));
        }
        let current = &upcasters.schema;
        let mut json_types = Vec::new();
        let mut fields = Vec::new();
        for f in input.fields() {
            let dt = match f.data_type() {
                DataType::Timestamp(unit, _) => {
                    // Integers in the unit the current schema reads them in.
                    let unit = match current.field_with_name(f.name()).map(|o| o.data_type()) {
                        Ok(DataType::Timestamp(out, _)) => *out,
                        _ => *unit,
                    };
                    json_types.push(DataType::Timestamp(unit, None));
                    DataType::Int64
                }
                other => {
                    json_types.push(other.clone());
                    other.clone()
                }
            };
            fields.push(Field::new(f.name(), dt, f.is_nullable()));
        }
        let offset_idx = input.index_of(OFFSET_COLUMN).ok();
        let mut out: Vec<Field> = current
            .fields()
            .iter()
            .filter(|f| f.name() != OFFSET_COLUMN)
            .map(|f| f.as_ref().clone())
            .collect();
        if offset_idx.is_some() {
            out.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        }
        Ok(Self {
            name: name.to_string(),
            upcasters,
            json_types,
            json_schema: Arc::new(Schema::new(fields)),
            offset_idx,
            output: Arc::new(Schema::new(out)),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    fn rows_as_json(&self, batch: &RecordBatch) -> Result<Vec<u8>> {
        let cols = batch
            .columns()
            .iter()
            .zip(&self.json_types)
            .zip(self.json_schema.fields())
            .map(|((c, via), f)| cast(&cast(c, via)?, f.data_type()))
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(|e| self.err(e))?;
        let b = RecordBatch::try_new(self.json_schema.clone(), cols).map_err(|e| self.err(e))?;
        let mut buf = Vec::new();
        let mut w = LineDelimitedWriter::new(&mut buf);
        w.write(&b)
            .and_then(|_| w.finish())
            .map_err(|e| self.err(e))?;
        drop(w);
        Ok(buf)
    }

    /// Decodes JSON lines into the output schema.
    fn decode(&self, lines: &[u8], rows: usize) -> std::result::Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(self.output.clone())
            .with_batch_size(rows.max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        decoder.decode(lines).map_err(|e| e.to_string())?;
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(b) => Ok(b),
            None => Ok(RecordBatch::new_empty(self.output.clone())),
        }
    }
}

impl Operator for UpcastOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let json = self.rows_as_json(&batch)?;
        let offsets = weir_runtime::offset_column(&batch, self.offset_idx);
        let offset = |i: usize| offsets.as_ref().map_or(-1, |o| o.value(i));
        // (offset, upcast line) of the rows that upcast.
        let mut good: Vec<(i64, Vec<u8>)> = Vec::with_capacity(batch.num_rows());
        for (i, line) in json
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let mut event: Map<String, Value> =
                serde_json::from_slice(line).map_err(|e| self.err(e))?;
            match self.upcasters.upcast_event(&mut event) {
                Ok(()) => {
                    let mut out = serde_json::to_vec(&event).map_err(|e| self.err(e))?;
                    out.push(b'\n');
                    good.push((offset(i), out));
                }
                // Stateless: the task keeps the message key's order of a retried event.
                Err((failure, reason)) => {
                    emit.fail(offset(i), None, failure, ErrorKind::OperatorError, reason)
                }
            }
        }
        if good.is_empty() {
            return Ok(());
        }
        let all: Vec<u8> = good.iter().flat_map(|(_, l)| l.iter().copied()).collect();
        match self.decode(&all, good.len()) {
            Ok(b) => emit.emit(b),
            Err(_) => {
                // Some row does not fit the current schema: find it, keep the others.
                let mut fits = Vec::new();
                for (offset, line) in &good {
                    match self.decode(line, 1) {
                        Ok(_) => fits.extend_from_slice(line),
                        Err(e) => emit.reject(
                            *offset,
                            ErrorKind::OperatorError,
                            format!("the upcast event does not fit the current schema: {e}"),
                        ),
                    }
                }
                let b = self
                    .decode(&fits, good.len())
                    .map_err(|e| self.err(format!("rows that fit one by one do not fit: {e}")))?;
                emit.emit(b);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Array, AsArray, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::TimeUnit;
    use serde_json::json;

    /// v1: no currency; v2: currency; v3: amount in cents (`amount_cents`).
    fn current() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
            Field::new("currency", DataType::Utf8, false),
            Field::new("amount_cents", DataType::Int64, false),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
        ]))
    }

    fn upcasters() -> Upcasters {
        Upcasters::new("version", 3, current())
            .step(1, |e| {
                e.insert("currency".into(), json!("EUR"));
                Ok(())
            })
            .step(2, |e| {
                let amount = e
                    .remove("amount")
                    .and_then(|a| a.as_f64())
                    .ok_or("a v2 event needs a numeric amount")?;
                e.insert(
                    "amount_cents".into(),
                    json!((amount * 100.0).round() as i64),
                );
                Ok(())
            })
    }

    fn decoded() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Utf8, false),
            Field::new("version", DataType::Int64, true),
            Field::new("currency", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("amount_cents", DataType::Int64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    type Row<'a> = (
        &'a str,
        Option<i64>,
        Option<&'a str>,
        Option<f64>,
        Option<i64>,
    );

    fn input(rows: &[Row<'_>]) -> RecordBatch {
        let n = rows.len() as i64;
        RecordBatch::try_new(
            decoded(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(
                    rows.iter()
                        .map(|r| r.3)
                        .collect::<datafusion::arrow::array::Float64Array>(),
                ),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n).map(|i| 1_700_000_000_000 + i),
                )),
                Arc::new(Int64Array::from_iter_values(100..100 + n)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn older_versions_are_upcast_step_by_step_and_the_current_one_passes_unchanged() {
        let mut op = UpcastOperator::new("upcast", upcasters(), decoded()).unwrap();
        let mut emit = Emit::default();
        op.process(
            input(&[
                ("o1", Some(1), None, Some(12.5), None),
                ("o2", Some(2), Some("USD"), Some(3.0), None),
                ("o3", Some(3), Some("GBP"), None, Some(700)),
            ]),
            &mut emit,
        )
        .unwrap();
        assert!(emit.rejects().is_empty(), "{:?}", emit.rejects());
        let b = &emit.batches()[0];
        assert_eq!(b.schema(), op.output_schema());
        let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
        let ints = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        };
        assert_eq!(ints("version"), [3, 3, 3]);
        assert_eq!(ints("amount_cents"), [1250, 300, 700]);
        assert_eq!(ints(OFFSET_COLUMN), [100, 101, 102]);
        let currency = col("currency");
        let currency: Vec<&str> = currency.as_string::<i32>().iter().flatten().collect();
        assert_eq!(currency, ["EUR", "USD", "GBP"]);
        let time = col("time");
        let time = time
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .values()
            .to_vec();
        assert_eq!(
            time,
            [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]
        );
    }

    #[test]
    fn unknown_missing_and_unfit_versions_go_to_the_dlq_with_the_reason_and_others_go_on() {
        let mut op = UpcastOperator::new("upcast", upcasters(), decoded()).unwrap();
        let mut emit = Emit::default();
        op.process(
            input(&[
                ("ok", Some(1), None, Some(1.0), None),
                ("future", Some(9), Some("EUR"), None, Some(1)),
                ("none", None, Some("EUR"), None, Some(1)),
                ("ancient", Some(0), None, Some(1.0), None),
                ("no-amount", Some(2), Some("EUR"), None, None),
                ("v3-unfit", Some(3), None, None, Some(5)),
            ]),
            &mut emit,
        )
        .unwrap();
        let rejects: Vec<(i64, String)> = emit
            .rejects()
            .iter()
            .map(|r| (r.offset, r.message.clone()))
            .collect();
        assert_eq!(rejects.len(), 5, "{rejects:?}");
        assert_eq!(rejects[0].0, 101);
        assert!(rejects[0]
            .1
            .contains("version 9 is newer than the current version 3"));
        assert_eq!(
            rejects[1],
            (102, "the event has no \"version\"".to_string())
        );
        assert_eq!(
            rejects[2],
            (103, "no upcaster from version 0 (current is 3)".to_string())
        );
        assert_eq!(
            rejects[3],
            (
                104,
                "upcasting version 2: a v2 event needs a numeric amount".to_string()
            )
        );
        assert_eq!(rejects[4].0, 105);
        assert!(
            rejects[4].1.contains("does not fit the current schema")
                && rejects[4].1.contains("currency"),
            "{}",
            rejects[4].1
        );
        let b = &emit.batches()[0];
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.column(0).as_string::<i32>().value(0), "ok");
    }

    #[test]
    fn impossible_upcasters_are_refused_with_every_reason() {
        let bad = Upcasters::new("v", 2, current()).step(2, |_| Ok(()));
        let err = UpcastOperator::new("upcast", bad, decoded()).err().unwrap();
        assert!(
            err.contains("step from version 2 is not older than the current version 2"),
            "{err}"
        );
        assert!(err.contains("\"v\" is not in the current schema"), "{err}");
    }

    #[test]
    fn a_panicking_step_rejects_only_its_event() {
        let up = Upcasters::new("version", 2, current()).step(1, |e| {
            if e["order_id"] == "boom" {
                panic!("step exploded");
            }
            e.insert("currency".into(), json!("EUR"));
            e.insert("amount_cents".into(), json!(1));
            Ok(())
        });
        let mut op = UpcastOperator::new("upcast", up, decoded()).unwrap();
        let mut emit = Emit::default();
        op.process(
            input(&[
                ("boom", Some(1), None, None, None),
                ("fine", Some(1), None, None, None),
            ]),
            &mut emit,
        )
        .unwrap();
        assert_eq!(emit.rejects().len(), 1);
        assert!(emit.rejects()[0].message.contains("step exploded"));
        assert_eq!(emit.batches()[0].num_rows(), 1);
    }
}
