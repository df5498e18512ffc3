//! Keyed projections: a user fold over each key's events, for read models (CQRS).
//!
//! The operator turns each input row into the user's event type (through JSON, timestamps as
//! epoch millis, decimals as their exact text in a string: money never passes through a
//! float), folds it into the state of its key in offset order, and after each batch
//! emits the current row of every key that changed: a change stream of upserts and deletes.
//! A key whose state [`Projection::deleted`] says is gone (an order cancelled and purged) is
//! emitted as a delete, following the sink delete convention: the output has a Boolean
//! [`DELETED_COLUMN`] column, `true` on deletes (see [`weir_runtime::sink`]). The key's state
//! is dropped; a later event for it starts again from `State::default()`. An event the fold
//! rejects, or panics on, goes to the DLQ and leaves the key's state as it was; one it
//! refuses with [`EventError::Retryable`] (or panics on, when the pipeline retries panics) is
//! tried again on the pipeline's retry schedule, the key's later events waiting behind it
//! (`weir_runtime::task`, ARCHITECTURE.md "Retries before the DLQ"), and goes to the DLQ
//! after the last attempt.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::{LineDelimitedWriter, ReaderBuilder};
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, EventError, Failure, Operator, OFFSET_COLUMN};
use weir_runtime::{Fingerprint, OperatorState, DELETED_COLUMN};

/// A read model: how one event changes the state of its key, and the row a state shows as.
pub trait Projection: Send + 'static {
    type Event: DeserializeOwned;
    type State: Serialize + DeserializeOwned + Default + Clone + Send;
    type Row<'a>: Serialize
    where
        Self: 'a;

    /// The key whose state this event changes.
    fn key(&self, event: &Self::Event) -> String;
    /// Fold one event into its key's state. `Err` leaves the state as it was and sends the
    /// event to the DLQ: at once for [`EventError::Permanent`] (what `Err("...".into())` and
    /// `?` on a string error give), after the retry schedule's attempts for
    /// [`EventError::Retryable`] (a transient failure: a lookup that timed out), the key's
    /// later events waiting behind it meanwhile.
    fn apply(
        &self,
        state: &mut Self::State,
        event: Self::Event,
    ) -> std::result::Result<(), EventError>;
    /// Whether the read model has no row for this state any more (e.g. an order cancelled and
    /// purged): the key is emitted as a delete and its state dropped. Asked after every
    /// successful [`Projection::apply`]. By default a projection never deletes.
    fn deleted(&self, _state: &Self::State) -> bool {
        false
    }
    /// The read-model row of a key (for a deleted key, the row of its last state: sinks use
    /// its key columns).
    fn row<'a>(&'a self, key: &'a str, state: &'a Self::State) -> Self::Row<'a>;
    /// Schema of [`Projection::row`] as Arrow.
    fn row_schema(&self) -> SchemaRef;
    /// What the meaning of [`Projection::State`] depends on, beyond the row schema (which is
    /// part of the operator's fingerprint anyway): change it when a new version of the code
    /// cannot read the states an older one checkpointed, so a restore of them is refused
    /// (`weir_runtime::fingerprint`). Empty by default.
    fn state_version(&self) -> String {
        String::new()
    }
}

