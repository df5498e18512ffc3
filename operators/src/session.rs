//! Event-time session windows per key, aggregated incrementally by DataFusion's accumulators.
//!
//! Per key, events closer than `gap` to each other form one session `[first event, last
//! event + gap)`; an event that bridges two sessions merges them. Each session is one group
//! of a single set of `GroupsAccumulator`s. A merge only records which group absorbed which;
//! at the end of the batch the accumulators' intermediate state is taken out (`state`) and
//! merged back (`merge_batch`) into fresh accumulators with the absorbed groups mapped onto
//! the surviving one, which is DataFusion's own way of combining partial aggregates. The same
//! pass emits the sessions the watermark has closed and compacts the group ids.
//!
//! The watermark advances row by row, as in [`crate::window`]: a session closes when the
//! watermark reaches `last event + gap + allowed_lateness`, and from that row on it accepts
//! no event, even before it is emitted at the end of the batch. So the output does not depend
//! on batch boundaries, and equals a batch computation of the sessions over the on-time
//! events. An event is late when it joins no open session and its own session
//! `[t, t + gap)` would already be closed.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator, OFFSET_COLUMN};
use weir_runtime::watermark::{is_closed, wall_clock_ms, WatermarkGuards, WatermarkTracker};
use weir_runtime::{Fingerprint, OperatorState};

use crate::window::{
    event_columns, future_bound, idle_ms, merge_states, reject_future, state_batch,
    update_accumulators, window_bound_fields, window_columns, window_fingerprint, AggregateSet,
    LatePolicy, WindowConfig, WindowKind,
};

/// One session: its group in the accumulators and its event-time extent.
#[derive(Debug, Clone)]
struct Session {
    key: Box<[u8]>,
    start: i64,
    last: i64,
    /// Set when another session absorbed this one in the current batch.
    merged_into: Option<usize>,
}

/// The session-window aggregation operator of one partition.
pub struct SessionWindow {
    name: String,
    gap_ms: i64,
    allowed_lateness_ms: i64,
    late_policy: LatePolicy,
    time_idx: usize,
    key_idx: Vec<usize>,
    offset_idx: Option<usize>,
    converter: RowConverter,
    aggs: AggregateSet,
    output: SchemaRef,
    watermark: WatermarkTracker,
    guards: WatermarkGuards,
    /// The watermark after the last input: where an idle advance starts from.
    idle_base: Option<i64>,
    /// The wall clock `max_future_ms` is measured against (epoch ms).
    clock: fn() -> i64,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    /// Indexed by accumulator group id.
    sessions: Vec<Session>,
    /// Key (row format) → ids of its sessions that no other session absorbed.
    by_key: HashMap<Box<[u8]>, Vec<usize>>,
    merged: bool,
    fingerprint: Fingerprint,
}

