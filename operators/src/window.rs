//! Event-time tumbling and hopping windows, aggregated incrementally by DataFusion's
//! accumulators (session windows are in [`crate::session`]).
//!
//! Each open window ("bin") holds a DataFusion `GroupValues` (group key → group index) and one
//! `GroupsAccumulator` per aggregate. Rows are assigned to bins with a vectorised pass; the
//! watermark is advanced row by row (a prefix max), so whether a row is late does not depend
//! on where batch boundaries fall: the output is the same for any batching, and equal to a
//! batch `GROUP BY key, date_bin(size, ts)` over the on-time events. A hopping window of
//! `size` every `slide` is the same machinery with each event added to every bin that holds
//! it (`size / slide` of them when `size` is a multiple of `slide`); a tumbling window is a
//! hopping window whose slide equals its size.
//!
//! A bin is emitted once, when the watermark reaches `end + allowed_lateness`, then dropped.
//! Its state is checkpointed as the accumulators' own intermediate state (`state`/
//! `merge_batch`), so any DataFusion aggregate with a `GroupsAccumulator`, or an `Accumulator`
//! with state and merge, works and survives a restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::functions_aggregate::all_default_aggregate_functions;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::{col, lit};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::{PhysicalExpr, PhysicalExprRef};
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use serde::Deserialize;
use weir_runtime::dlq::ErrorKind;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::operator::{Emit, Operator, OFFSET_COLUMN};
use weir_runtime::watermark::{
    hop_starts, is_closed, tumble_start, wall_clock_ms, WatermarkGuards, WatermarkTracker,
};
use weir_runtime::{Fingerprint, OperatorState};

use crate::two_phase::TwoPhaseShared;

/// What happens to an event whose window has already closed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Count it and drop it.
    Drop,
    /// Count it and send it to the DLQ with kind `late`.
    #[default]
    Dlq,
}

/// One aggregate of a window: `function(column)`, named `alias` in the output.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// A DataFusion aggregate function name: count, sum, avg, min, max, stddev, ...
    pub function: String,
    /// The input column; omitted for `count` means count(*).
    #[serde(default)]
    pub column: Option<String>,
    /// Output column name (default `<function>_<column>`).
    #[serde(default)]
    pub alias: Option<String>,
    /// Aggregate distinct values only.
    #[serde(default)]
    pub distinct: bool,
    /// The whole call as SQL, planned by DataFusion (e.g. `last_value(status ORDER BY seq)`,
    /// `approx_percentile_cont(x, 0.9)`); when set, `function`, `column` and `distinct` only
    /// describe it.
    #[serde(default)]
    pub sql: Option<String>,
}

impl AggregateConfig {
    pub fn output_name(&self) -> String {
        self.alias.clone().unwrap_or_else(|| match &self.column {
            Some(c) => format!("{}_{}", self.function, c),
            None => self.function.clone(),
        })
    }
}

/// `type = "tumble"`: fixed, non-overlapping event-time windows per key.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TumbleConfig {
    /// Window length in milliseconds.
    pub size_ms: i64,
    /// Group keys (one or more columns).
    pub keys: Vec<String>,
    /// Event-time column (default: the schema's `event_time`).
    #[serde(default)]
    pub time_column: Option<String>,
    /// Bound on disorder: watermark = max event time seen − this.
    #[serde(default)]
    pub max_out_of_orderness_ms: i64,
    /// How long past its end (in watermark time) a window still accepts events.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// What to do with late events (default `dlq`).
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// The aggregates computed per key and window.
    pub aggregates: Vec<AggregateConfig>,
}

impl TumbleConfig {
    /// Value checks that need no schema; each error names its key.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut e = config_errors(
            prefix,
            WindowKind::Tumble {
                size_ms: self.size_ms,
            },
        );
        e.extend(validate_common(
            prefix,
            &self.keys,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            &self.aggregates,
        ));
        e
    }
}

/// `type = "hop"`: windows of `size_ms` starting every `slide_ms` (aligned to the epoch),
/// per key; an event counts in every window that holds it.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HopConfig {
    /// Time between window starts in milliseconds.
    pub slide_ms: i64,
    /// Window length in milliseconds (at least `slide_ms`).
    pub size_ms: i64,
    /// Group keys (one or more columns).
    pub keys: Vec<String>,
    /// Event-time column (default: the schema's `event_time`).
    #[serde(default)]
    pub time_column: Option<String>,
    /// Bound on disorder: watermark = max event time seen − this.
    #[serde(default)]
    pub max_out_of_orderness_ms: i64,
    /// How long past its end (in watermark time) a window still accepts events.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// What to do with late events (default `dlq`).
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// The aggregates computed per key and window.
    pub aggregates: Vec<AggregateConfig>,
}

/// Most windows one event may fall into (`size_ms / slide_ms`): each is a bin update per
/// event, so a hop of a day every millisecond would multiply the work by 86 million.
pub const MAX_HOPS_PER_EVENT: i64 = 1_000;

impl HopConfig {
    /// Value checks that need no schema; each error names its key.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut e = config_errors(
            prefix,
            WindowKind::Hop {
                slide_ms: self.slide_ms,
                size_ms: self.size_ms,
            },
        );
        e.extend(validate_common(
            prefix,
            &self.keys,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            &self.aggregates,
        ));
        e
    }
}

/// `type = "session"`: per key, events closer than `gap_ms` to each other form one session
/// `[first event, last event + gap_ms)`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionConfig {
    /// Longest quiet time inside a session, in milliseconds.
    pub gap_ms: i64,
    /// Group keys (one or more columns).
    pub keys: Vec<String>,
    /// Event-time column (default: the schema's `event_time`).
    #[serde(default)]
    pub time_column: Option<String>,
    /// Bound on disorder: watermark = max event time seen − this.
    #[serde(default)]
    pub max_out_of_orderness_ms: i64,
    /// How long past its end (in watermark time) a session still accepts events.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// What to do with late events (default `dlq`).
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// The aggregates computed per key and session.
    pub aggregates: Vec<AggregateConfig>,
}

impl SessionConfig {
    /// Value checks that need no schema; each error names its key.
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut e = config_errors(
            prefix,
            WindowKind::Session {
                gap_ms: self.gap_ms,
            },
        );
        e.extend(validate_common(
            prefix,
            &self.keys,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            &self.aggregates,
        ));
        e
    }
}

/// How many hopping windows hold one event, at most (both positive; no overflow near
/// `i64::MAX`).
fn hops_per_event(slide_ms: i64, size_ms: i64) -> i64 {
    size_ms / slide_ms + i64::from(size_ms % slide_ms != 0)
}

/// The window rules `kind` breaks, in pipeline.toml's words: each names its key under
/// `prefix` (`operators[2].slide_ms: ...`).
fn config_errors(prefix: &str, kind: WindowKind) -> Vec<String> {
    kind.check()
        .into_iter()
        .map(|rule| match rule {
            WindowRuleError::NotPositive { setting, value_ms } => {
                format!(
                    "{prefix}.{}: must be positive, got {value_ms}",
                    setting.key()
                )
            }
            WindowRuleError::SizeBelowSlide { size_ms, slide_ms } => format!(
                "{prefix}.size_ms: {size_ms} ms is shorter than slide_ms ({slide_ms} ms), which \
                 would leave events in no window; the size must be at least the slide"
            ),
            WindowRuleError::TooManyHops {
                slide_ms,
                size_ms,
                hops,
            } => format!(
                "{prefix}.slide_ms: {slide_ms} ms puts each event in {hops} windows of {size_ms} \
                 ms; at most {MAX_HOPS_PER_EVENT} are allowed (raise slide_ms)"
            ),
        })
        .collect()
}

