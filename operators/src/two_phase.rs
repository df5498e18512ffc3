//! Two-phase window aggregation: GROUP BY keys that leave out the partition key (per region
//! over a topic keyed by sensor). The runtime's side (where the global stage runs, how it
//! checkpoints) is described in [`weir_runtime::global`].
//!
//! - Phase one, in every partition task: a [`TumbleWindow`] in partial mode aggregates the
//!   partition's events and, when its own watermark closes a window, emits the window's
//!   accumulator states with that watermark.
//! - Phase two, [`GlobalWindow`] on the sink stage: it keeps the partials per window and per
//!   lane (topic, partition), and once the minimum watermark over all lanes has closed a
//!   window it merges the partials (in lane order, so the result does not depend on arrival
//!   order) into fresh accumulators, evaluates them, and runs the rest of the chain (HAVING,
//!   the SELECT list) over the rows.
//! - Idle partitions: the global stage publishes the minimum watermark of the partitions
//!   that reported within the idle timeout; a partition idle for that long advances its
//!   watermark to it, closes its windows and reports it, so one quiet partition does not
//!   stop the output. Its later events behind that watermark are late (DLQ, with their bytes).
//! - [`TwoPhaseShared`] carries, from the global stage back to the tasks, that watermark and
//!   the frontier whose output is durable (partials it covers leave the tasks' checkpoints).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::json;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator};
use weir_runtime::watermark::is_closed;
use weir_runtime::{Fingerprint, GlobalStage, Lane, OperatorState};

use crate::window::{
    window_bound_fields, window_columns, window_fingerprint, AggregateSet, Bin, TumbleWindow,
    WindowConfig, WindowKind,
};

/// "No value yet" in the atomics below.
const NONE: i64 = i64::MIN;

/// What the global stage tells the partition tasks (shared by all of them).
#[derive(Debug)]
pub struct TwoPhaseShared {
    committed: AtomicI64,
    active: AtomicI64,
}

impl Default for TwoPhaseShared {
    fn default() -> Self {
        Self {
            committed: AtomicI64::new(NONE),
            active: AtomicI64::new(NONE),
        }
    }
}

impl TwoPhaseShared {
    /// The watermark up to which the global stage's output is durable.
    pub fn committed_frontier(&self) -> Option<i64> {
        Some(self.committed.load(Ordering::Acquire)).filter(|v| *v != NONE)
    }

    /// The minimum watermark of the partitions with recent input.
    pub fn active_watermark(&self) -> Option<i64> {
        Some(self.active.load(Ordering::Acquire)).filter(|v| *v != NONE)
    }
}

/// Build the partial phase of `cfg` for one partition.
pub fn partial_window(
    name: &str,
    cfg: &WindowConfig,
    input: SchemaRef,
    default_time: &str,
    shared: Arc<TwoPhaseShared>,
) -> Result<Box<dyn Operator>, String> {
    check_two_phase(cfg)?;
    Ok(Box::new(
        TumbleWindow::with_config(name, cfg, input, default_time)?.partial(shared)?,
    ))
}

/// The window kinds that can run in two phases.
pub fn check_two_phase(cfg: &WindowConfig) -> Result<(), String> {
    check_two_phase_kind(&cfg.kind)
}

/// [`check_two_phase`] for a window kind.
pub fn check_two_phase_kind(kind: &WindowKind) -> Result<(), String> {
    match kind {
        WindowKind::Tumble { .. } | WindowKind::Hop { .. } => Ok(()),
        WindowKind::Session { .. } => Err(
            "sessions are built inside one partition, so a session window cannot span partitions"
                .into(),
        ),
        WindowKind::Continuous => Err(
            "a GROUP BY without a window is built inside one partition, so its groups cannot span partitions"
                .into(),
        ),
    }
}

/// What the global stage knows of one partition.
#[derive(Debug, Clone, Copy)]
struct Input {
    watermark: Option<i64>,
    last_report: Instant,
}

/// The global phase: see the module docs.
pub struct GlobalWindow {
    name: String,
    size_ms: i64,
    allowed_lateness_ms: i64,
    keys: usize,
    key_schema: SchemaRef,
    aggs: AggregateSet,
    window_output: SchemaRef,
    then: Vec<Box<dyn Operator>>,
    shared: Arc<TwoPhaseShared>,
    idle_timeout: Duration,
    /// Partials by window start, then by lane (topic, partition), in arrival order.
    partials: BTreeMap<i64, BTreeMap<Lane, Vec<RecordBatch>>>,
    inputs: BTreeMap<Lane, Input>,
    /// Every window this closes was emitted.
    frontier: Option<i64>,
    /// The frontier of the last snapshot.
    snapshot_frontier: Option<i64>,
    fingerprint: Fingerprint,
}

