//! Dedup: the idempotent consumer's inbox. A row whose key (`event_id`, or several columns)
//! was already seen within `within_ms` of event time is dropped and counted as
//! `deduplicated`; every other row passes on unchanged, in order.
//!
//! The rule, row by row in offset order (ARCHITECTURE.md, "Dedup"): the operator remembers,
//! per key, the event time `t_k` of the row it last kept, and its watermark `W` is the
//! largest event time it has seen. A row of key `k` at time `t` is a duplicate when `k` is
//! remembered, `|t - t_k| <= within_ms` and the key is not forgotten: a key is forgotten once
//! `t_k < W - within_ms`. So the state holds the keys of the last `within_ms` of event time
//! (plus disorder), never more, and a duplicate arriving after its key was forgotten is kept
//! (processed again): that is the bound. A row with a null in a key column is always kept
//! (nothing identifies it). The state is per partition: a duplicate is found when it is read
//! by the same partition as the original, which holds for re-publishes of the same message
//! (same message key).
//!
//! The remembered keys are checkpointed (one batch: key bytes in Arrow's row format, time),
//! with the watermark.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int64Array, TimestampMillisecondArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use serde::Deserialize;
use weir_runtime::checkpoint::OperatorState;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::fingerprint::Fingerprint;
use weir_runtime::operator::{Emit, Operator};

/// `[[operators]] type = "dedup"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// The columns that identify an event (`["event_id"]`).
    pub keys: Vec<String>,
    /// How far apart in event time two rows of a key may be for the later one to be a
    /// duplicate; also how long a key is remembered behind the watermark.
    pub within_ms: i64,
    /// The event time column (default: the schema's `event_time`).
    #[serde(default)]
    pub time_column: Option<String>,
}

impl DedupConfig {
    /// Every impossible value, as "`<at>.<key>`: reason".
    pub fn validate(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.keys.is_empty() {
            errors.push(format!(
                "{at}.keys: at least one column identifies an event"
            ));
        }
        if self.within_ms <= 0 {
            errors.push(format!(
                "{at}.within_ms: must be positive, not {}",
                self.within_ms
            ));
        }
        errors
    }
}

/// The dedup operator. See the module docs.
pub struct DedupOperator {
    name: String,
    schema: SchemaRef,
    config: DedupConfig,
    time_column: String,
    keys: Vec<usize>,
    time: usize,
    converter: RowConverter,
    /// Key (row format) → event time of the row last kept.
    seen: HashMap<Box<[u8]>, i64>,
    /// The largest event time seen; `None` before the first row.
    watermark: Option<i64>,
    /// The watermark at the last sweep of forgotten keys.
    swept_at: i64,
}