impl SessionWindow {
    /// Build against the input schema; errors name the offending column or function.
    pub fn new(
        name: &str,
        cfg: &WindowConfig,
        input: SchemaRef,
        default_time: &str,
    ) -> Result<Self, String> {
        let WindowKind::Session { gap_ms } = cfg.kind else {
            return Err("SessionWindow needs a session window".into());
        };
        if let Some(e) = cfg.kind.validate().into_iter().next() {
            return Err(e);
        }
        let (time_idx, key_idx, key_fields) = window_columns(cfg, &input, default_time)?;
        let converter = RowConverter::new(
            key_fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| format!("session keys: {e}"))?;
        let aggs = AggregateSet::new(&cfg.aggregates, &input)?;
        let fingerprint = window_fingerprint(cfg, &input, default_time, &aggs, None);
        let accs = aggs
            .accumulators()
            .map_err(|e| format!("session aggregates: {e}"))?;
        let mut out_fields = key_fields;
        out_fields.extend(window_bound_fields());
        out_fields.extend(aggs.fields.iter().cloned());
        Ok(Self {
            name: name.to_string(),
            gap_ms,
            allowed_lateness_ms: cfg.allowed_lateness_ms,
            late_policy: cfg.late_policy,
            time_idx,
            key_idx,
            offset_idx: input.index_of(OFFSET_COLUMN).ok(),
            converter,
            aggs,
            output: Arc::new(Schema::new(out_fields)),
            watermark: WatermarkTracker::new(cfg.max_out_of_orderness_ms),
            guards: cfg.guards,
            idle_base: None,
            clock: wall_clock_ms,
            accs,
            sessions: Vec::new(),
            by_key: HashMap::new(),
            merged: false,
            fingerprint,
        })
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// Measure `max_future_ms` against this clock (epoch ms) instead of the wall clock.
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    fn root(&self, mut g: usize) -> usize {
        while let Some(next) = self.sessions[g].merged_into {
            g = next;
        }
        g
    }

    fn session_closed(&self, s: &Session, wm: Option<i64>) -> bool {
        is_closed(s.last + self.gap_ms, self.allowed_lateness_ms, wm)
    }

    /// The group of an event at `t` of `key`: it joins (and merges) the open sessions it
    /// overlaps, or starts one. `None` when it is late.
    fn assign(&mut self, key: &[u8], t: i64, wm: Option<i64>) -> Option<usize> {
        let gap = self.gap_ms;
        let ids = self.by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        let overlapping: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&g| {
                let s = &self.sessions[g];
                !self.session_closed(s, wm) && t < s.last + gap && s.start < t + gap
            })
            .collect();
        let Some((&target, absorbed)) = overlapping.split_first() else {
            if is_closed(t + gap, self.allowed_lateness_ms, wm) {
                return None;
            }
            let g = self.sessions.len();
            self.sessions.push(Session {
                key: key.into(),
                start: t,
                last: t,
                merged_into: None,
            });
            self.by_key.entry(key.into()).or_default().push(g);
            return Some(g);
        };
        let (mut start, mut last) = (t, t);
        for &g in &overlapping {
            start = start.min(self.sessions[g].start);
            last = last.max(self.sessions[g].last);
        }
        for &g in absorbed {
            self.sessions[g].merged_into = Some(target);
            self.merged = true;
        }
        let s = &mut self.sessions[target];
        s.start = start;
        s.last = last;
        if !absorbed.is_empty() {
            if let Some(list) = self.by_key.get_mut(key) {
                list.retain(|g| !absorbed.contains(g));
            }
        }
        Some(target)
    }

    /// Resolve merges, emit the sessions the watermark closed (every session when `all`) and
    /// compact the accumulators to the sessions still open.
    fn close(&mut self, all: bool, emit: &mut Emit) -> Result<()> {
        let wm = self.watermark.watermark();
        let closing = self
            .by_key
            .values()
            .flatten()
            .any(|&g| all || self.session_closed(&self.sessions[g], wm));
        if !closing && !self.merged {
            return Ok(());
        }
        let total = self.sessions.len();
        let mut states = Vec::new();
        for acc in &mut self.accs {
            states.extend(
                acc.state(EmitTo::All)
                    .map_err(|e| WeirError::operator(&self.name, e))?,
            );
        }
        if let Some(c) = states.iter().find(|c| c.len() != total) {
            return Err(self.err(format!(
                "invariant: accumulator state has {} groups, {total} sessions",
                c.len()
            )));
        }
        // New ids: surviving open sessions first-come, closed ones in their own numbering.
        let mut open_id = vec![usize::MAX; total];
        let mut closed_id = vec![usize::MAX; total];
        let (mut open, mut closed) = (Vec::new(), Vec::new());
        for g in 0..total {
            if self.sessions[g].merged_into.is_some() {
                continue;
            }
            if all || self.session_closed(&self.sessions[g], wm) {
                closed_id[g] = closed.len();
                closed.push(g);
            } else {
                open_id[g] = open.len();
                open.push(g);
            }
        }
        let (mut open_rows, mut open_ids, mut closed_rows, mut closed_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for g in 0..total {
            let r = self.root(g);
            if open_id[r] != usize::MAX {
                open_rows.push(g as u32);
                open_ids.push(open_id[r]);
            } else {
                closed_rows.push(g as u32);
                closed_ids.push(closed_id[r]);
            }
        }
        let pick = |rows: Vec<u32>| -> Result<Vec<ArrayRef>> {
            let idx = UInt32Array::from(rows);
            states
                .iter()
                .map(|c| take(c.as_ref(), &idx, None).map_err(|e| self.err(e)))
                .collect()
        };
        let open_state = pick(open_rows)?;
        let closed_state = pick(closed_rows)?;

        if !closed.is_empty() {
            let mut accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
            merge_states(
                &mut accs,
                &self.aggs.state_counts,
                &closed_state,
                &closed_ids,
                closed.len(),
            )
            .map_err(|e| self.err(e))?;
            let sessions: Vec<&Session> = closed.iter().map(|&g| &self.sessions[g]).collect();
            let mut columns = self.key_columns(sessions.iter().map(|s| &s.key[..]))?;
            columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                sessions.iter().map(|s| s.start),
            )));
            columns.push(Arc::new(TimestampMillisecondArray::from_iter_values(
                sessions.iter().map(|s| s.last + self.gap_ms),
            )));
            for acc in &mut accs {
                columns.push(acc.evaluate(EmitTo::All).map_err(|e| self.err(e))?);
            }
            emit.emit(RecordBatch::try_new(self.output.clone(), columns).map_err(|e| self.err(e))?);
        }

        let mut accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
        merge_states(
            &mut accs,
            &self.aggs.state_counts,
            &open_state,
            &open_ids,
            open.len(),
        )
        .map_err(|e| self.err(e))?;
        self.accs = accs;
        let sessions: Vec<Session> = open.iter().map(|&g| self.sessions[g].clone()).collect();
        self.set_sessions(sessions);
        Ok(())
    }

    /// Replace the sessions (all open, group id = position) and rebuild the key index.
    fn set_sessions(&mut self, sessions: Vec<Session>) {
        self.by_key.clear();
        for (g, s) in sessions.iter().enumerate() {
            self.by_key.entry(s.key.clone()).or_default().push(g);
        }
        self.sessions = sessions;
        self.merged = false;
    }

    fn key_columns<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        self.converter
            .convert_rows(keys.map(|k| parser.parse(k)))
            .map_err(|e| self.err(e))
    }
}