/// The checks every window config shares.
fn validate_common(
    prefix: &str,
    keys: &[String],
    max_out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    aggregates: &[AggregateConfig],
) -> Vec<String> {
    let mut e = Vec::new();
    if max_out_of_orderness_ms < 0 {
        e.push(format!(
            "{prefix}.max_out_of_orderness_ms: must not be negative, got {max_out_of_orderness_ms}"
        ));
    }
    if allowed_lateness_ms < 0 {
        e.push(format!(
            "{prefix}.allowed_lateness_ms: must not be negative, got {allowed_lateness_ms}"
        ));
    }
    if keys.is_empty() {
        e.push(format!(
            "{prefix}.keys: at least one key column is required"
        ));
    }
    if aggregates.is_empty() {
        e.push(format!(
            "{prefix}.aggregates: at least one aggregate is required"
        ));
    }
    e
}

/// The kind of event-time window and its sizes, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size_ms`, aligned to the epoch.
    Tumble { size_ms: i64 },
    /// Windows of `size_ms` starting every `slide_ms` (aligned to the epoch); an event is in
    /// every window that holds it.
    Hop { slide_ms: i64, size_ms: i64 },
    /// Per key, events closer than `gap_ms` to each other form one session
    /// `[first event, last event + gap)`.
    Session { gap_ms: i64 },
    /// No window: every group is aggregated for ever and each batch emits the current values
    /// of the groups it changed (an upsert stream keyed by the group keys).
    Continuous,
}

/// A size, slide or gap of a [`WindowKind`], as the paths that set it name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSetting {
    TumbleSize,
    HopSlide,
    HopSize,
    SessionGap,
}

impl WindowSetting {
    /// Its name in errors of the builder and of SQL (`hop slide`).
    pub fn name(self) -> &'static str {
        match self {
            WindowSetting::TumbleSize => "window size",
            WindowSetting::HopSlide => "hop slide",
            WindowSetting::HopSize => "hop size",
            WindowSetting::SessionGap => "session gap",
        }
    }

    /// Its key in pipeline.toml (`slide_ms`).
    pub fn key(self) -> &'static str {
        match self {
            WindowSetting::TumbleSize | WindowSetting::HopSize => "size_ms",
            WindowSetting::HopSlide => "slide_ms",
            WindowSetting::SessionGap => "gap_ms",
        }
    }
}

/// A window rule that a [`WindowKind`] breaks ([`WindowKind::check`]). Each path reports it
/// in its own words and place: pipeline.toml with the key, SQL with the construct and its
/// position, the builder with the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowRuleError {
    /// A size, slide or gap of zero or less.
    NotPositive {
        setting: WindowSetting,
        value_ms: i64,
    },
    /// A hop shorter than its slide: events between two windows would be in none.
    SizeBelowSlide { size_ms: i64, slide_ms: i64 },
    /// A hop that puts each event in more than [`MAX_HOPS_PER_EVENT`] windows.
    TooManyHops {
        slide_ms: i64,
        size_ms: i64,
        hops: i64,
    },
}

impl std::fmt::Display for WindowRuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WindowRuleError::NotPositive { setting, value_ms } => {
                write!(f, "{} must be positive, got {value_ms} ms", setting.name())
            }
            WindowRuleError::SizeBelowSlide { size_ms, slide_ms } => write!(
                f,
                "hop size {size_ms} ms is shorter than its slide {slide_ms} ms, which would \
                 leave events in no window"
            ),
            WindowRuleError::TooManyHops {
                slide_ms,
                size_ms,
                hops,
            } => write!(
                f,
                "hop slide {slide_ms} ms puts each event in {hops} windows of {size_ms} ms; at \
                 most {MAX_HOPS_PER_EVENT} are allowed (raise the slide)"
            ),
        }
    }
}

impl WindowKind {
    /// The window rules, in one place: every size, slide and gap is positive, a hop is at
    /// least its slide and puts an event in at most [`MAX_HOPS_PER_EVENT`] windows.
    /// pipeline.toml's window operators, the SQL planner and [`build_window`] (the builder)
    /// all call it. Every rule broken, in order.
    pub fn check(&self) -> Vec<WindowRuleError> {
        let mut e = Vec::new();
        let mut positive = |setting: WindowSetting, value_ms: i64| {
            if value_ms <= 0 {
                e.push(WindowRuleError::NotPositive { setting, value_ms });
            }
        };
        match *self {
            WindowKind::Tumble { size_ms } => positive(WindowSetting::TumbleSize, size_ms),
            WindowKind::Hop { slide_ms, size_ms } => {
                positive(WindowSetting::HopSlide, slide_ms);
                positive(WindowSetting::HopSize, size_ms);
                if slide_ms > 0 && size_ms > 0 {
                    if size_ms < slide_ms {
                        e.push(WindowRuleError::SizeBelowSlide { size_ms, slide_ms });
                    } else if hops_per_event(slide_ms, size_ms) > MAX_HOPS_PER_EVENT {
                        e.push(WindowRuleError::TooManyHops {
                            slide_ms,
                            size_ms,
                            hops: hops_per_event(slide_ms, size_ms),
                        });
                    }
                }
            }
            WindowKind::Session { gap_ms } => positive(WindowSetting::SessionGap, gap_ms),
            WindowKind::Continuous => {}
        }
        e
    }

    /// [`check`](Self::check) in words; each error names the setting.
    pub fn validate(&self) -> Vec<String> {
        self.check().iter().map(ToString::to_string).collect()
    }
}

impl std::fmt::Display for WindowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowKind::Tumble { size_ms } => write!(f, "tumble      size {size_ms} ms"),
            WindowKind::Hop { slide_ms, size_ms } => {
                write!(f, "hop         size {size_ms} ms every {slide_ms} ms")
            }
            WindowKind::Session { gap_ms } => write!(f, "session     gap {gap_ms} ms"),
            WindowKind::Continuous => write!(
                f,
                "aggregate   no window: each batch emits its changed groups (upsert by the keys)"
            ),
        }
    }
}

/// A window aggregation of any kind: what SQL plans to and what [`build_window`] builds.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    pub kind: WindowKind,
    /// Group keys (one or more columns).
    pub keys: Vec<String>,
    /// Event-time column (default: the schema's `event_time`).
    pub time_column: Option<String>,
    /// Bound on disorder: watermark = max event time seen − this.
    pub max_out_of_orderness_ms: i64,
    /// How long past its end (in watermark time) a window still accepts events.
    pub allowed_lateness_ms: i64,
    pub late_policy: LatePolicy,
    pub aggregates: Vec<AggregateConfig>,
    /// `[watermark] idle_advance_ms` and `max_future_ms` (off by default).
    pub guards: WatermarkGuards,
}

impl From<&TumbleConfig> for WindowConfig {
    fn from(t: &TumbleConfig) -> Self {
        WindowConfig {
            kind: WindowKind::Tumble { size_ms: t.size_ms },
            keys: t.keys.clone(),
            time_column: t.time_column.clone(),
            max_out_of_orderness_ms: t.max_out_of_orderness_ms,
            allowed_lateness_ms: t.allowed_lateness_ms,
            late_policy: t.late_policy,
            aggregates: t.aggregates.clone(),
            guards: WatermarkGuards::default(),
        }
    }
}

impl From<&HopConfig> for WindowConfig {
    fn from(h: &HopConfig) -> Self {
        WindowConfig {
            kind: WindowKind::Hop {
                slide_ms: h.slide_ms,
                size_ms: h.size_ms,
            },
            keys: h.keys.clone(),
            time_column: h.time_column.clone(),
            max_out_of_orderness_ms: h.max_out_of_orderness_ms,
            allowed_lateness_ms: h.allowed_lateness_ms,
            late_policy: h.late_policy,
            aggregates: h.aggregates.clone(),
            guards: WatermarkGuards::default(),
        }
    }
}