impl GlobalWindow {
    /// `input` is the schema the partial windows read (the window's input in the task
    /// chain); `shared` is the one the partial windows were given.
    pub fn new(
        name: &str,
        cfg: &WindowConfig,
        input: &SchemaRef,
        default_time: &str,
        shared: Arc<TwoPhaseShared>,
    ) -> Result<Self, String> {
        let size_ms = match cfg.kind {
            WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => size_ms,
            kind => {
                return Err(check_two_phase_kind(&kind)
                    .err()
                    .unwrap_or_else(|| format!("{kind} cannot run in two phases")))
            }
        };
        let (_, key_idx, key_fields) = window_columns(cfg, input, default_time)?;
        let aggs = AggregateSet::new(&cfg.aggregates, input)?;
        let fingerprint = window_fingerprint(cfg, input, default_time, &aggs, Some("global"));
        let mut fields = key_fields.clone();
        fields.extend(window_bound_fields());
        fields.extend(aggs.fields.iter().cloned());
        Ok(Self {
            name: format!("{name} (global)"),
            size_ms,
            allowed_lateness_ms: cfg.allowed_lateness_ms,
            keys: key_idx.len(),
            key_schema: Arc::new(Schema::new(key_fields)),
            aggs,
            window_output: Arc::new(Schema::new(fields)),
            then: Vec::new(),
            shared,
            idle_timeout: Duration::from_secs(5),
            partials: BTreeMap::new(),
            inputs: BTreeMap::new(),
            frontier: None,
            snapshot_frontier: None,
            fingerprint,
        })
    }

    /// The executor's idle timeout: partitions silent this long stop holding the others back.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Stateless operators (HAVING, the SELECT list) to run over the merged window rows,
    /// built against [`Self::window_schema`].
    pub fn then(&mut self, ops: Vec<Box<dyn Operator>>) {
        self.then = ops;
    }

    /// The schema of the merged window rows (before the operators of [`Self::then`]).
    pub fn window_schema(&self) -> SchemaRef {
        self.window_output.clone()
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    fn covered(&self, start: i64, watermark: Option<i64>) -> bool {
        is_closed(start + self.size_ms, self.allowed_lateness_ms, watermark)
    }

    /// Merge the partials of window `start` (in lane order) and evaluate its rows.
    fn finish(&self, start: i64, parts: BTreeMap<Lane, Vec<RecordBatch>>) -> Result<RecordBatch> {
        let merged = || -> datafusion::common::Result<RecordBatch> {
            let mut bin = Bin::new(&self.key_schema, &self.aggs)?;
            for batch in parts.values().flatten() {
                bin.merge_state(batch, self.keys, &self.aggs.state_counts)?;
            }
            bin.finish(start, start + self.size_ms, &self.window_output)
        };
        merged().map_err(|e| self.err(e))
    }

    /// Run the operators of [`Self::then`] over merged rows.
    fn run_then(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let mut input = vec![batch];
        for op in &mut self.then {
            let mut step = Emit::default();
            for b in input.drain(..) {
                op.process(b, &mut step)?;
            }
            if !step.rejects().is_empty() {
                return Err(WeirError::operator(
                    op.name(),
                    "rejected merged window rows, which have no source message to dead-letter",
                ));
            }
            input = step.take_batches();
        }
        for b in input {
            emit.emit(b);
        }
        Ok(())
    }

    /// Publish the minimum watermark of the partitions with recent input (ended ones and
    /// silent ones left out) for idle partitions to follow.
    fn publish_active(&self) {
        let active = self
            .inputs
            .values()
            .filter(|i| i.last_report.elapsed() < self.idle_timeout)
            .filter_map(|i| i.watermark)
            .filter(|w| *w != i64::MAX)
            .min();
        if let Some(w) = active {
            self.shared.active.fetch_max(w, Ordering::AcqRel);
        }
    }
}

impl GlobalStage for GlobalWindow {
    fn name(&self) -> &str {
        &self.name
    }

    fn start(&mut self, lanes: &[Lane]) {
        let now = Instant::now();
        for lane in lanes {
            self.inputs.entry(lane.clone()).or_insert(Input {
                watermark: None,
                last_report: now,
            });
        }
    }

    fn absorb(
        &mut self,
        lane: &Lane,
        partials: Vec<RecordBatch>,
        watermark: Option<i64>,
        emit: &mut Emit,
    ) -> Result<()> {
        for batch in partials {
            if batch.num_rows() == 0 {
                continue;
            }
            let start = batch
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .map(|a| a.value(0))
                .ok_or_else(|| self.err("a partial has no Int64 window start"))?;
            // Emitted before a restart: this partition kept or replayed its part.
            if self.covered(start, self.frontier) {
                continue;
            }
            self.partials
                .entry(start)
                .or_default()
                .entry(lane.clone())
                .or_default()
                .push(batch);
        }
        let Some(w) = watermark else {
            return Ok(());
        };
        let input = self.inputs.entry(lane.clone()).or_insert(Input {
            watermark: None,
            last_report: Instant::now(),
        });
        input.watermark = Some(input.watermark.map_or(w, |old| old.max(w)));
        input.last_report = Instant::now();
        self.publish_active();
        let Some(min) = self
            .inputs
            .values()
            .map(|i| i.watermark)
            .collect::<Option<Vec<_>>>()
            .and_then(|w| w.into_iter().min())
        else {
            return Ok(()); // some partition has not reported yet
        };
        if self.frontier.is_some_and(|f| f >= min) {
            return Ok(());
        }
        let mut emitted_until = self.frontier;
        while let Some((&start, _)) = self.partials.first_key_value() {
            if !self.covered(start, Some(min)) {
                break;
            }
            let parts = self
                .partials
                .remove(&start)
                .expect("invariant: first key exists");
            let rows = self.finish(start, parts)?;
            self.run_then(rows, emit)?;
            let end = start + self.size_ms + self.allowed_lateness_ms;
            emitted_until = Some(emitted_until.map_or(end, |e| e.max(end)));
        }
        // Every input ended: the frontier is what was emitted, not +infinity, so that the
        // pipeline run again over a longer input goes on with the windows after it.
        self.frontier = if min == i64::MAX {
            emitted_until
        } else {
            Some(min)
        };
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        self.snapshot_frontier = self.frontier;
        Ok(OperatorState {
            meta: json!({ "frontier": self.frontier }),
            batches: Vec::new(),
            config: Some(self.fingerprint.clone()),
        })
    }

