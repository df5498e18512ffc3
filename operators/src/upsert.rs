//! A non-windowed `GROUP BY key`: every group is aggregated for ever, and the current values
//! of the groups that changed are emitted as an upsert stream keyed by the group keys (the
//! last row of a key is its value now). This is how a read model is written in SQL.
//!
//! Aggregation is DataFusion's `GroupsAccumulator`s, as in the windows. A `GroupsAccumulator`
//! can only evaluate by giving its state away, so an emission takes every group's state out
//! (`state`), merges it back (`merge_batch`), and merges the changed groups' rows of it into a
//! scratch accumulator that is evaluated: it costs time proportional to all groups. So
//! emissions are amortised: the changed groups are collected across batches and emitted once
//! a quarter of all groups changed, or [`EMIT_EVERY`] after the first pending change, or when
//! the partition is idle or its input ends. Each emission is thus paid for by as many changes
//! as a quarter of the groups, or lasts at most [`EMIT_EVERY`] of processing time; updates of
//! a key in between coalesce into its latest value, which is all an upsert sink keeps.
//! Pending changes are part of the checkpoint, so a restart emits them too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator};
use weir_runtime::{Fingerprint, OperatorState};

use crate::window::{
    merge_states, state_batch, update_accumulators, window_columns, window_fingerprint,
    AggregateSet, WindowConfig,
};

/// The longest a changed group waits, in processing time, before its row is emitted.
pub const EMIT_EVERY: Duration = Duration::from_millis(200);

/// The continuously updated aggregation of one partition.
pub struct GroupUpsert {
    name: String,
    key_idx: Vec<usize>,
    converter: RowConverter,
    aggs: AggregateSet,
    output: SchemaRef,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    /// Group id → key (row format), and back.
    keys: Vec<Box<[u8]>>,
    ids: HashMap<Box<[u8]>, usize>,
    /// Groups changed since the last emission, in order of first change; `is_pending[g]`.
    pending: Vec<usize>,
    is_pending: Vec<bool>,
    pending_since: Option<Instant>,
    fingerprint: Fingerprint,
}

impl GroupUpsert {
    pub fn new(
        name: &str,
        cfg: &WindowConfig,
        input: SchemaRef,
        default_time: &str,
    ) -> Result<Self, String> {
        let (_, key_idx, key_fields) = window_columns(cfg, &input, default_time)?;
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| format!("group keys: {e}"))?;
        let aggs = AggregateSet::new(&cfg.aggregates, &input)?;
        let fingerprint = window_fingerprint(cfg, &input, default_time, &aggs, None);
        let accs = aggs
            .accumulators()
            .map_err(|e| format!("aggregates: {e}"))?;
        let mut fields = key_fields;
        fields.extend(aggs.fields.iter().cloned());
        Ok(Self {
            name: name.to_string(),
            key_idx,
            converter,
            aggs,
            output: Arc::new(Schema::new(fields)),
            accs,
            keys: Vec::new(),
            ids: HashMap::new(),
            pending: Vec::new(),
            is_pending: Vec::new(),
            pending_since: None,
            fingerprint,
        })
    }

    /// Emit the current values of the pending groups, in order of first change.
    fn flush(&mut self, emit: &mut Emit) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let changed = std::mem::take(&mut self.pending);
        for &g in &changed {
            self.is_pending[g] = false;
        }
        self.pending_since = None;
        let states = self.states()?;
        let idx = UInt32Array::from_iter_values(changed.iter().map(|&g| g as u32));
        let picked = states
            .iter()
            .map(|c| take(c.as_ref(), &idx, None).map_err(|e| self.err(e)))
            .collect::<Result<Vec<_>>>()?;
        let mut scratch = self.aggs.accumulators().map_err(|e| self.err(e))?;
        let ids: Vec<usize> = (0..changed.len()).collect();
        merge_states(
            &mut scratch,
            &self.aggs.state_counts,
            &picked,
            &ids,
            changed.len(),
        )
        .map_err(|e| self.err(e))?;
        let mut columns = self.key_columns(&changed)?;
        for acc in &mut scratch {
            columns.push(acc.evaluate(EmitTo::All).map_err(|e| self.err(e))?);
        }
        emit.emit(RecordBatch::try_new(self.output.clone(), columns).map_err(|e| self.err(e))?);
        Ok(())
    }

    /// Mark a group changed.
    fn touch(&mut self, g: usize) {
        if !self.is_pending[g] {
            self.is_pending[g] = true;
            self.pending.push(g);
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    /// Take every group's state out and merge it back: the state columns, all groups.
    fn states(&mut self) -> Result<Vec<ArrayRef>> {
        let mut states = Vec::new();
        for acc in &mut self.accs {
            states.extend(
                acc.state(EmitTo::All)
                    .map_err(|e| WeirError::operator(&self.name, e))?,
            );
        }
        let mut accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
        let ids: Vec<usize> = (0..self.keys.len()).collect();
        merge_states(
            &mut accs,
            &self.aggs.state_counts,
            &states,
            &ids,
            self.keys.len(),
        )
        .map_err(|e| self.err(e))?;
        self.accs = accs;
        Ok(states)
    }

    fn key_columns(&self, groups: &[usize]) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        self.converter
            .convert_rows(groups.iter().map(|&g| parser.parse(&self.keys[g])))
            .map_err(|e| self.err(e))
    }
}