impl DedupOperator {
    /// A dedup over `input`, with `event_time` the schema's event time column (used unless
    /// the config names another).
    pub fn new(
        name: &str,
        config: &DedupConfig,
        input: SchemaRef,
        event_time: &str,
    ) -> std::result::Result<Self, String> {
        let errors = config.validate(name);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        let time_column = config
            .time_column
            .clone()
            .unwrap_or_else(|| event_time.to_string());
        let column = |c: &str| {
            input.index_of(c).map_err(|_| {
                format!(
                    "dedup column `{c}` is not in the input (columns: {})",
                    input
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        let keys = config
            .keys
            .iter()
            .map(|k| column(k))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let time = column(&time_column)?;
        if input.field(time).data_type() != &DataType::Timestamp(TimeUnit::Millisecond, None) {
            return Err(format!(
                "dedup time column `{time_column}` is {}, not a timestamp",
                input.field(time).data_type()
            ));
        }
        let converter = RowConverter::new(
            keys.iter()
                .map(|&i| SortField::new(input.field(i).data_type().clone()))
                .collect(),
        )
        .map_err(|e| format!("dedup keys: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            schema: input,
            config: config.clone(),
            time_column,
            keys,
            time,
            converter,
            seen: HashMap::new(),
            watermark: None,
            swept_at: i64::MIN,
        })
    }

    /// How many keys are remembered (forgotten ones may stay until the next sweep).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    fn error(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    /// Whether a key last kept at `t_k` is forgotten under watermark `w`.
    fn forgotten(&self, t_k: i64, w: i64) -> bool {
        t_k < w.saturating_sub(self.config.within_ms)
    }

    /// Drop the forgotten keys, at most once per `within_ms` of watermark progress (the
    /// lookup treats a forgotten key as absent either way: this only frees memory).
    fn sweep(&mut self) {
        let Some(w) = self.watermark else {
            return;
        };
        if w.saturating_sub(self.swept_at) < self.config.within_ms {
            return;
        }
        let horizon = w.saturating_sub(self.config.within_ms);
        self.seen.retain(|_, t_k| *t_k >= horizon);
        self.swept_at = w;
    }
}

impl Operator for DedupOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process(&mut self, batch: RecordBatch, emit: &mut Emit) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let key_columns: Vec<ArrayRef> =
            self.keys.iter().map(|&i| batch.column(i).clone()).collect();
        let rows = self
            .converter
            .convert_columns(&key_columns)
            .map_err(|e| self.error(e))?;
        let times = batch
            .column(self.time)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .ok_or_else(|| self.error("invariant: the time column is Timestamp(ms)"))?
            .clone();
        let mut keep = Vec::with_capacity(n);
        for r in 0..n {
            if times.is_null(r) || key_columns.iter().any(|c| c.is_null(r)) {
                keep.push(true);
                continue;
            }
            let t = times.value(r);
            let w = self.watermark.map_or(t, |w| w.max(t));
            self.watermark = Some(w);
            let key = rows.row(r);
            let duplicate = match self.seen.get(key.as_ref()) {
                Some(&t_k) => !self.forgotten(t_k, w) && (t - t_k).abs() <= self.config.within_ms,
                None => false,
            };
            if !duplicate {
                match self.seen.get_mut(key.as_ref()) {
                    Some(t_k) => *t_k = t,
                    None => {
                        self.seen.insert(key.as_ref().into(), t);
                    }
                }
            }
            keep.push(!duplicate);
        }
        self.sweep();
        let mask = BooleanArray::from(keep);
        let kept = mask.true_count();
        emit.count_deduplicated((n - kept) as u64);
        if kept == n {
            emit.emit(batch);
        } else if kept > 0 {
            emit.emit(filter_record_batch(&batch, &mask).map_err(|e| self.error(e))?);
        }
        Ok(())
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|&i| {
                let f = self.schema.field(i);
                format!("{} {}", f.name(), f.data_type())
            })
            .collect();
        Some(
            Fingerprint::new("dedup")
                .set("keys", keys.join(", "))
                .set("time_column", &self.time_column)
                .set("within_ms", self.config.within_ms),
        )
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        self.sweep();
        let mut entries: Vec<(&[u8], i64)> =
            self.seen.iter().map(|(k, t)| (k.as_ref(), *t)).collect();
        // A stable order, so one state always gives one snapshot.
        entries.sort_unstable();
        let keys = BinaryArray::from_iter_values(entries.iter().map(|(k, _)| *k));
        let times = Int64Array::from_iter_values(entries.iter().map(|(_, t)| *t));
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("key", DataType::Binary, false),
                Field::new("time", DataType::Int64, false),
            ])),
            vec![Arc::new(keys), Arc::new(times)],
        )
        .map_err(|e| self.error(e))?;
        Ok(OperatorState {
            meta: serde_json::json!({ "watermark": self.watermark, "swept_at": self.swept_at }),
            batches: vec![batch],
            config: None,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        self.seen.clear();
        self.watermark = state.meta.get("watermark").and_then(|w| w.as_i64());
        self.swept_at = state
            .meta
            .get("swept_at")
            .and_then(|w| w.as_i64())
            .unwrap_or(i64::MIN);
        for batch in &state.batches {
            let bad = || self.error("checkpoint: dedup state is not (key binary, time int64)");
            let keys = batch
                .column_by_name("key")
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .ok_or_else(bad)?;
            let times = batch
                .column_by_name("time")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .ok_or_else(bad)?;
            for (k, t) in keys.iter().zip(times.iter()) {
                if let (Some(k), Some(t)) = (k, t) {
                    self.seen.insert(k.into(), t);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use weir_runtime::OFFSET_COLUMN;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    fn dedup(within_ms: i64) -> DedupOperator {
        let config = DedupConfig {
            keys: vec!["event_id".into()],
            within_ms,
            time_column: None,
        };
        DedupOperator::new("operators[0]", &config, schema(), "ts").unwrap()
    }

    /// Rows (id, ts) from offset `first` on.
    fn batch(rows: &[(Option<&str>, i64)], first: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMillisecondArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from_iter_values(
                    first..first + rows.len() as i64,
                )),
            ],
        )
        .unwrap()
    }

    /// The offsets `op` keeps of `input`, and how many it counted as duplicates.
    fn kept(op: &mut DedupOperator, input: RecordBatch) -> (Vec<i64>, u64) {
        let mut emit = Emit::default();
        op.process(input, &mut emit).unwrap();
        let offsets = emit
            .batches()
            .iter()
            .flat_map(|b| {
                let o = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
                o.values().to_vec()
            })
            .collect();
        (offsets, emit.deduplicated())
    }

    #[test]
    fn a_key_seen_within_the_horizon_is_dropped_and_counted() {
        let mut op = dedup(1000);
        let input = batch(
            &[
                (Some("a"), 10_000),
                (Some("b"), 10_100),
                (Some("a"), 10_900),
                (Some("a"), 11_000),
                (Some("b"), 9_100),
            ],
            0,
        );
        assert_eq!(kept(&mut op, input), (vec![0, 1], 3));
    }

    #[test]
    fn a_key_seen_longer_ago_than_within_ms_is_kept_as_a_new_occurrence() {
        let mut op = dedup(1000);
        let input = batch(
            &[
                (Some("a"), 10_000),
                (Some("a"), 11_001),
                (Some("a"), 11_500),
                (Some("a"), 12_002),
            ],
            0,
        );
        // 11_001 is a new occurrence (1001 ms after 10_000), 11_500 its duplicate, and
        // 12_002 is 1001 ms after the occurrence kept at 11_001.
        assert_eq!(kept(&mut op, input), (vec![0, 1, 3], 1));
    }

    #[test]
    fn a_duplicate_after_its_key_was_forgotten_is_processed_again() {
        let mut op = dedup(1000);
        let input = batch(
            &[
                (Some("a"), 10_000),
                // The watermark moves to 20_000: `a` (10_000 < 19_000) is forgotten.
                (Some("z"), 20_000),
                // Within 1000 ms of the original, but its key is forgotten: kept.
                (Some("a"), 10_500),
            ],
            0,
        );
        assert_eq!(kept(&mut op, input), (vec![0, 1, 2], 0));
    }

    #[test]
    fn the_state_holds_only_keys_within_the_horizon_of_the_watermark() {
        let mut op = dedup(1000);
        let rows: Vec<(String, i64)> = (0..10_000).map(|i| (format!("e{i}"), i * 10)).collect();
        let refs: Vec<(Option<&str>, i64)> =
            rows.iter().map(|(k, t)| (Some(k.as_str()), *t)).collect();
        kept(&mut op, batch(&refs, 0));
        // 100 keys per second of event time; at most two horizons' worth stay between sweeps.
        assert!(op.remembered() <= 201, "{}", op.remembered());
    }

    #[test]
    fn rows_with_a_null_key_are_never_dropped() {
        let mut op = dedup(1000);
        let input = batch(&[(None, 10_000), (None, 10_000)], 0);
        assert_eq!(kept(&mut op, input), (vec![0, 1], 0));
    }

    #[test]
    fn a_restored_snapshot_behaves_like_the_operator_it_was_taken_of() {
        let mut op = dedup(1000);
        kept(
            &mut op,
            batch(&[(Some("a"), 10_000), (Some("b"), 10_500)], 0),
        );
        let state = op.snapshot().unwrap();
        let mut restored = dedup(1000);
        restored.restore(state).unwrap();
        let next = || {
            batch(
                &[
                    (Some("a"), 10_900),
                    (Some("b"), 12_000),
                    (Some("c"), 11_000),
                ],
                2,
            )
        };
        assert_eq!(kept(&mut op, next()), kept(&mut restored, next()));
        assert_eq!(kept(&mut dedup(1000), next()).1, 0);
    }

    #[test]
    fn impossible_settings_and_unknown_columns_are_refused_by_name() {
        let config = DedupConfig {
            keys: vec![],
            within_ms: 0,
            time_column: None,
        };
        let errors = config.validate("operators[1]");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("operators[1].keys"), "{errors:?}");
        assert!(
            errors[1].starts_with("operators[1].within_ms"),
            "{errors:?}"
        );
        let config = DedupConfig {
            keys: vec!["id".into()],
            within_ms: 10,
            time_column: None,
        };
        let Err(err) = DedupOperator::new("operators[0]", &config, schema(), "ts") else {
            panic!("an unknown key column was accepted");
        };
        assert!(err.contains("`id` is not in the input"), "{err}");
    }
}