pub struct ProjectionOperator<P: Projection> {
    name: String,
    projection: P,
    states: HashMap<String, P::State>,
    input_cols: Vec<usize>,
    json_schema: SchemaRef,
    offset_idx: Option<usize>,
    /// [`Projection::row_schema`].
    rows: SchemaRef,
    /// The rows plus [`DELETED_COLUMN`].
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
                // A JSON number would be read as a float by serde.
                DataType::Decimal32(..)
                | DataType::Decimal64(..)
                | DataType::Decimal128(..)
                | DataType::Decimal256(..) => DataType::Utf8,
                other => other.clone(),
            };
            fields.push(Field::new(f.name(), dt, f.is_nullable()));
        }
        let rows = projection.row_schema();
        let mut output: Vec<Field> = rows.fields().iter().map(|f| f.as_ref().clone()).collect();
        output.push(Field::new(DELETED_COLUMN, DataType::Boolean, false));
        let output = Arc::new(Schema::new(output));
        Self {
            name: name.to_string(),
            projection,
            states: HashMap::new(),
            input_cols,
            json_schema: Arc::new(Schema::new(fields)),
            offset_idx: input.index_of(OFFSET_COLUMN).ok(),
            rows,
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

    fn fingerprint(&self) -> Option<Fingerprint> {
        let rows: Vec<String> = self
            .rows
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        Some(
            Fingerprint::new("projection")
                .set("rows", rows.join(", "))
                .set_unless(
                    "state_version",
                    self.projection.state_version(),
                    String::new(),
                ),
        )
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let json = self.rows_as_json(&batch)?;
        let offsets = weir_runtime::offset_column(&batch, self.offset_idx);
        let offset = |i: usize| offsets.as_ref().map_or(-1, |o| o.value(i));
        // Keys in the order they first changed in this batch; the last state of keys deleted
        // in this batch (their row is emitted as a delete).
        let mut changed: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut gone: HashMap<String, P::State> = HashMap::new();
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
            if emit.is_held(&key) {
                // An earlier event of the key waits for a retry: this one waits behind it.
                emit.hold(offset(i), &key);
                continue;
            }
            let mut next = self.states.get(&key).cloned().unwrap_or_default();
            let projection = &self.projection;
            let folded = catch_unwind(AssertUnwindSafe(|| {
                projection
                    .apply(&mut next, event)
                    .map(|()| projection.deleted(&next))
            }));
            match folded {
                Ok(Ok(deleted)) => {
                    if seen.insert(key.clone()) {
                        changed.push(key.clone());
                    }
                    if deleted {
                        self.states.remove(&key);
                        gone.insert(key, next);
                    } else {
                        gone.remove(&key);
                        self.states.insert(key, next);
                    }
                    applied += 1;
                }
                Ok(Err(e)) => emit.fail(
                    offset(i),
                    Some(&key),
                    e.failure(),
                    ErrorKind::OperatorError,
                    e.to_string(),
                ),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    emit.fail(
                        offset(i),
                        Some(&key),
                        Failure::Panic,
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
        let mut deletes = Vec::with_capacity(changed.len());
        for key in &changed {
            let (state, deleted) = match self.states.get(key) {
                Some(state) => (state, false),
                None => (
                    gone.get(key)
                        .expect("invariant: a changed key is live or deleted"),
                    true,
                ),
            };
            serde_json::to_writer(&mut rows, &self.projection.row(key, state))
                .map_err(|e| self.err(e))?;
            rows.push(b'\n');
            deletes.push(deleted);
        }
        let mut decoder = ReaderBuilder::new(self.rows.clone())
            .with_batch_size(changed.len())
            .build_decoder()
            .map_err(|e| self.err(e))?;
        decoder
            .decode(&rows)
            .map_err(|e| self.err(format!("row does not fit row_schema: {e}")))?;
        let Some(b) = decoder
            .flush()
            .map_err(|e| self.err(format!("row does not fit row_schema: {e}")))?
        else {
            return Ok(());
        };
        let mut columns = b.columns().to_vec();
        columns.push(Arc::new(BooleanArray::from(deletes)));
        let b = RecordBatch::try_new(self.output.clone(), columns).map_err(|e| self.err(e))?;
        emit.emit(b);
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
            config: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Ev {
        id: String,
        kind: String,
    }

    /// Counts events per id; `purge` deletes the id, `bad` is refused.
    struct Counts;

    impl Projection for Counts {
        type Event = Ev;
        type State = (i64, bool);
        type Row<'a> = serde_json::Value;

        fn key(&self, e: &Ev) -> String {
            e.id.clone()
        }

        fn apply(&self, s: &mut (i64, bool), e: Ev) -> std::result::Result<(), EventError> {
            match e.kind.as_str() {
                "bad" => return Err("bad event".into()),
                "flaky" => return Err(EventError::retryable("service down")),
                "purge" => s.1 = true,
                _ => s.0 += 1,
            }
            Ok(())
        }

        fn deleted(&self, s: &(i64, bool)) -> bool {
            s.1
        }

        fn row<'a>(&'a self, key: &'a str, s: &'a (i64, bool)) -> serde_json::Value {
            serde_json::json!({"id": key, "n": s.0})
        }

        fn row_schema(&self) -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("n", DataType::Int64, false),
            ]))
        }
    }

    fn input(rows: &[(&str, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            ],
        )
        .unwrap()
    }

    /// (id, n, deleted) of every emitted row.
    fn changes(
        op: &mut ProjectionOperator<Counts>,
        rows: &[(&str, &str)],
    ) -> Vec<(String, i64, bool)> {
        let mut emit = Emit::default();
        op.process(input(rows), &mut emit).unwrap();
        let mut out = Vec::new();
        for b in emit.batches() {
            assert_eq!(b.schema(), op.output_schema());
            let ids = b.column(0).as_string::<i32>();
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            let d = b.column(2).as_boolean();
            for r in 0..b.num_rows() {
                out.push((ids.value(r).to_string(), n.value(r), d.value(r)));
            }
        }
        out
    }

    fn operator() -> ProjectionOperator<Counts> {
        ProjectionOperator::new("counts", Counts, input(&[]).schema())
    }

    /// Sums exact decimal amounts per id, kept as hundredths.
    struct Sums;

    #[derive(Deserialize)]
    struct Amount {
        id: String,
        amount: String,
    }

    impl Projection for Sums {
        type Event = Amount;
        type State = i128;
        type Row<'a> = serde_json::Value;

        fn key(&self, e: &Amount) -> String {
            e.id.clone()
        }

        fn apply(&self, s: &mut i128, e: Amount) -> std::result::Result<(), EventError> {
            let (int, frac) = e.amount.split_once('.').ok_or("no fraction")?;
            *s += int.parse::<i128>().map_err(|e| e.to_string())? * 100
                + frac.parse::<i128>().map_err(|e| e.to_string())?;
            Ok(())
        }

        fn row<'a>(&'a self, key: &'a str, s: &'a i128) -> serde_json::Value {
            serde_json::json!({"id": key, "total": format!("{}.{:02}", s / 100, s % 100)})
        }

        fn row_schema(&self) -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("total", DataType::Decimal128(38, 2), false),
            ]))
        }
    }

    #[test]
    fn a_decimal_reaches_the_fold_as_its_exact_text_and_a_decimal_row_column_takes_it_back() {
        use datafusion::arrow::array::Decimal128Array;
        use datafusion::arrow::datatypes::Decimal128Type;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("amount", DataType::Decimal128(18, 2), false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        // 0.10 + 0.20 (a float sum is 0.30000000000000004) and a value past 2^53 hundredths.
        let amounts = [10i128, 20, 9_007_199_254_740_993];
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(["a", "a", "b"])),
                Arc::new(
                    Decimal128Array::from_iter_values(amounts)
                        .with_precision_and_scale(18, 2)
                        .unwrap(),
                ),
                Arc::new(Int64Array::from_iter_values(0..3)),
            ],
        )
        .unwrap();
        let mut op = ProjectionOperator::new("sums", Sums, schema);
        let mut emit = Emit::default();
        op.process(batch, &mut emit).unwrap();
        let b = &emit.batches()[0];
        let totals = b.column(1).as_primitive::<Decimal128Type>();
        let got: Vec<(String, i128)> = (0..b.num_rows())
            .map(|r| {
                (
                    b.column(0).as_string::<i32>().value(r).to_string(),
                    totals.value(r),
                )
            })
            .collect();
        assert_eq!(got, [("a".into(), 30), ("b".into(), 9_007_199_254_740_993)]);
    }

    #[test]
    fn a_key_the_fold_deletes_is_emitted_as_a_delete_and_its_state_dropped() {
        let mut op = operator();
        assert_eq!(
            changes(&mut op, &[("a", "x"), ("b", "x"), ("a", "x")]),
            [("a".into(), 2, false), ("b".into(), 1, false)]
        );
        assert_eq!(
            changes(&mut op, &[("a", "purge"), ("b", "x")]),
            [("a".into(), 2, true), ("b".into(), 2, false)]
        );
        assert!(op.state("a").is_none());
        // A deleted key starts again from the default state.
        assert_eq!(changes(&mut op, &[("a", "x")]), [("a".into(), 1, false)]);
    }

    #[test]
    fn within_a_batch_the_last_change_of_a_key_wins() {
        let mut op = operator();
        assert_eq!(
            changes(&mut op, &[("a", "x"), ("a", "purge"), ("a", "x")]),
            [("a".into(), 1, false)]
        );
        assert_eq!(
            changes(&mut op, &[("b", "x"), ("b", "purge")]),
            [("b".into(), 1, true)]
        );
    }

    #[test]
    fn a_refused_event_neither_changes_nor_deletes_its_key() {
        let mut op = operator();
        changes(&mut op, &[("a", "x")]);
        let mut emit = Emit::default();
        op.process(input(&[("a", "bad")]), &mut emit).unwrap();
        assert!(emit.batches().is_empty());
        assert_eq!(emit.rejects().len(), 1);
        assert_eq!(emit.rejects()[0].message, "bad event");
        assert_eq!(op.state("a"), Some(&(1, false)));
    }

    #[test]
    fn a_retryable_failure_holds_its_key_behind_it_and_other_keys_go_on() {
        let mut op = operator();
        let mut emit = Emit::with_retries(HashSet::new(), false);
        let rows = [
            ("a", "x"),
            ("a", "flaky"),
            ("b", "x"),
            ("a", "x"),
            ("b", "bad"),
        ];
        op.process(input(&rows), &mut emit).unwrap();
        let requests: Vec<(i64, Option<String>, bool)> = emit
            .take_retry_requests()
            .into_iter()
            .map(|r| (r.offset, r.key, r.failed.is_some()))
            .collect();
        assert_eq!(
            requests,
            [(1, Some("a".into()), true), (3, Some("a".into()), false)]
        );
        // The permanent failure of another key is dead-lettered at once.
        assert_eq!(emit.rejects().len(), 1);
        assert_eq!(emit.rejects()[0].offset, 4);
        assert_eq!(op.state("a"), Some(&(1, false)));
        assert_eq!(op.state("b"), Some(&(1, false)));
        // A key the task holds is not folded at all.
        let mut emit = Emit::with_retries(HashSet::from(["b".to_string()]), false);
        op.process(input(&[("b", "x"), ("a", "x")]), &mut emit)
            .unwrap();
        assert_eq!(emit.take_retry_requests().len(), 1);
        assert_eq!(op.state("b"), Some(&(1, false)));
        assert_eq!(op.state("a"), Some(&(2, false)));
        // Without retries a retryable failure is a dead letter like any other.
        let mut emit = Emit::default();
        op.process(input(&[("a", "flaky")]), &mut emit).unwrap();
        assert_eq!(emit.rejects()[0].message, "service down");
        assert!(emit.take_retry_requests().is_empty());
    }

    #[test]
    fn deleted_keys_stay_deleted_after_snapshot_and_restore() {
        let mut op = operator();
        changes(&mut op, &[("a", "x"), ("b", "x"), ("b", "purge")]);
        let snap = op.snapshot().unwrap();
        let mut restored = operator();
        restored.restore(snap).unwrap();
        assert_eq!(restored.state("a"), Some(&(1, false)));
        assert!(restored.state("b").is_none());
    }
}