impl Operator for SessionWindow {
    fn watermark(&self) -> Option<i64> {
        self.watermark.watermark()
    }

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
        let (ts, offsets) =
            event_columns(&batch, self.time_idx, self.offset_idx).map_err(|e| self.err(e))?;
        let keys: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(|e| self.err(e))?;

        let mut accepted: Vec<u32> = Vec::with_capacity(n);
        let mut group_ids: Vec<usize> = Vec::with_capacity(n);
        let future = future_bound(&self.guards, self.clock);
        for i in 0..n {
            if ts.is_null(i) {
                if let Some(o) = &offsets {
                    emit.reject(o.value(i), ErrorKind::MissingField, "event time is null");
                }
                continue;
            }
            let t = ts.value(i);
            if let Some((_, now)) = future.filter(|(bound, _)| t > *bound) {
                reject_future(emit, &offsets, i, t, now, &self.guards);
                continue;
            }
            let wm = self.watermark.watermark();
            match self.assign(rows.row(i).as_ref(), t, wm) {
                Some(g) => {
                    accepted.push(i as u32);
                    group_ids.push(g);
                }
                None => match (self.late_policy, &offsets) {
                    (LatePolicy::Dlq, Some(o)) => emit.reject(
                        o.value(i),
                        ErrorKind::Late,
                        format!(
                            "event time {t} starts a session [{t}, {}) which closed at watermark {}",
                            t + self.gap_ms,
                            wm.unwrap_or_default()
                        ),
                    ),
                    _ => emit.count_late_dropped(1),
                },
            }
            self.watermark.observe(t);
        }
        emit.count_absorbed(accepted.len() as u64);