impl From<&SessionConfig> for WindowConfig {
    fn from(c: &SessionConfig) -> Self {
        WindowConfig {
            kind: WindowKind::Session { gap_ms: c.gap_ms },
            keys: c.keys.clone(),
            time_column: c.time_column.clone(),
            max_out_of_orderness_ms: c.max_out_of_orderness_ms,
            allowed_lateness_ms: c.allowed_lateness_ms,
            late_policy: c.late_policy,
            aggregates: c.aggregates.clone(),
            guards: WatermarkGuards::default(),
        }
    }
}

/// Build the operator for `cfg`: [`TumbleWindow`] for tumbling and hopping windows,
/// [`crate::session::SessionWindow`] for sessions.
pub fn build_window(
    name: &str,
    cfg: &WindowConfig,
    input: SchemaRef,
    default_time: &str,
) -> Result<Box<dyn Operator>, String> {
    if let Some(e) = cfg.kind.validate().into_iter().next() {
        return Err(e);
    }
    Ok(match cfg.kind {
        WindowKind::Session { .. } => Box::new(crate::session::SessionWindow::new(
            name,
            cfg,
            input,
            default_time,
        )?),
        WindowKind::Continuous => Box::new(crate::upsert::GroupUpsert::new(
            name,
            cfg,
            input,
            default_time,
        )?),
        _ => Box::new(TumbleWindow::with_config(name, cfg, input, default_time)?),
    })
}

/// Looks up a DataFusion aggregate function by name or alias.
pub fn find_aggregate(name: &str) -> Option<Arc<datafusion::logical_expr::AggregateUDF>> {
    let lower = name.to_ascii_lowercase();
    all_default_aggregate_functions()
        .into_iter()
        .find(|f| f.name() == lower || f.aliases().contains(&lower))
}

/// The columns every window operator starts from: the time column's index (checked to be a
/// millisecond timestamp), the key indices and the key fields.
pub(crate) fn window_columns(
    cfg: &WindowConfig,
    input: &SchemaRef,
    default_time: &str,
) -> Result<(usize, Vec<usize>, Vec<Field>), String> {
    let time_column = cfg.time_column.as_deref().unwrap_or(default_time);
    let time_idx = input
        .index_of(time_column)
        .map_err(|_| format!("time column `{time_column}` is not in the input"))?;
    match input.field(time_idx).data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => {}
        other => {
            return Err(format!(
                "time column `{time_column}` has type {other}, a window needs a timestamp"
            ))
        }
    }
    let mut key_idx = Vec::new();
    let mut key_fields = Vec::new();
    for k in &cfg.keys {
        let i = input
            .index_of(k)
            .map_err(|_| format!("key column `{k}` is not in the input"))?;
        key_idx.push(i);
        key_fields.push(input.field(i).clone().with_nullable(true));
    }
    Ok((time_idx, key_idx, key_fields))
}

/// The fingerprint of a window's state ([`weir_runtime::fingerprint`]): what its state
/// means. Kind and sizes, keys with their types, the time column, every aggregate as
/// configured and the types of the aggregates' state columns. Not the watermark settings
/// (`max_out_of_orderness_ms`, `allowed_lateness_ms`, `late_policy`): they decide when open
/// windows are emitted, not what their state holds, so a change applies from the restore
/// on. `phase` names the half of a two-phase window (`partial`, `global`).
pub(crate) fn window_fingerprint(
    cfg: &WindowConfig,
    input: &SchemaRef,
    default_time: &str,
    aggs: &AggregateSet,
    phase: Option<&str>,
) -> Fingerprint {
    let mut f = match cfg.kind {
        WindowKind::Tumble { size_ms } => Fingerprint::new("tumble").set("size_ms", size_ms),
        WindowKind::Hop { slide_ms, size_ms } => Fingerprint::new("hop")
            .set("slide_ms", slide_ms)
            .set("size_ms", size_ms),
        WindowKind::Session { gap_ms } => Fingerprint::new("session").set("gap_ms", gap_ms),
        WindowKind::Continuous => Fingerprint::new("aggregate"),
    };
    if let Some(phase) = phase {
        f = f.set("phase", phase);
    }
    let typed = |name: &str| match input.field_with_name(name) {
        Ok(field) => format!("{name} {}", type_name(field.data_type())),
        Err(_) => name.to_string(),
    };
    let keys: Vec<String> = cfg.keys.iter().map(|k| typed(k)).collect();
    f = f.set("keys", keys.join(", "));
    if cfg.kind != WindowKind::Continuous {
        f = f.set(
            "time_column",
            cfg.time_column.as_deref().unwrap_or(default_time),
        );
    }
    for (i, a) in cfg.aggregates.iter().enumerate() {
        let call = match (&a.sql, &a.column) {
            (Some(sql), _) => sql.trim().to_string(),
            (None, Some(c)) if a.distinct => format!("{}(DISTINCT {})", a.function, typed(c)),
            (None, Some(c)) => format!("{}({})", a.function, typed(c)),
            (None, None) => format!("{}(*)", a.function),
        };
        f = f.set(
            &format!("aggregates[{i}]"),
            format!("{call} AS {}", a.output_name()),
        );
    }
    let state: Vec<String> = aggs
        .state_fields()
        .unwrap_or_default()
        .iter()
        .map(|field| type_name(field.data_type()))
        .collect();
    f.set("state_types", state.join(", "))
}

/// weir's own names of Arrow types in fingerprints (Arrow's `Display` may change between
/// releases; these do not).
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Boolean => "bool".into(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("timestamp_{unit} {tz}"),
                None => format!("timestamp_{unit}"),
            }
        }
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p}, {s})"),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("list<{}>", type_name(item.data_type()))
        }
        DataType::Struct(fields) => {
            let inner: Vec<String> = fields
                .iter()
                .map(|f| format!("{} {}", f.name(), type_name(f.data_type())))
                .collect();
            format!("struct<{}>", inner.join(", "))
        }
        other => other.to_string(),
    }
}

/// The aggregates of a window: DataFusion's aggregate expressions, the physical expressions
/// that feed each one (arguments, then its `ORDER BY` expressions) and its `FILTER`.
pub(crate) struct AggregateSet {
    aggs: Vec<Arc<AggregateFunctionExpr>>,
    inputs: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Number of state columns of each aggregate.
    pub state_counts: Vec<usize>,
    /// Output field of each aggregate, named by its alias.
    pub fields: Vec<Field>,
}

/// One aggregate's input for a batch: its argument (and ordering) columns and the filter.
pub(crate) struct AggregateInput {
    pub values: Vec<ArrayRef>,
    pub filter: Option<BooleanArray>,
}