impl Operator for GroupUpsert {
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
        Some(self.fingerprint.clone())
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(|e| self.err(e))?;
        let mut group_ids = Vec::with_capacity(n);
        for i in 0..n {
            let key = rows.row(i);
            let g = match self.ids.get(key.as_ref()) {
                Some(&g) => g,
                None => {
                    let g = self.keys.len();
                    self.keys.push(key.as_ref().into());
                    self.ids.insert(key.as_ref().into(), g);
                    self.is_pending.push(false);
                    g
                }
            };
            self.touch(g);
            group_ids.push(g);
        }
        emit.count_absorbed(n as u64);
        let args = self.aggs.evaluate(&batch).map_err(|e| self.err(e))?;
        update_accumulators(&mut self.accs, &args, &group_ids, self.keys.len())
            .map_err(|e| WeirError::operator(&self.name, e))?;
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if self.pending.len() * 4 >= self.keys.len() || since.elapsed() >= EMIT_EVERY {
            self.flush(emit)?;
        }
        Ok(())
    }

    fn on_idle(&mut self, _idle_for: std::time::Duration, emit: &mut Emit) -> Result<()> {
        self.flush(emit)
    }

    fn on_end_of_input(&mut self, emit: &mut Emit) -> Result<()> {
        self.flush(emit)
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        if self.keys.is_empty() {
            return Ok(OperatorState::default());
        }
        let all: Vec<usize> = (0..self.keys.len()).collect();
        let mut columns = self.key_columns(&all)?;
        columns.extend(self.states()?);
        Ok(OperatorState {
            meta: serde_json::json!({ "pending": self.pending }),
            batches: vec![state_batch(columns).map_err(|e| self.err(e))?],
            config: None,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
        self.keys.clear();
        self.ids.clear();
        self.pending.clear();
        self.is_pending.clear();
        self.pending_since = None;
        let b = match state.batches.as_slice() {
            [] => return Ok(()),
            [b] => b,
            more => {
                return Err(self.err(format!(
                    "checkpointed group state has {} batches, expected one",
                    more.len()
                )))
            }
        };
        let k = self.key_idx.len();
        let expected = k + self.aggs.state_counts.iter().sum::<usize>();
        if b.num_columns() != expected {
            return Err(self.err(format!(
                "checkpointed group state has {} columns, expected {expected}: the keys or aggregates changed",
                b.num_columns()
            )));
        }
        let rows = self
            .converter
            .convert_columns(&b.columns()[..k])
            .map_err(|e| self.err(e))?;
        for i in 0..b.num_rows() {
            let key: Box<[u8]> = rows.row(i).as_ref().into();
            self.ids.insert(key.clone(), i);
            self.keys.push(key);
        }
        let ids: Vec<usize> = (0..b.num_rows()).collect();
        merge_states(
            &mut self.accs,
            &self.aggs.state_counts,
            &b.columns()[k..],
            &ids,
            b.num_rows(),
        )
        .map_err(|e| self.err(e))?;
        // Changes not emitted before the checkpoint are emitted after the restart.
        self.is_pending = vec![false; self.keys.len()];
        let pending = state.meta.get("pending").and_then(|v| v.as_array());
        for g in pending.into_iter().flatten() {
            match g.as_u64().map(|g| g as usize) {
                Some(g) if g < self.keys.len() => self.touch(g),
                _ => return Err(self.err(format!("checkpointed pending group {g} is not a group"))),
            }
        }
        if !self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{AggregateConfig, LatePolicy, WindowKind};
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("v", DataType::Int64, false),
        ]))
    }

    fn batch(rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|_| 0),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn upsert() -> GroupUpsert {
        let cfg = WindowConfig {
            kind: WindowKind::Continuous,
            keys: vec!["key".into()],
            time_column: None,
            max_out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
            late_policy: LatePolicy::Dlq,
            aggregates: vec![AggregateConfig {
                function: "sum".into(),
                column: Some("v".into()),
                alias: Some("s".into()),
                distinct: false,
                sql: None,
            }],
            guards: Default::default(),
        };
        GroupUpsert::new("upsert", &cfg, input(), "ts").unwrap()
    }

    /// (key, sum) of the rows one `process` emitted.
    fn process(op: &mut GroupUpsert, rows: &[(&str, i64)]) -> Vec<(String, i64)> {
        let mut emit = Emit::default();
        op.process(batch(rows), &mut emit).unwrap();
        let mut out = Vec::new();
        for b in emit.batches() {
            let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend((0..b.num_rows()).map(|r| (k.value(r).to_string(), s.value(r))));
        }
        out
    }

    #[test]
    fn each_batch_emits_the_current_values_of_the_groups_it_changed_only() {
        let mut op = upsert();
        assert_eq!(
            process(&mut op, &[("a", 1), ("b", 10), ("a", 2)]),
            vec![("a".into(), 3), ("b".into(), 10)]
        );
        assert_eq!(process(&mut op, &[("b", 5)]), vec![("b".into(), 15)]);
        assert_eq!(
            process(&mut op, &[("c", 7), ("a", 1)]),
            vec![("c".into(), 7), ("a".into(), 4)]
        );
    }

    #[test]
    fn changes_of_few_groups_coalesce_until_a_quarter_changed_or_the_partition_is_idle() {
        let mut op = upsert();
        let many: Vec<(String, i64)> = (0..100).map(|i| (format!("k{i}"), 1)).collect();
        let rows: Vec<(&str, i64)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(process(&mut op, &rows).len(), 100);
        // 2 of 100 groups changed: held back, then coalesced into their latest values.
        assert!(process(&mut op, &[("k1", 5), ("k2", 1)]).is_empty());
        assert!(process(&mut op, &[("k1", 5)]).is_empty());
        let state = op.snapshot().unwrap();
        let mut emit = Emit::default();
        op.on_idle(std::time::Duration::from_secs(5), &mut emit)
            .unwrap();
        let flushed = |emit: &Emit| -> Vec<(String, i64)> {
            let mut out = Vec::new();
            for b in emit.batches() {
                let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                out.extend((0..b.num_rows()).map(|r| (k.value(r).to_string(), s.value(r))));
            }
            out
        };
        let want = vec![("k1".to_string(), 11), ("k2".to_string(), 2)];
        assert_eq!(flushed(&emit), want);
        // The pending changes were in the checkpoint: a restart emits them too.
        let mut restored = upsert();
        restored.restore(state).unwrap();
        let mut emit = Emit::default();
        restored.on_end_of_input(&mut emit).unwrap();
        assert_eq!(flushed(&emit), want);
        // 25 of 100 changed: emitted with the batch.
        let quarter: Vec<(&str, i64)> = rows[..25].to_vec();
        assert_eq!(process(&mut restored, &quarter).len(), 25);
    }

    #[test]
    fn restore_of_a_snapshot_keeps_every_group() {
        let mut op = upsert();
        process(&mut op, &[("a", 1), ("b", 10)]);
        let state = op.snapshot().unwrap();
        assert_eq!(process(&mut op, &[("a", 5)]), vec![("a".into(), 6)]);
        let mut restored = upsert();
        restored.restore(state).unwrap();
        assert_eq!(process(&mut restored, &[("a", 5)]), vec![("a".into(), 6)]);
        assert_eq!(process(&mut restored, &[("b", 1)]), vec![("b".into(), 11)]);
    }
}