        if !accepted.is_empty() {
            let args = self.aggs.evaluate(&batch).map_err(|e| self.err(e))?;
            let args = if accepted.len() == n {
                args
            } else {
                let idx = UInt32Array::from(accepted);
                args.iter()
                    .map(|a| a.take(&idx).map_err(|e| self.err(e)))
                    .collect::<Result<Vec<_>>>()?
            };
            let total = self.sessions.len();
            update_accumulators(&mut self.accs, &args, &group_ids, total)
                .map_err(|e| WeirError::operator(&self.name, e))?;
        }
        self.idle_base = self.watermark.watermark();
        self.close(false, emit)
    }

    fn on_end_of_input(&mut self, emit: &mut Emit) -> Result<()> {
        self.close(true, emit)
    }

    /// With `idle_advance_ms`, an idle partition's watermark becomes its watermark at the
    /// last input plus the idle time ([`WatermarkGuards::idle_watermark`]), and the sessions
    /// it passes close; later events behind it are late.
    fn on_idle(&mut self, idle_for: std::time::Duration, emit: &mut Emit) -> Result<()> {
        match self
            .guards
            .idle_watermark(self.idle_base, idle_ms(idle_for))
        {
            Some(w) if self.watermark.advance_to(w) => self.close(false, emit),
            _ => Ok(()),
        }
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let meta = serde_json::json!({ "max_event_time": self.watermark.max_event_time() });
        if self.sessions.is_empty() {
            return Ok(OperatorState {
                meta,
                batches: Vec::new(),
                config: None,
            });
        }
        // `process` resolves merges before it returns, so every session here is open and its
        // group id is its position.
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                self.sessions.iter().map(|s| s.start),
            )),
            Arc::new(Int64Array::from_iter_values(
                self.sessions.iter().map(|s| s.last),
            )),
        ];
        columns.extend(self.key_columns(self.sessions.iter().map(|s| &s.key[..]))?);
        for acc in &mut self.accs {
            columns.extend(
                acc.state(EmitTo::All)
                    .map_err(|e| WeirError::operator(&self.name, e))?,
            );
        }
        let state = state_batch(columns).map_err(|e| self.err(e))?;
        // The accumulators gave their state away; rebuild them from it, exactly as a restart
        // would, so a snapshot never changes what is emitted later.
        self.restore_sessions(&state)?;
        Ok(OperatorState {
            meta,
            batches: vec![state],
            config: None,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let max = state.meta.get("max_event_time").and_then(|v| v.as_i64());
        self.watermark = self.watermark.with_max_event_time(max);
        self.idle_base = self.watermark.watermark();
        self.accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
        self.set_sessions(Vec::new());
        match state.batches.as_slice() {
            [] => Ok(()),
            [b] => self.restore_sessions(b),
            more => Err(self.err(format!(
                "checkpointed session state has {} batches, expected one",
                more.len()
            ))),
        }
    }
}