impl AggregateInput {
    /// The rows at `idx`.
    pub fn take(&self, idx: &UInt32Array) -> datafusion::common::Result<AggregateInput> {
        let values = self
            .values
            .iter()
            .map(|c| take(c.as_ref(), idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = match &self.filter {
            Some(f) => Some(
                take(f, idx, None)?
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .expect("invariant: take of a BooleanArray is a BooleanArray")
                    .clone(),
            ),
            None => None,
        };
        Ok(AggregateInput { values, filter })
    }
}

impl AggregateSet {
    pub fn new(configs: &[AggregateConfig], input: &SchemaRef) -> Result<Self, String> {
        let mut set = AggregateSet {
            aggs: Vec::new(),
            inputs: Vec::new(),
            filters: Vec::new(),
            state_counts: Vec::new(),
            fields: Vec::new(),
        };
        for a in configs {
            let alias = a.output_name();
            let (agg, filter) = match &a.sql {
                Some(sql) => aggregate_from_sql(sql, &alias, input)?,
                None => (aggregate_from_config(a, &alias, input)?, None),
            };
            set.state_counts.push(
                agg.state_fields()
                    .map_err(|e| format!("aggregate `{alias}`: {}", first_line(&e.to_string())))?
                    .len(),
            );
            set.fields
                .push(agg.field().as_ref().clone().with_name(alias.clone()));
            let mut exprs = agg.expressions();
            exprs.extend(agg.order_bys().iter().map(|s| Arc::clone(&s.expr)));
            set.inputs.push(exprs);
            set.filters.push(filter);
            set.aggs.push(agg);
        }
        Ok(set)
    }

    /// The state fields of every aggregate, in order, nullable, named `c<i>` after the
    /// window start and keys they follow in a state batch.
    pub fn state_fields(&self) -> Result<Vec<Field>, String> {
        let mut out = Vec::new();
        for agg in &self.aggs {
            for f in agg
                .state_fields()
                .map_err(|e| format!("aggregate state: {}", first_line(&e.to_string())))?
            {
                out.push(f.as_ref().clone().with_nullable(true));
            }
        }
        Ok(out)
    }

    /// Fresh accumulators, one per aggregate.
    pub fn accumulators(&self) -> datafusion::common::Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(
                |agg| -> datafusion::common::Result<Box<dyn GroupsAccumulator>> {
                    if agg.groups_accumulator_supported() {
                        agg.create_groups_accumulator()
                    } else {
                        let agg = agg.clone();
                        Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                            agg.create_accumulator()
                        })))
                    }
                },
            )
            .collect()
    }

    /// Evaluate every aggregate's inputs over `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> datafusion::common::Result<Vec<AggregateInput>> {
        let n = batch.num_rows();
        self.inputs
            .iter()
            .zip(&self.filters)
            .map(|(exprs, filter)| {
                let values = exprs
                    .iter()
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::common::Result<Vec<_>>>()?;
                let filter = match filter {
                    Some(f) => {
                        let a = f.evaluate(batch).and_then(|v| v.into_array(n))?;
                        Some(
                            a.as_any()
                                .downcast_ref::<BooleanArray>()
                                .ok_or_else(|| {
                                    datafusion::common::DataFusionError::Plan(
                                        "an aggregate FILTER must be boolean".into(),
                                    )
                                })?
                                .clone(),
                        )
                    }
                    None => None,
                };
                Ok(AggregateInput { values, filter })
            })
            .collect()
    }
}

/// Feed `inputs` into `accs` for the rows' groups.
pub(crate) fn update_accumulators(
    accs: &mut [Box<dyn GroupsAccumulator>],
    inputs: &[AggregateInput],
    group_ids: &[usize],
    total_groups: usize,
) -> datafusion::common::Result<()> {
    for (acc, input) in accs.iter_mut().zip(inputs) {
        acc.update_batch(
            &input.values,
            group_ids,
            input.filter.as_ref(),
            total_groups,
        )?;
    }
    Ok(())
}

fn aggregate_from_config(
    a: &AggregateConfig,
    alias: &str,
    input: &SchemaRef,
) -> Result<Arc<AggregateFunctionExpr>, String> {
    let udaf = find_aggregate(&a.function)
        .ok_or_else(|| format!("unknown aggregate function `{}`", a.function))?;
    let arg = match &a.column {
        Some(c) => {
            col(c, input).map_err(|_| format!("aggregate column `{c}` is not in the input"))?
        }
        None if udaf.name() == "count" => lit(ScalarValue::Int64(Some(1))),
        None => return Err(format!("aggregate `{}` needs a column", a.function)),
    };
    let agg = AggregateExprBuilder::new(udaf, vec![arg])
        .schema(input.clone())
        .alias(alias)
        .with_distinct(a.distinct)
        .build()
        .map_err(|e| format!("aggregate `{alias}`: {}", first_line(&e.to_string())))?;
    Ok(Arc::new(agg))
}

/// Plan an aggregate call written as SQL (`last_value(status ORDER BY seq)`,
/// `approx_percentile_cont(x, 0.9)`, `count(DISTINCT v % 10)`) with DataFusion's own planner.
fn aggregate_from_sql(
    sql: &str,
    alias: &str,
    input: &SchemaRef,
) -> Result<(Arc<AggregateFunctionExpr>, Option<PhysicalExprRef>), String> {
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(input.as_ref().clone())
        .map_err(|e| format!("aggregate `{sql}`: {}", first_line(&e.to_string())))?;
    let expr = ctx
        .parse_sql_expr(sql, &df_schema)
        .map_err(|e| format!("aggregate `{sql}`: {}", first_line(&e.to_string())))?;
    let expr = expr
        .rewrite(&mut TypeCoercionRewriter::new(&df_schema))
        .map(|t| t.data)
        .map_err(|e| format!("aggregate `{sql}`: {}", first_line(&e.to_string())))?;
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let lowered = LoweredAggregateBuilder::new(&expr, &df_schema, input, &props, &planning)
        .with_name(alias)
        .build()
        .map_err(|e| format!("aggregate `{sql}`: {}", first_line(&e.to_string())))?;
    Ok((lowered.aggregate, lowered.filter))
}

/// One window's groups and their accumulators.
pub(crate) struct Bin {
    groups: Box<dyn GroupValues>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
}

impl Bin {
    pub(crate) fn new(
        key_schema: &SchemaRef,
        aggs: &AggregateSet,
    ) -> datafusion::common::Result<Self> {
        Ok(Bin {
            groups: new_group_values(key_schema.clone(), &GroupOrdering::None)?,
            accs: aggs.accumulators()?,
        })
    }

    /// Merge a state batch (window start, the `keys` key columns, every aggregate's state
    /// columns: what a snapshot or a partial phase takes out) into this bin.
    pub(crate) fn merge_state(
        &mut self,
        state: &RecordBatch,
        keys: usize,
        state_counts: &[usize],
    ) -> datafusion::common::Result<()> {
        let mut ids = Vec::new();
        self.groups.intern(&state.columns()[1..=keys], &mut ids)?;
        let total = self.groups.len();
        merge_states(
            &mut self.accs,
            state_counts,
            &state.columns()[1 + keys..],
            &ids,
            total,
        )
    }

    /// The window's rows: keys, `window_start`, `window_end`, each aggregate's value.
    pub(crate) fn finish(
        mut self,
        start: i64,
        end: i64,
        output: &SchemaRef,
    ) -> datafusion::common::Result<RecordBatch> {
        let n = self.groups.len();
        let mut columns = self.groups.emit(EmitTo::All)?;
        columns.push(Arc::new(TimestampMillisecondArray::from_value(start, n)));
        columns.push(Arc::new(TimestampMillisecondArray::from_value(end, n)));
        for acc in &mut self.accs {
            columns.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(output.clone(), columns)?)
    }
}

/// The partial phase of a two-phase aggregation (see [`crate::two_phase`]): closed windows
/// leave as accumulator states, and stay in the checkpoint until the global stage's output
/// of them is durable.
struct PartialMode {
    shared: Arc<TwoPhaseShared>,
    /// Partials sent and not yet covered by the global stage's committed frontier, by start.
    sent: BTreeMap<i64, RecordBatch>,
    /// Restored from a checkpoint: `sent` goes to the (restarted) global stage again.
    resend: bool,
    /// The watermark last reported.
    reported: Option<i64>,
}

