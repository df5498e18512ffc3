//! Keyed projections: a user fold over each key's events, for read models (CQRS).
//!
//! The operator turns each input row into the user's event type (through JSON, timestamps as
//! epoch millis), folds it into the state of its key in offset order, and after each batch
//! emits the current row of every key that changed (an upsert stream). An event the fold
//! rejects, or panics on, goes to the DLQ and leaves the key's state as it was.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::{LineDelimitedWriter, ReaderBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator, OFFSET_COLUMN};
use weir_runtime::OperatorState;

/// A read model: how one event changes the state of its key, and the row a state shows as.
pub trait Projection: Send + 'static {
    type Event: DeserializeOwned;
    type State: Serialize + DeserializeOwned + Default + Clone + Send;
    type Row<'a>: Serialize
    where
        Self: 'a;

    /// The key whose state this event changes.
    fn key(&self, event: &Self::Event) -> String;
    /// Fold one event into its key's state. `Err` sends the event to the DLQ.
    fn apply(&self, state: &mut Self::State, event: Self::Event)
        -> std::result::Result<(), String>;
    /// The read-model row of a key.
    fn row<'a>(&'a self, key: &'a str, state: &'a Self::State) -> Self::Row<'a>;
    /// Schema of [`Projection::row`] as Arrow.
    fn row_schema(&self) -> SchemaRef;
}

pub struct ProjectionOperator<P: Projection> {
    name: String,
    projection: P,
    states: HashMap<String, P::State>,
    input_cols: Vec<usize>,
    json_schema: SchemaRef,
    offset_idx: Option<usize>,
    output: SchemaRef,
}

impl<P: Projection> ProjectionOperator<P> {
    pub fn new(name: &str, projection: P, input: SchemaRef) -> Self {
        let mut input_cols = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in input.fields().iter().enumerate() {
            if f.name() == OFFSET_COLUMN {
                continue;
            }
            input_cols.push(i);
            let dt = match f.data_type() {
                DataType::Timestamp(_, _) => DataType::Int64,
                other => other.clone(),
            };
            fields.push(Field::new(f.name(), dt, f.is_nullable()));
        }
        let output = projection.row_schema();
        Self {
            name: name.to_string(),
            projection,
            states: HashMap::new(),
            input_cols,
            json_schema: Arc::new(Schema::new(fields)),
            offset_idx: input.index_of(OFFSET_COLUMN).ok(),
            output,
        }
    }

    /// Current state of a key (for tests and inspection).
    pub fn state(&self, key: &str) -> Option<&P::State> {
        self.states.get(key)
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    fn rows_as_json(&self, batch: &RecordBatch) -> Result<Vec<u8>> {
        let cols = self
            .input_cols
            .iter()
            .zip(self.json_schema.fields())
            .map(|(i, f)| cast(batch.column(*i), f.data_type()))
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
}

impl<P: Projection> Operator for ProjectionOperator<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let json = self.rows_as_json(&batch)?;
        let offsets = self.offset_idx.and_then(|i| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
        });
        let offset = |i: usize| offsets.as_ref().map_or(-1, |o| o.value(i));
        let mut changed: Vec<String> = Vec::new();
        let mut applied = 0u64;
        for (i, line) in json
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let event: P::Event = match serde_json::from_slice(line) {
                Ok(e) => e,
                Err(e) => {
                    emit.reject(
                        offset(i),
                        ErrorKind::OperatorError,
                        format!("event does not fit the projection: {e}"),
                    );
                    continue;
                }
            };
            let key = self.projection.key(&event);
            let mut next = self.states.get(&key).cloned().unwrap_or_default();
            let projection = &self.projection;
            match catch_unwind(AssertUnwindSafe(|| projection.apply(&mut next, event))) {
                Ok(Ok(())) => {
                    if !self.states.contains_key(&key) || !changed.contains(&key) {
                        changed.push(key.clone());
                    }
                    self.states.insert(key, next);
                    applied += 1;
                }
                Ok(Err(e)) => emit.reject(offset(i), ErrorKind::OperatorError, e),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    emit.reject(
                        offset(i),
                        ErrorKind::OperatorError,
                        format!("projection panicked: {msg}"),
                    );
                }
            }
        }
        emit.count_absorbed(applied);
        if changed.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for key in &changed {
            let state = self
                .states
                .get(key)
                .expect("invariant: changed keys have state");
            serde_json::to_writer(&mut rows, &self.projection.row(key, state))
                .map_err(|e| self.err(e))?;
            rows.push(b'\n');
        }
        let mut decoder = ReaderBuilder::new(self.output.clone())
            .with_batch_size(changed.len())
            .build_decoder()
            .map_err(|e| self.err(e))?;
        decoder
            .decode(&rows)
            .map_err(|e| self.err(format!("row does not fit row_schema: {e}")))?;
        if let Some(b) = decoder
            .flush()
            .map_err(|e| self.err(format!("row does not fit row_schema: {e}")))?
        {
            emit.emit(b);
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let mut keys: Vec<&String> = self.states.keys().collect();
        keys.sort();
        let states = keys
            .iter()
            .map(|k| serde_json::to_string(&self.states[*k]))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(keys)),
                Arc::new(StringArray::from(states)),
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(OperatorState {
            meta: serde_json::Value::Null,
            batches: vec![batch],
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.states.clear();
        for b in &state.batches {
            let (Some(keys), Some(states)) = (
                b.column(0).as_any().downcast_ref::<StringArray>(),
                b.column(1).as_any().downcast_ref::<StringArray>(),
            ) else {
                return Err(self.err("checkpointed projection state has the wrong shape"));
            };
            for i in 0..b.num_rows() {
                let s: P::State = serde_json::from_str(states.value(i)).map_err(|e| {
                    self.err(format!(
                        "checkpointed state of key `{}`: {e}",
                        keys.value(i)
                    ))
                })?;
                self.states.insert(keys.value(i).to_string(), s);
            }
        }
        Ok(())
    }
}