impl SessionWindow {
    /// Rebuild sessions and accumulators from [`Operator::snapshot`]'s batch.
    fn restore_sessions(&mut self, state: &RecordBatch) -> Result<()> {
        let k = self.key_idx.len();
        let expected = 2 + k + self.aggs.state_counts.iter().sum::<usize>();
        if state.num_columns() != expected {
            return Err(self.err(format!(
                "checkpointed session state has {} columns, expected {expected}: the keys or aggregates changed",
                state.num_columns()
            )));
        }
        let int = |i: usize| {
            state
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| self.err("checkpointed session bounds are not Int64"))
        };
        let (starts, lasts) = (int(0)?, int(1)?);
        let rows = self
            .converter
            .convert_columns(&state.columns()[2..2 + k])
            .map_err(|e| self.err(e))?;
        let n = state.num_rows();
        let sessions: Vec<Session> = (0..n)
            .map(|i| Session {
                key: rows.row(i).as_ref().into(),
                start: starts.value(i),
                last: lasts.value(i),
                merged_into: None,
            })
            .collect();
        let mut accs = self.aggs.accumulators().map_err(|e| self.err(e))?;
        let ids: Vec<usize> = (0..n).collect();
        merge_states(
            &mut accs,
            &self.aggs.state_counts,
            &state.columns()[2 + k..],
            &ids,
            n,
        )
        .map_err(|e| self.err(e))?;
        self.accs = accs;
        self.set_sessions(sessions);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::AggregateConfig;
    use datafusion::arrow::array::StringArray;
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
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    /// Rows of (key, ts, v); offsets continue from `first_offset`.
    fn batch(rows: &[(&str, i64, i64)], first_offset: i64) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().map(|r| r.1),
                )),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows.len() as i64).map(|i| first_offset + i),
                )),
            ],
        )
        .unwrap()
    }

    fn session(gap_ms: i64, ooo: i64, lateness: i64) -> SessionWindow {
        guarded(gap_ms, ooo, lateness, WatermarkGuards::default())
    }

    fn guarded(gap_ms: i64, ooo: i64, lateness: i64, guards: WatermarkGuards) -> SessionWindow {
        let agg = |function: &str, sql: Option<&str>, alias: &str| AggregateConfig {
            function: function.into(),
            column: None,
            alias: Some(alias.into()),
            distinct: false,
            sql: sql.map(Into::into),
        };
        let cfg = WindowConfig {
            kind: WindowKind::Session { gap_ms },
            keys: vec!["key".into()],
            time_column: None,
            max_out_of_orderness_ms: ooo,
            allowed_lateness_ms: lateness,
            late_policy: LatePolicy::Dlq,
            aggregates: vec![
                agg("count", None, "n"),
                agg("last_value", Some("last_value(v ORDER BY ts)"), "last_v"),
            ],
            guards,
        };
        SessionWindow::new("session", &cfg, input(), "ts").unwrap()
    }

    /// (key, start, end, n, last_v) of every emitted row, sorted.
    fn emitted(emit: &Emit) -> Vec<(String, i64, i64, i64, i64)> {
        let mut out = Vec::new();
        for b in emit.batches() {
            let s = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let t = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
                    .clone()
            };
            let n = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (k, st, en, c, l) = (s(0), t(1), t(2), n(3), n(4));
            for r in 0..b.num_rows() {
                out.push((
                    k.value(r).to_string(),
                    st.value(r),
                    en.value(r),
                    c.value(r),
                    l.value(r),
                ));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn an_event_bridging_two_sessions_merges_their_state() {
        let mut w = session(10, 100, 0);
        let mut emit = Emit::default();
        w.process(batch(&[("a", 0, 1), ("a", 15, 2)], 0), &mut emit)
            .unwrap();
        assert_eq!(w.open_sessions(), 2);
        w.process(batch(&[("a", 8, 3)], 2), &mut emit).unwrap();
        assert_eq!(w.open_sessions(), 1);
        w.on_end_of_input(&mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![("a".into(), 0, 25, 3, 2)]);
    }

    #[test]
    fn a_session_closes_when_the_watermark_passes_its_last_event_plus_gap() {
        let mut w = session(10, 0, 5);
        let mut emit = Emit::default();
        w.process(
            batch(&[("a", 0, 1), ("a", 5, 2), ("b", 19, 7)], 0),
            &mut emit,
        )
        .unwrap();
        assert!(emitted(&emit).is_empty(), "watermark 19 < 5 + 10 + 5");
        w.process(batch(&[("b", 20, 8)], 3), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![("a".into(), 0, 15, 2, 2)]);
        assert_eq!(w.open_sessions(), 1);
    }

    #[test]
    fn an_event_for_a_closed_session_is_late_and_goes_to_the_dlq_but_one_joining_an_open_session_is_not(
    ) {
        let mut w = session(10, 0, 0);
        let mut emit = Emit::default();
        w.process(batch(&[("b", 85, 2), ("a", 100, 1)], 0), &mut emit)
            .unwrap();
        // Watermark 100: b's session [85, 95) is closed and emitted. a at 80: its own
        // session [80, 90) would be closed and no open session of `a` is near: late.
        // c at 95 starts [95, 105): open.
        w.process(batch(&[("a", 80, 3), ("c", 95, 4)], 2), &mut emit)
            .unwrap();
        assert_eq!(emit.rejects().len(), 1);
        assert_eq!(emit.rejects()[0].offset, 2);
        assert_eq!(emit.rejects()[0].kind, ErrorKind::Late);
        // a at 91: [91, 101) would be open on its own and it joins a's session [100, 110).
        w.process(batch(&[("a", 91, 5)], 4), &mut emit).unwrap();
        assert_eq!(emit.rejects().len(), 1);
        w.on_end_of_input(&mut emit).unwrap();
        assert_eq!(
            emitted(&emit),
            vec![
                ("a".into(), 91, 110, 2, 1),
                ("b".into(), 85, 95, 1, 2),
                ("c".into(), 95, 105, 1, 4),
            ]
        );
    }

    #[test]
    fn restore_of_a_snapshot_continues_exactly_like_the_original() {
        let first = batch(&[("a", 0, 1), ("b", 3, 2), ("a", 15, 3)], 0);
        let second = batch(&[("a", 8, 4), ("b", 40, 5), ("a", 60, 6)], 3);
        let mut straight = session(10, 100, 0);
        let mut e1 = Emit::default();
        straight.process(first.clone(), &mut e1).unwrap();
        straight.process(second.clone(), &mut e1).unwrap();
        straight.on_end_of_input(&mut e1).unwrap();

        let mut before = session(10, 100, 0);
        let mut e2 = Emit::default();
        before.process(first, &mut e2).unwrap();
        let state = before.snapshot().unwrap();
        let mut after = session(10, 100, 0);
        after.restore(state).unwrap();
        after.process(second, &mut e2).unwrap();
        after.on_end_of_input(&mut e2).unwrap();
        assert_eq!(emitted(&e2), emitted(&e1));
        assert_eq!(emitted(&e1).len(), 4);
    }

    fn ms(ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(ms)
    }

    fn kinds(emit: &Emit) -> Vec<ErrorKind> {
        emit.rejects().iter().map(|r| r.kind).collect()
    }

    #[test]
    fn an_idle_partitions_open_session_closes_after_idle_advance_ms_with_no_further_input() {
        let idle = WatermarkGuards {
            idle_advance_ms: Some(5_000),
            max_future_ms: None,
        };
        let mut w = guarded(30_000, 0, 0, idle);
        let mut emit = Emit::default();
        w.process(batch(&[("a", 0, 1), ("a", 10_000, 2)], 0), &mut emit)
            .unwrap();
        w.on_idle(ms(4_999), &mut emit).unwrap();
        w.on_idle(ms(29_999), &mut emit).unwrap();
        assert!(
            emitted(&emit).is_empty(),
            "watermark 10 s + 29.999 s < 40 s"
        );
        w.on_idle(ms(30_000), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![("a".into(), 0, 40_000, 2, 2)]);
        assert_eq!(w.open_sessions(), 0);
        // An event of the closed session's time range arriving now is late, after a restart too.
        let state = w.snapshot().unwrap();
        let mut restarted = guarded(30_000, 0, 0, idle);
        restarted.restore(state).unwrap();
        let mut after = Emit::default();
        restarted
            .process(batch(&[("a", 5_000, 3)], 2), &mut after)
            .unwrap();
        assert_eq!(kinds(&after), vec![ErrorKind::Late]);
    }

    #[test]
    fn without_idle_advance_an_idle_partitions_session_stays_open() {
        let mut w = session(30_000, 0, 0);
        let mut emit = Emit::default();
        w.process(batch(&[("a", 0, 1)], 0), &mut emit).unwrap();
        w.on_idle(ms(3_600_000), &mut emit).unwrap();
        assert!(emitted(&emit).is_empty());
        assert_eq!(w.open_sessions(), 1);
    }

    #[test]
    fn session_events_far_ahead_of_the_wall_clock_go_to_the_dlq_and_leave_the_valid_ones_on_time() {
        const NOW: i64 = 1_767_624_000_000;
        let guards = WatermarkGuards {
            idle_advance_ms: None,
            max_future_ms: Some(60_000),
        };
        let mut w = guarded(10_000, 0, 0, guards).with_clock(|| NOW);
        let mut emit = Emit::default();
        let ahead = NOW + 600_000;
        w.process(
            batch(
                &[
                    ("a", NOW - 5_000, 1),
                    ("a", ahead, 2),
                    ("a", NOW - 4_000, 3),
                    ("b", ahead, 4),
                    ("b", NOW - 3_000, 5),
                    ("a", ahead, 6),
                    ("a", NOW - 2_000, 7),
                ],
                0,
            ),
            &mut emit,
        )
        .unwrap();
        assert_eq!(kinds(&emit), vec![ErrorKind::FutureEventTime; 3]);
        assert!(emit.rejects()[0]
            .message
            .contains("max_future_ms = 60000 ms"));
        assert_eq!(emit.absorbed(), 4, "no valid event is late");
        w.on_end_of_input(&mut emit).unwrap();
        assert_eq!(
            emitted(&emit),
            vec![
                ("a".into(), NOW - 5_000, NOW + 8_000, 3, 7),
                ("b".into(), NOW - 3_000, NOW + 7_000, 1, 5),
            ]
        );
    }
}