/// The tumbling- and hopping-window aggregation operator of one partition.
pub struct TumbleWindow {
    name: String,
    size_ms: i64,
    slide_ms: i64,
    allowed_lateness_ms: i64,
    late_policy: LatePolicy,
    time_idx: usize,
    key_idx: Vec<usize>,
    offset_idx: Option<usize>,
    key_schema: SchemaRef,
    aggs: AggregateSet,
    output: SchemaRef,
    watermark: WatermarkTracker,
    guards: WatermarkGuards,
    /// The watermark after the last input: where an idle advance starts from.
    idle_base: Option<i64>,
    /// The wall clock `max_future_ms` is measured against (epoch ms).
    clock: fn() -> i64,
    bins: BTreeMap<i64, Bin>,
    partial: Option<PartialMode>,
    fingerprint: Fingerprint,
    // scratch, reused across batches
    group_ids: Vec<usize>,
}

impl TumbleWindow {
    /// Build against the input schema; errors name the offending column or function.
    pub fn new(
        name: &str,
        cfg: &TumbleConfig,
        input: SchemaRef,
        default_time: &str,
    ) -> Result<Self, String> {
        Self::with_config(name, &WindowConfig::from(cfg), input, default_time)
    }

    /// A tumbling or hopping window (a session window is a
    /// [`crate::session::SessionWindow`]).
    pub fn with_config(
        name: &str,
        cfg: &WindowConfig,
        input: SchemaRef,
        default_time: &str,
    ) -> Result<Self, String> {
        let (slide_ms, size_ms) = match cfg.kind {
            WindowKind::Tumble { size_ms } => (size_ms, size_ms),
            WindowKind::Hop { slide_ms, size_ms } => (slide_ms, size_ms),
            WindowKind::Session { .. } | WindowKind::Continuous => {
                return Err("only tumbling and hopping windows are built by TumbleWindow".into())
            }
        };
        if let Some(e) = cfg.kind.validate().into_iter().next() {
            return Err(e);
        }
        let (time_idx, key_idx, key_fields) = window_columns(cfg, &input, default_time)?;
        let key_schema = Arc::new(Schema::new(key_fields.clone()));
        let aggs = AggregateSet::new(&cfg.aggregates, &input)?;
        let fingerprint = window_fingerprint(cfg, &input, default_time, &aggs, None);
        let mut out_fields = key_fields;
        out_fields.extend(window_bound_fields());
        out_fields.extend(aggs.fields.iter().cloned());
        Ok(Self {
            name: name.to_string(),
            fingerprint,
            size_ms,
            slide_ms,
            allowed_lateness_ms: cfg.allowed_lateness_ms,
            late_policy: cfg.late_policy,
            time_idx,
            key_idx,
            offset_idx: input.index_of(OFFSET_COLUMN).ok(),
            key_schema,
            aggs,
            output: Arc::new(Schema::new(out_fields)),
            watermark: WatermarkTracker::new(cfg.max_out_of_orderness_ms),
            guards: cfg.guards,
            idle_base: None,
            clock: wall_clock_ms,
            bins: BTreeMap::new(),
            partial: None,
            group_ids: Vec::new(),
        })
    }

    /// The partial phase of a two-phase aggregation: a closed window is emitted as its
    /// accumulators' state (window start, keys, state columns: [`Self::output_schema`]) for
    /// [`crate::two_phase::GlobalWindow`], with this partition's watermark, and kept in the
    /// checkpoint until `shared` says the global stage's output of it is durable.
    pub fn partial(mut self, shared: Arc<TwoPhaseShared>) -> Result<Self, String> {
        let mut fields = vec![Field::new("window_start", DataType::Int64, false)];
        fields.extend(self.key_schema.fields().iter().map(|f| f.as_ref().clone()));
        fields.extend(self.aggs.state_fields()?);
        self.output = Arc::new(Schema::new(fields));
        self.fingerprint = self.fingerprint.clone().set("phase", "partial");
        self.partial = Some(PartialMode {
            shared,
            sent: BTreeMap::new(),
            resend: false,
            reported: None,
        });
        Ok(self)
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.bins.len()
    }

    /// Measure `max_future_ms` against this clock (epoch ms) instead of the wall clock.
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    fn err(&self, e: impl std::fmt::Display) -> WeirError {
        WeirError::operator(&self.name, e)
    }

    fn new_bin(&self) -> Result<Bin> {
        Bin::new(&self.key_schema, &self.aggs).map_err(|e| self.err(e))
    }

    /// Update the bin of `start` with these rows (already selected for it).
    fn update(&mut self, start: i64, keys: &[ArrayRef], args: &[AggregateInput]) -> Result<()> {
        if !self.bins.contains_key(&start) {
            let bin = self.new_bin()?;
            self.bins.insert(start, bin);
        }
        let bin = self
            .bins
            .get_mut(&start)
            .expect("invariant: bin inserted above");
        self.group_ids.clear();
        bin.groups
            .intern(keys, &mut self.group_ids)
            .map_err(|e| WeirError::operator(&self.name, e))?;
        let total = bin.groups.len();
        update_accumulators(&mut bin.accs, args, &self.group_ids, total)
            .map_err(|e| WeirError::operator(&self.name, e))
    }

    /// Emit and drop every bin the watermark has closed (all of them at end of input).
    fn close(&mut self, all: bool, emit: &mut Emit) -> Result<()> {
        let wm = self.watermark.watermark();
        // Bins close in order of their end, which is the order of their start.
        while let Some((&start, _)) = self.bins.first_key_value() {
            if !all && !is_closed(start + self.size_ms, self.allowed_lateness_ms, wm) {
                break;
            }
            let bin = self
                .bins
                .remove(&start)
                .expect("invariant: first key exists");
            if self.partial.is_some() {
                let state = self.bin_state(start, bin)?;
                emit.emit(state.clone());
                if let Some(p) = &mut self.partial {
                    p.sent.insert(start, state);
                }
            } else {
                emit.emit(self.finish(start, bin)?);
            }
        }
        Ok(())
    }

    /// Partial mode, before new input: forget the partials the global stage's durable output
    /// covers, and after a restore send the rest again (the global stage restarted too).
    fn partial_begin(&mut self, emit: &mut Emit) {
        let (size, lateness) = (self.size_ms, self.allowed_lateness_ms);
        let Some(p) = &mut self.partial else {
            return;
        };
        if let Some(frontier) = p.shared.committed_frontier() {
            p.sent
                .retain(|start, _| !is_closed(start + size, lateness, Some(frontier)));
        }
        if std::mem::take(&mut p.resend) {
            for batch in p.sent.values() {
                emit.emit(batch.clone());
            }
        }
    }

    /// Partial mode, after the input: report the watermark when it moved (always after a
    /// restore, so the global stage hears of this partition).
    fn partial_end(&mut self, emit: &mut Emit, watermark: Option<i64>) {
        let Some(p) = &mut self.partial else {
            return;
        };
        if let Some(w) = watermark {
            if p.reported != Some(w) {
                emit.report_watermark(w);
                p.reported = Some(w);
            }
        }
    }

    fn finish(&self, start: i64, bin: Bin) -> Result<RecordBatch> {
        bin.finish(start, start + self.size_ms, &self.output)
            .map_err(|e| self.err(e))
    }