    /// Refuses a frontier stored under another configuration (see
    /// [`weir_runtime::fingerprint`]); one from before fingerprints is restored.
    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let fit =
            weir_runtime::fingerprint::fit(&self.name, state.config.as_ref(), &self.fingerprint);
        if let weir_runtime::fingerprint::Fit::Changed(why) = fit {
            return Err(weir_runtime::state_mismatch(
                "the global stage of the window whose groups span partitions",
                &[why],
            ));
        }
        self.frontier = state.meta.get("frontier").and_then(|v| v.as_i64());
        self.snapshot_frontier = self.frontier;
        self.partials.clear();
        Ok(())
    }

    fn committed(&mut self) {
        if let Some(f) = self.snapshot_frontier {
            self.shared.committed.fetch_max(f, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::{AggregateConfig, LatePolicy};
    use datafusion::arrow::array::{StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
    use weir_runtime::watermark::WatermarkGuards;
    use weir_runtime::OFFSET_COLUMN;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    fn batch(ts: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from_iter_values(ts.iter().map(|_| "eu"))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    ts.iter().copied(),
                )),
                Arc::new(Int64Array::from_iter_values(0..ts.len() as i64)),
            ],
        )
        .unwrap()
    }

    fn config(guards: WatermarkGuards) -> WindowConfig {
        WindowConfig {
            kind: WindowKind::Tumble { size_ms: 60_000 },
            keys: vec!["region".into()],
            time_column: None,
            max_out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
            late_policy: LatePolicy::Dlq,
            aggregates: vec![AggregateConfig {
                function: "count".into(),
                column: None,
                alias: Some("n".into()),
                distinct: false,
                sql: None,
            }],
            guards,
        }
    }

    /// Rows the global stage emitted: (window_start, n).
    fn rows(emit: &Emit) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        for b in emit.batches() {
            let s = b
                .column(1)
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .unwrap();
            let n = b.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend((0..b.num_rows()).map(|r| (s.value(r), n.value(r))));
        }
        out
    }

    /// Two partitions of a two-phase window that both stopped: the merged window is emitted
    /// once each partition was idle long enough to pass its end.
    fn run_idle(guards: WatermarkGuards) -> Vec<(i64, i64)> {
        let shared = Arc::new(TwoPhaseShared::default());
        let cfg = config(guards);
        let mut parts: Vec<Box<dyn Operator>> = (0..2)
            .map(|_| partial_window("w", &cfg, input(), "ts", shared.clone()).unwrap())
            .collect();
        let mut global = GlobalWindow::new("w", &cfg, &input(), "ts", shared).unwrap();
        let lanes = [Lane::new("t", 0), Lane::new("t", 1)];
        global.start(&lanes);
        let mut out = Emit::default();
        for (p, ts) in [(0, 10_000), (1, 20_000)] {
            let mut e = Emit::default();
            parts[p].process(batch(&[ts]), &mut e).unwrap();
            let w = e.watermark();
            global
                .absorb(&lanes[p], e.take_batches(), w, &mut out)
                .unwrap();
        }
        for (p, idle) in [(0, 50_000), (1, 40_000)] {
            let mut e = Emit::default();
            parts[p]
                .on_idle(Duration::from_millis(idle), &mut e)
                .unwrap();
            let w = e.watermark();
            global
                .absorb(&lanes[p], e.take_batches(), w, &mut out)
                .unwrap();
        }
        rows(&out)
    }

    #[test]
    fn idle_partitions_of_a_two_phase_window_close_it_after_idle_advance_ms() {
        let idle = WatermarkGuards {
            idle_advance_ms: Some(5_000),
            max_future_ms: None,
        };
        assert_eq!(run_idle(idle), vec![(0, 2)]);
    }

    #[test]
    fn without_idle_advance_idle_partitions_of_a_two_phase_window_keep_it_open() {
        assert_eq!(run_idle(WatermarkGuards::default()), vec![]);
    }
}