    /// Take a bin's state out as one batch: window start, keys, accumulator states.
    fn bin_state(&self, start: i64, mut bin: Bin) -> Result<RecordBatch> {
        let n = bin.groups.len();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_value(start, n))];
        columns.extend(bin.groups.emit(EmitTo::All).map_err(|e| self.err(e))?);
        for acc in &mut bin.accs {
            columns.extend(acc.state(EmitTo::All).map_err(|e| self.err(e))?);
        }
        state_batch(columns).map_err(|e| self.err(e))
    }

    /// Rebuild a bin from [`Self::bin_state`]'s batch.
    fn restore_bin(&mut self, state: &RecordBatch) -> Result<()> {
        let k = self.key_idx.len();
        let expected = 1 + k + self.aggs.state_counts.iter().sum::<usize>();
        if state.num_columns() != expected || state.num_rows() == 0 {
            return Err(self.err(format!(
                "checkpointed window state has {} columns, expected {expected}: the aggregates changed",
                state.num_columns()
            )));
        }
        let start = state
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| self.err("checkpointed window start is not Int64"))?
            .value(0);
        let mut bin = self.new_bin()?;
        bin.merge_state(state, k, &self.aggs.state_counts)
            .map_err(|e| self.err(e))?;
        self.bins.insert(start, bin);
        Ok(())
    }
}

/// `window_start` and `window_end`, the columns every window adds after its keys.
pub(crate) fn window_bound_fields() -> [Field; 2] {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    [
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
    ]
}

/// Checkpoint state columns as a batch (generic names, every column nullable).
pub(crate) fn state_batch(columns: Vec<ArrayRef>) -> datafusion::common::Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Merge state columns (each aggregate's `state_counts[i]` columns, in order) into `accs`.
pub(crate) fn merge_states(
    accs: &mut [Box<dyn GroupsAccumulator>],
    state_counts: &[usize],
    columns: &[ArrayRef],
    group_ids: &[usize],
    total_groups: usize,
) -> datafusion::common::Result<()> {
    let mut col = 0;
    for (acc, count) in accs.iter_mut().zip(state_counts) {
        acc.merge_batch(&columns[col..col + count], group_ids, total_groups)?;
        col += count;
    }
    Ok(())
}

/// The latest event time a window accepts in this batch and the wall-clock reading it comes
/// from (`max_future_ms`), read once per batch; `None` when the guard is off.
pub(crate) fn future_bound(guards: &WatermarkGuards, clock: fn() -> i64) -> Option<(i64, i64)> {
    guards.max_future_ms?;
    let now = clock();
    guards.future_bound(now).map(|bound| (bound, now))
}

/// Dead-letter row `i`, at event time `t`, for being past the `max_future_ms` bound of wall
/// clock `now` (counted as filtered when the input has no offsets to dead-letter).
pub(crate) fn reject_future(
    emit: &mut Emit,
    offsets: &Option<Int64Array>,
    i: usize,
    t: i64,
    now: i64,
    guards: &WatermarkGuards,
) {
    match offsets {
        Some(o) => emit.reject(
            o.value(i),
            ErrorKind::FutureEventTime,
            guards.future_message(t, now),
        ),
        None => emit.count_filtered(1),
    }
}

/// An idle time in milliseconds.
pub(crate) fn idle_ms(idle_for: std::time::Duration) -> i64 {
    i64::try_from(idle_for.as_millis()).unwrap_or(i64::MAX)
}

/// The event-time column and, when the batch carries it, the offset column of a window's
/// input batch.
pub(crate) fn event_columns(
    batch: &RecordBatch,
    time_idx: usize,
    offset_idx: Option<usize>,
) -> std::result::Result<(TimestampMillisecondArray, Option<Int64Array>), &'static str> {
    let ts = batch
        .column(time_idx)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or("time column is not a millisecond timestamp")?
        .clone();
    Ok((ts, weir_runtime::offset_column(batch, offset_idx)))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

impl Operator for TumbleWindow {
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
        self.partial_begin(emit);
        let (ts, offsets) =
            event_columns(&batch, self.time_idx, self.offset_idx).map_err(|e| self.err(e))?;

        // Assign rows to bins, deciding lateness against the watermark before each row. A
        // hopping event goes to each of its windows still open; it is late only when all of
        // them have closed (the newest closes last).
        let mut bins: Vec<(i64, Vec<u32>)> = Vec::with_capacity(2);
        let mut cur = usize::MAX;
        let mut accepted = 0u64;
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
            let newest = tumble_start(t, self.slide_ms);
            if is_closed(newest + self.size_ms, self.allowed_lateness_ms, wm) {
                match (self.late_policy, &offsets) {
                    (LatePolicy::Dlq, Some(o)) => emit.reject(
                        o.value(i),
                        ErrorKind::Late,
                        format!(
                            "event time {t} is in window [{newest}, {}) which closed at watermark {}",
                            newest + self.size_ms,
                            wm.unwrap_or_default()
                        ),
                    ),
                    _ => emit.count_late_dropped(1),
                }
            } else {
                let mut place = |start: i64| {
                    if cur >= bins.len() || bins[cur].0 != start {
                        cur = bins
                            .iter()
                            .position(|(s, _)| *s == start)
                            .unwrap_or_else(|| {
                                bins.push((start, Vec::new()));
                                bins.len() - 1
                            });
                    }
                    bins[cur].1.push(i as u32);
                };
                if self.slide_ms == self.size_ms {
                    place(newest);
                } else {
                    for start in hop_starts(t, self.slide_ms, self.size_ms) {
                        if !is_closed(start + self.size_ms, self.allowed_lateness_ms, wm) {
                            place(start);
                        }
                    }
                }
                accepted += 1;
            }
            self.watermark.observe(t);
        }
        emit.count_absorbed(accepted);

        let keys: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let args = self.aggs.evaluate(&batch).map_err(|e| self.err(e))?;
        for (start, rows) in bins {
            if rows.len() == n {
                self.update(start, &keys, &args)?;
            } else {
                let idx = UInt32Array::from(rows);
                let k = keys
                    .iter()
                    .map(|c| take(c.as_ref(), &idx, None).map_err(|e| self.err(e)))
                    .collect::<Result<Vec<_>>>()?;
                let a = args
                    .iter()
                    .map(|input| input.take(&idx).map_err(|e| self.err(e)))
                    .collect::<Result<Vec<_>>>()?;
                self.update(start, &k, &a)?;
            }
        }
        self.close(false, emit)?;
        let wm = self.watermark.watermark();
        self.idle_base = wm;
        self.partial_end(emit, wm);
        Ok(())
    }

    fn on_end_of_input(&mut self, emit: &mut Emit) -> Result<()> {
        self.partial_begin(emit);
        self.close(true, emit)?;
        self.partial_end(emit, Some(i64::MAX));
        Ok(())
    }

    /// An idle partition advances its watermark to the later of: with `idle_advance_ms`, its
    /// watermark at the last input plus the idle time ([`WatermarkGuards::idle_watermark`]);
    /// in partial mode, the watermark of the partitions that have input, so it does not hold
    /// the global stage back. Its open windows the advance passes close; its own later events
    /// behind that watermark are late, as they would be after a newer event.
    fn on_idle(&mut self, idle_for: std::time::Duration, emit: &mut Emit) -> Result<()> {
        let hint = self
            .partial
            .as_ref()
            .and_then(|p| p.shared.active_watermark());
        let own = self
            .guards
            .idle_watermark(self.idle_base, idle_ms(idle_for));
        let target = hint.max(own);
        if self.partial.is_none() && target.is_none() {
            return Ok(());
        }
        self.partial_begin(emit);
        if let Some(t) = target {
            if self.watermark.advance_to(t) {
                self.close(false, emit)?;
            }
        }
        let wm = self.watermark.watermark();
        self.partial_end(emit, wm);
        Ok(())
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        let bins = std::mem::take(&mut self.bins);
        let mut batches = Vec::with_capacity(bins.len());
        for (start, bin) in bins {
            batches.push(self.bin_state(start, bin)?);
        }
        // The accumulators gave their state away; rebuild them from it, exactly as a restart
        // would, so a snapshot never changes what is emitted later.
        for b in &batches {
            self.restore_bin(b)?;
        }
        let open = batches.len();
        let mut batches = batches;
        if let Some(p) = &self.partial {
            batches.extend(p.sent.values().cloned());
        }
        Ok(OperatorState {
            meta: serde_json::json!({
                "max_event_time": self.watermark.max_event_time(),
                "open": open,
            }),
            batches,
            config: None,
        })
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        let max = state.meta.get("max_event_time").and_then(|v| v.as_i64());
        self.watermark = self.watermark.with_max_event_time(max);
        self.idle_base = self.watermark.watermark();
        self.bins.clear();
        // Before partials were kept, every batch was an open window.
        let open = state
            .meta
            .get("open")
            .and_then(|v| v.as_u64())
            .map_or(state.batches.len(), |n| n as usize);
        let (bins, sent) = state.batches.split_at(open.min(state.batches.len()));
        for b in bins {
            self.restore_bin(b)?;
        }
        let mut kept = BTreeMap::new();
        for b in sent {
            let start = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .filter(|a| !a.is_empty())
                .map(|a| a.value(0))
                .ok_or_else(|| self.err("checkpointed partial has no window start"))?;
            kept.insert(start, b.clone());
        }
        match &mut self.partial {
            Some(p) => {
                p.sent = kept;
                p.resend = true;
                p.reported = None;
            }
            None if !sent.is_empty() => {
                return Err(self.err(
                    "the checkpoint holds partials of a two-phase aggregation, and this window \
                     is not one: the pipeline changed; start it with a fresh checkpoint store",
                ))
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]))
    }

    fn batch(rows: &[i64], first_offset: i64) -> RecordBatch {
        RecordBatch::try_new(
            input(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "a"))),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    rows.iter().copied(),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..rows.len() as i64).map(|i| first_offset + i),
                )),
            ],
        )
        .unwrap()
    }

    fn hop(slide_ms: i64, size_ms: i64) -> TumbleWindow {
        window(
            WindowKind::Hop { slide_ms, size_ms },
            WatermarkGuards::default(),
        )
    }

    fn window(kind: WindowKind, guards: WatermarkGuards) -> TumbleWindow {
        let cfg = WindowConfig {
            kind,
            guards,
            keys: vec!["key".into()],
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
        };
        TumbleWindow::with_config("window", &cfg, input(), "ts").unwrap()
    }

    fn idle_after(ms: i64) -> WatermarkGuards {
        WatermarkGuards {
            idle_advance_ms: Some(ms),
            max_future_ms: None,
        }
    }

    fn ms(ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(ms)
    }

    /// The wall clock of the `max_future_ms` tests: 2026-01-05T14:40:00Z.
    const NOW: i64 = 1_767_624_000_000;

    fn kinds(emit: &Emit) -> Vec<ErrorKind> {
        emit.rejects().iter().map(|r| r.kind).collect()
    }

    #[test]
    fn the_fingerprint_holds_sizes_keys_time_and_aggregates_but_not_the_watermark() {
        let f = hop(1_000, 3_000).fingerprint().unwrap();
        assert_eq!(
            f.description(),
            "kind = hop\nslide_ms = 1000\nsize_ms = 3000\nkeys = key string\n\
             time_column = ts\naggregates[0] = count(*) AS n\nstate_types = int64\n"
        );
        let mut cfg = WindowConfig::from(&TumbleConfig {
            size_ms: 3_000,
            keys: vec!["key".into()],
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
        });
        let before = TumbleWindow::with_config("w", &cfg, input(), "ts")
            .unwrap()
            .fingerprint();
        cfg.max_out_of_orderness_ms = 5_000;
        cfg.allowed_lateness_ms = 1_000;
        cfg.late_policy = LatePolicy::Drop;
        let after = TumbleWindow::with_config("w", &cfg, input(), "ts")
            .unwrap()
            .fingerprint();
        assert_eq!(before, after);
    }

    /// (window_start, count) of every emitted row.
    fn emitted(emit: &Emit) -> Vec<(i64, i64)> {
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
        out.sort();
        out
    }

    #[test]
    fn a_hopping_event_counts_in_its_open_windows_and_is_late_only_when_all_have_closed() {
        let mut w = hop(10, 30);
        let mut emit = Emit::default();
        // 35 is in [10, 40), [20, 50), [30, 60). Watermark 45 closes [10, 40) only.
        w.process(batch(&[35, 45], 0), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(10, 1)]);
        // 38 at watermark 45: [10, 40) has closed, [20, 50) and [30, 60) take it; not late.
        // 15 at watermark 45: its windows [-10, 20), [0, 30), [10, 40) have all closed: late.
        w.process(batch(&[38, 15], 2), &mut emit).unwrap();
        assert_eq!(emit.rejects().len(), 1);
        assert_eq!(emit.rejects()[0].offset, 3);
        assert_eq!(emit.absorbed(), 3);
        w.on_end_of_input(&mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(10, 1), (20, 3), (30, 3), (40, 1)]);
    }

    #[test]
    fn an_idle_partitions_open_window_closes_after_idle_advance_ms_with_no_further_input() {
        let mut w = window(WindowKind::Tumble { size_ms: 60_000 }, idle_after(5_000));
        let mut emit = Emit::default();
        w.process(batch(&[10_000, 50_000], 0), &mut emit).unwrap();
        w.on_idle(ms(4_999), &mut emit).unwrap();
        assert!(
            emitted(&emit).is_empty(),
            "not idle for idle_advance_ms yet"
        );
        // Idle for 5 s: the watermark is 50 s + 5 s, not the wall clock (this is old data).
        w.on_idle(ms(5_000), &mut emit).unwrap();
        assert!(
            emitted(&emit).is_empty(),
            "watermark 55 s < window end 60 s"
        );
        w.on_idle(ms(10_000), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(0, 2)]);
        assert_eq!(w.open_windows(), 0);
    }

    #[test]
    fn an_idle_partitions_hopping_windows_close_as_its_idle_time_grows() {
        let mut w = window(
            WindowKind::Hop {
                slide_ms: 10,
                size_ms: 30,
            },
            idle_after(5),
        );
        let mut emit = Emit::default();
        // 35 is in [10, 40), [20, 50), [30, 60).
        w.process(batch(&[35], 0), &mut emit).unwrap();
        w.on_idle(ms(5), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(10, 1)]);
        w.on_idle(ms(25), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(10, 1), (20, 1), (30, 1)]);
    }

    #[test]
    fn without_idle_advance_an_idle_partition_keeps_its_window_open() {
        let mut w = window(
            WindowKind::Tumble { size_ms: 60_000 },
            WatermarkGuards::default(),
        );
        let mut emit = Emit::default();
        w.process(batch(&[10_000], 0), &mut emit).unwrap();
        w.on_idle(ms(3_600_000), &mut emit).unwrap();
        assert!(emitted(&emit).is_empty());
        assert_eq!(w.open_windows(), 1);
    }

    #[test]
    fn an_event_behind_the_idle_advanced_watermark_is_late_also_after_a_restart() {
        let mut w = window(WindowKind::Tumble { size_ms: 60_000 }, idle_after(5_000));
        let mut emit = Emit::default();
        w.process(batch(&[50_000], 0), &mut emit).unwrap();
        w.on_idle(ms(10_000), &mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(0, 1)]);
        let state = w.snapshot().unwrap();

        w.process(batch(&[59_000], 1), &mut emit).unwrap();
        assert_eq!(kinds(&emit), vec![ErrorKind::Late]);

        let mut restarted = window(WindowKind::Tumble { size_ms: 60_000 }, idle_after(5_000));
        restarted.restore(state).unwrap();
        let mut after = Emit::default();
        restarted.process(batch(&[59_000], 1), &mut after).unwrap();
        assert_eq!(
            kinds(&after),
            vec![ErrorKind::Late],
            "the closed window stays closed"
        );
        restarted.on_end_of_input(&mut after).unwrap();
        assert!(
            emitted(&after).is_empty(),
            "window [0, 60 s) is not emitted twice"
        );
    }

    #[test]
    fn events_far_ahead_of_the_wall_clock_go_to_the_dlq_and_leave_the_valid_ones_on_time() {
        let guards = WatermarkGuards {
            idle_advance_ms: None,
            max_future_ms: Some(60_000),
        };
        let mut w = window(WindowKind::Tumble { size_ms: 60_000 }, guards).with_clock(|| NOW);
        let mut emit = Emit::default();
        let ahead = NOW + 600_000;
        let start = NOW - 120_000;
        // Valid trades over two minutes with three stamped 10 minutes ahead among them.
        let mut rows: Vec<i64> = (0..120).map(|i| start + i * 1_000).collect();
        for at in [10, 50, 90] {
            rows.insert(at, ahead);
        }
        w.process(batch(&rows, 0), &mut emit).unwrap();
        assert_eq!(kinds(&emit), vec![ErrorKind::FutureEventTime; 3]);
        assert_eq!(
            emit.rejects().iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![10, 50, 90]
        );
        let message = &emit.rejects()[0].message;
        assert!(
            message.contains(&format!("event time {ahead} ms"))
                && message.contains("max_future_ms = 60000 ms"),
            "{message}"
        );
        assert_eq!(emit.absorbed(), 120, "no valid trade is late");
        w.on_end_of_input(&mut emit).unwrap();
        assert_eq!(emitted(&emit), vec![(start, 60), (start + 60_000, 60)]);
    }

    #[test]
    fn the_first_event_of_a_partition_is_checked_against_the_wall_clock() {
        let guards = WatermarkGuards {
            idle_advance_ms: None,
            max_future_ms: Some(60_000),
        };
        let mut w = window(WindowKind::Tumble { size_ms: 60_000 }, guards).with_clock(|| NOW);
        let mut emit = Emit::default();
        w.process(batch(&[NOW + 600_000, NOW - 30_000], 0), &mut emit)
            .unwrap();
        assert_eq!(kinds(&emit), vec![ErrorKind::FutureEventTime]);
        assert_eq!(emit.absorbed(), 1);
    }

    #[test]
    fn max_future_never_refuses_a_replay_of_old_data() {
        let guards = WatermarkGuards {
            idle_advance_ms: None,
            max_future_ms: Some(1),
        };
        let mut w = window(WindowKind::Tumble { size_ms: 60_000 }, guards).with_clock(|| NOW);
        let mut emit = Emit::default();
        // A year-old stream with a jump of a day in it.
        let old = NOW - 365 * 86_400_000;
        w.process(batch(&[old, old + 1_000, old + 86_400_000], 0), &mut emit)
            .unwrap();
        assert!(emit.rejects().is_empty());
        assert_eq!(emit.absorbed(), 3);
    }

    #[test]
    fn window_kinds_refuse_zero_and_negative_sizes() {
        assert_eq!(
            WindowKind::Hop {
                slide_ms: 0,
                size_ms: -5
            }
            .validate(),
            vec![
                "hop slide must be positive, got 0 ms".to_string(),
                "hop size must be positive, got -5 ms".to_string()
            ]
        );
        assert_eq!(
            WindowKind::Session { gap_ms: 0 }.validate(),
            vec!["session gap must be positive, got 0 ms".to_string()]
        );
    }

    #[test]
    fn a_hop_may_put_an_event_in_max_hops_per_event_windows_and_no_more() {
        // 60 s every 60 ms: exactly 1000 windows; a millisecond longer: 1001.
        assert!(WindowKind::Hop {
            slide_ms: 60,
            size_ms: 60_000
        }
        .check()
        .is_empty());
        assert_eq!(
            WindowKind::Hop {
                slide_ms: 60,
                size_ms: 60_001
            }
            .check(),
            vec![WindowRuleError::TooManyHops {
                slide_ms: 60,
                size_ms: 60_001,
                hops: 1001
            }]
        );
    }

    #[test]
    fn the_largest_sizes_are_checked_without_overflow() {
        assert_eq!(
            WindowKind::Hop {
                slide_ms: i64::MAX - 1,
                size_ms: i64::MAX
            }
            .check(),
            vec![]
        );
        assert_eq!(
            WindowKind::Hop {
                slide_ms: 1,
                size_ms: i64::MAX
            }
            .check(),
            vec![WindowRuleError::TooManyHops {
                slide_ms: 1,
                size_ms: i64::MAX,
                hops: i64::MAX
            }]
        );
    }

    #[test]
    fn a_hop_shorter_than_its_slide_is_refused() {
        assert_eq!(
            WindowKind::Hop {
                slide_ms: 30_000,
                size_ms: 10_000
            }
            .check(),
            vec![WindowRuleError::SizeBelowSlide {
                size_ms: 10_000,
                slide_ms: 30_000
            }]
        );
    }

    #[test]
    fn each_window_setting_must_be_positive() {
        let not_positive = |setting, value_ms| WindowRuleError::NotPositive { setting, value_ms };
        let cases = [
            (
                WindowKind::Tumble { size_ms: 0 },
                vec![not_positive(WindowSetting::TumbleSize, 0)],
            ),
            (
                WindowKind::Hop {
                    slide_ms: -1,
                    size_ms: 0,
                },
                vec![
                    not_positive(WindowSetting::HopSlide, -1),
                    not_positive(WindowSetting::HopSize, 0),
                ],
            ),
            (
                WindowKind::Session { gap_ms: -3 },
                vec![not_positive(WindowSetting::SessionGap, -3)],
            ),
            (WindowKind::Tumble { size_ms: 1 }, vec![]),
            (WindowKind::Session { gap_ms: 1 }, vec![]),
            (WindowKind::Continuous, vec![]),
        ];
        for (kind, expected) in cases {
            assert_eq!(kind.check(), expected, "{kind:?}");
        }
    }

    #[test]
    fn the_builder_and_the_file_refuse_a_hop_of_a_day_every_millisecond() {
        let day_every_ms = WindowKind::Hop {
            slide_ms: 1,
            size_ms: 86_400_000,
        };
        let cfg = WindowConfig {
            kind: day_every_ms,
            guards: WatermarkGuards::default(),
            keys: vec!["key".into()],
            time_column: None,
            max_out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
            late_policy: LatePolicy::Dlq,
            aggregates: vec![AggregateConfig {
                function: "count".into(),
                column: None,
                alias: None,
                distinct: false,
                sql: None,
            }],
        };
        let err = build_window("w", &cfg, input(), "ts").err();
        assert_eq!(
            err.as_deref(),
            Some(
                "hop slide 1 ms puts each event in 86400000 windows of 86400000 ms; at most 1000 \
                 are allowed (raise the slide)"
            )
        );
        let file = HopConfig {
            slide_ms: 1,
            size_ms: 86_400_000,
            keys: cfg.keys.clone(),
            time_column: None,
            max_out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
            late_policy: LatePolicy::Dlq,
            aggregates: cfg.aggregates.clone(),
        };
        assert_eq!(
            file.validate("operators[2]"),
            vec![
                "operators[2].slide_ms: 1 ms puts each event in 86400000 windows of 86400000 ms; \
                 at most 1000 are allowed (raise slide_ms)"
                    .to_string()
            ]
        );
    }
}
