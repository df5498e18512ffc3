//! `pipeline.toml`: the pipeline a worker runs.
//!
//! Loading has two phases: [`ValidatedPipeline::load`] parses and validates without
//! any I/O beyond reading the file, and reports every problem at once, each with the file, the
//! key and the reason; [`crate::pipeline::Pipeline::from_config`] then opens sources and sinks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::rules;
use crate::toml_de::{section, tagged_section};
use serde::Deserialize;
use weir_operators::{SchemaConfig, UpcastConfig, UpcastStepConfig};
use weir_runtime::{Backoff, RetrySchedule};

pub use crate::registry::{DlqConfig, OperatorConfig, SinkConfig, SourceConfig};

/// `type = "filter"`: keep rows for which a SQL predicate is true.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// A SQL boolean expression over the input columns.
    pub predicate: String,
}

/// `type = "project"`: compute new columns from SQL expressions.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The output columns, in order.
    pub columns: Vec<ProjectColumn>,
}

/// One output column of a `project` operator.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectColumn {
    /// SQL expression over the input columns.
    pub expr: String,
    /// Output column name.
    pub name: String,
}

/// `type = "null"`: discards rows (benchmarks, dry runs).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}

/// `[dlq.retry]`: how an event that an operator fails on with a retryable error is tried
/// again before it goes to the DLQ (ARCHITECTURE.md, "Retries before the DLQ"). Without it,
/// the default schedule: 5 attempts, the first at once, then after 1 s, 5 s, 30 s and 2 min.
///
/// ```toml
/// [dlq.retry]
/// attempts = 4                      # in all, the first included
/// backoff_ms = [200, 1000, 5000]    # the wait before each attempt after the first
/// # or exponential: initial_backoff_ms = 200, multiplier = 2, max_backoff_ms = 60000
/// retry_panics = false              # a panic goes to the DLQ at once (default)
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqRetryConfig {
    /// Attempts in all, the first included (1: no retries). Default: one more than the
    /// waits of `backoff_ms`, else 5.
    pub attempts: Option<u32>,
    /// The wait before each attempt after the first, in milliseconds: `attempts - 1` of them.
    pub backoff_ms: Option<Vec<u64>>,
    /// Exponential waits instead: the first one, in milliseconds...
    pub initial_backoff_ms: Option<u64>,
    /// ... multiplied by this before each later attempt (default 2) ...
    pub multiplier: Option<f64>,
    /// ... up to this (default 120000, or `initial_backoff_ms` when that is longer).
    pub max_backoff_ms: Option<u64>,
    /// Retry an event the operator panics on like a retryable error (default false: to the
    /// DLQ at once).
    #[serde(default)]
    pub retry_panics: bool,
}

impl DlqRetryConfig {
    /// The schedule this section describes, or every problem with it as `"<at>.<key>:
    /// reason"` lines (`at`: `dlq.retry`).
    pub fn schedule(&self, at: &str) -> Result<RetrySchedule, Vec<String>> {
        use weir_runtime::retry_schedule::DEFAULT_BACKOFF;
        let ms = Duration::from_millis;
        let exponential = self.initial_backoff_ms.is_some()
            || self.multiplier.is_some()
            || self.max_backoff_ms.is_some();
        let backoff = match (&self.backoff_ms, exponential) {
            (Some(_), true) => {
                return Err(vec![format!(
                    "{at}.backoff_ms: give either a list of waits (backoff_ms) or an exponential \
                     backoff (initial_backoff_ms, multiplier, max_backoff_ms), not both"
                )])
            }
            (Some(waits), false) => Backoff::Fixed(waits.iter().map(|w| ms(*w)).collect()),
            (None, true) => {
                let Some(initial) = self.initial_backoff_ms else {
                    return Err(vec![format!(
                        "{at}.initial_backoff_ms: missing (an exponential backoff starts from \
                         it; or give the waits as backoff_ms)"
                    )]);
                };
                Backoff::Exponential {
                    initial: ms(initial),
                    multiplier: self.multiplier.unwrap_or(2.0),
                    max: ms(self
                        .max_backoff_ms
                        .unwrap_or(DEFAULT_MAX_BACKOFF_MS.max(initial))),
                }
            }
            // Attempts alone: the default waits, the last one repeated.
            (None, false) => {
                let attempts = self.attempts.unwrap_or(DEFAULT_BACKOFF.len() as u32 + 1);
                Backoff::Fixed(
                    (1..attempts.max(1))
                        .map(|a| DEFAULT_BACKOFF[(a as usize - 1).min(DEFAULT_BACKOFF.len() - 1)])
                        .collect(),
                )
            }
        };
        let attempts = match (&backoff, self.attempts) {
            (_, Some(n)) => n,
            (Backoff::Fixed(waits), None) if self.backoff_ms.is_some() => waits.len() as u32 + 1,
            _ => DEFAULT_BACKOFF.len() as u32 + 1,
        };
        let schedule = RetrySchedule {
            attempts,
            backoff,
            retry_panics: self.retry_panics,
        };
        let problems = schedule.problems(at);
        if problems.is_empty() {
            Ok(schedule)
        } else {
            Err(problems)
        }
    }
}

/// The longest wait of an exponential backoff without `max_backoff_ms`: the default
/// schedule's longest.
const DEFAULT_MAX_BACKOFF_MS: u64 = 120_000;

/// `[checkpoint]`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory of the local checkpoint store. Not used (and optional) when the pipeline has
    /// a `postgres` sink: checkpoints are then stored in the same transaction as its rows.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Time between checkpoints of a partition, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    5_000
}

/// `[batch]`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most rows in one batch.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Longest wait for a batch to fill, in milliseconds.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            linger_ms: default_linger_ms(),
        }
    }
}

fn default_max_rows() -> usize {
    8192
}

fn default_linger_ms() -> u64 {
    100
}

/// `[worker]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Threads of the CPU pool (default: the number of cores).
    pub cpu_threads: Option<usize>,
    /// Capacity, in batches, of each channel between stages (default 4).
    pub channel_capacity: Option<usize>,
    /// A partition with no input this long is idle: a window whose groups span partitions
    /// stops waiting for it (default 5000; lowered to `[watermark] idle_advance_ms` when that
    /// is shorter, so the idle advance starts in time).
    pub idle_timeout_ms: Option<u64>,
    /// Attempts in all (the first included) at a sink write, prepare or commit or a
    /// checkpoint save that fails with a transient error, before the run stops with the
    /// last error (default 30; ARCHITECTURE.md, "Errors and retries").
    pub retry_max_attempts: Option<u32>,
    /// Time from the first attempt after which such a step is not tried again and the run
    /// stops with the last error (default 120000).
    pub retry_max_elapsed_ms: Option<u64>,
    /// How `weir run` writes its log on stderr: `human` (default; coloured only on a
    /// terminal and without `NO_COLOR`) or `json` (one JSON object per line, each telemetry
    /// event with its fields). `--log-format` wins over it.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// Off a terminal, `weir run` logs a status line (events/s, rows/s, lag, watermark lag,
    /// dead letters) every this many seconds (default 30; 0: never). On a terminal the line
    /// is redrawn every second instead.
    pub status_interval_secs: Option<u64>,
}

/// `[worker] log_format` / `--log-format`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The sections of a pipeline file, as read. Only validation turns them into a
/// [`ValidatedPipeline`], the one thing a pipeline is built from.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
pub struct PipelineConfig {
    /// The pipeline's name: it names its checkpoints, its consumer group (unless the source
    /// gives `group_id`) and its dead letters.
    pub name: String,
    /// `[source]`: where events come from, tagged by `type`.
    pub source: SourceConfig,
    /// `[schema]`: the fields of an event and how they are decoded.
    pub schema: SchemaConfig,
    /// `[upcast]`: older event versions mapped to `schema` before any operator.
    pub upcast: Option<UpcastConfig>,
    /// `[[operators]]`: the operators in order, each tagged by `type` (or `sql` instead).
    #[schemars(default)]
    pub operators: Vec<OperatorConfig>,
    /// A streaming SQL query instead of `[[operators]]`.
    pub sql: Option<String>,
    /// `[watermark]`: event-time settings.
    #[schemars(default)]
    pub watermark: WatermarkConfig,
    /// `[[sinks]]`: where results go, at least one, each tagged by `type`.
    pub sinks: Vec<SinkConfig>,
    /// `[dlq]`: where the messages that could not be processed go, tagged by `type`.
    pub dlq: DlqConfig,
    /// `[dlq.retry]` (read apart from the DLQ's `type` and its keys).
    #[schemars(rename = "dlq.retry", default)]
    pub dlq_retry: DlqRetryConfig,
    /// `[checkpoint]`: where and how often offsets and state are checkpointed.
    pub checkpoint: CheckpointConfig,
    /// `[batch]`: how events are batched.
    #[schemars(default)]
    pub batch: BatchConfig,
    /// `[worker]`: threads, channels, retries, logs and status of `weir run`.
    #[schemars(default)]
    pub worker: WorkerConfig,
    /// `[metrics]`: the HTTP endpoint of `weir run` (`crate::metrics_http`).
    pub metrics: Option<crate::metrics_http::MetricsConfig>,
}

/// `[watermark]`: event-time settings of a `sql` query; `idle_advance_ms` and
/// `max_future_ms` apply to the windows of `[[operators]]` too (the other keys are each
/// window operator's own there). The defaults are the same as `weir sql`'s and a window
/// operator's own keys: no disorder allowed (0 ms), no lateness, late events to the DLQ;
/// `weir run --check` prints the ones a pipeline runs with.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Bound on disorder: watermark = max event time seen − this (default 0).
    #[serde(default)]
    pub max_out_of_orderness_ms: i64,
    /// How long past its end (in watermark time) a window still accepts events.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// What to do with late events: `dlq` (default) or `drop`.
    #[serde(default)]
    pub late_policy: weir_operators::LatePolicy,
    /// Opt-in (default off): a partition with no input for this long advances its watermark
    /// with processing time, so its open windows close: it becomes the watermark at its last
    /// input plus the time since that input. Events that arrive later behind it are late.
    #[serde(default)]
    pub idle_advance_ms: Option<i64>,
    /// Opt-in (default off): an event whose time is more than this ahead of the wall clock
    /// (when weir processes it) goes to the DLQ as `future_event_time` instead of advancing
    /// its partition's watermark. The wall clock, not the watermark: the first event of a
    /// partition is checked too, and a replay of old data is never refused.
    #[serde(default)]
    pub max_future_ms: Option<i64>,
}

/// The `[watermark]` keys that only a `sql` query reads.
const SQL_ONLY_WATERMARK_KEYS: &[&str] = &[
    "max_out_of_orderness_ms",
    "allowed_lateness_ms",
    "late_policy",
];

impl WatermarkConfig {
    pub fn sql_options(&self) -> weir_operators::SqlOptions {
        weir_operators::SqlOptions {
            max_out_of_orderness_ms: self.max_out_of_orderness_ms,
            allowed_lateness_ms: self.allowed_lateness_ms,
            late_policy: self.late_policy,
            colocation: None,
        }
    }

    pub fn guards(&self) -> weir_runtime::WatermarkGuards {
        weir_runtime::WatermarkGuards {
            idle_advance_ms: self.idle_advance_ms,
            max_future_ms: self.max_future_ms,
        }
    }

    /// Value checks; `keys` are the keys the file sets, `sql` whether the pipeline has a
    /// query and `windows` whether its `[[operators]]` hold a window.
    fn validate(&self, keys: &[&String], sql: bool, windows: bool) -> Vec<String> {
        let mut e = Vec::new();
        for (key, v) in [
            ("idle_advance_ms", self.idle_advance_ms),
            ("max_future_ms", self.max_future_ms),
        ] {
            match v {
                Some(v) if v <= 0 => e.push(format!("watermark.{key}: must be positive, got {v}")),
                Some(_) if !sql && !windows => e.push(format!(
                    "watermark.{key}: the pipeline has no window (tumble, hop, session) to apply it to"
                )),
                _ => {}
            }
        }
        for key in keys {
            if !sql && SQL_ONLY_WATERMARK_KEYS.contains(&key.as_str()) {
                e.push(format!(
                    "watermark.{key}: only used with `sql`; a window operator has its own \
                     (operators[i].{key})"
                ));
            }
        }
        e
    }
}

impl PipelineConfig {
    /// The retry schedule of `[dlq.retry]` (checked when the file was loaded).
    pub fn retry_schedule(&self) -> RetrySchedule {
        self.dlq_retry.schedule("dlq.retry").unwrap_or_default()
    }

    /// The watermark each event-time part of the pipeline runs with, one line each (`weir
    /// run --check`): the `[watermark]` of a `sql` query, or each window operator's own.
    pub fn watermark_summary(&self) -> Vec<String> {
        let line = |ooo: i64, lateness: i64, policy: weir_operators::LatePolicy| {
            format!(
                "max_out_of_orderness_ms = {ooo}, allowed_lateness_ms = {lateness}, late_policy = {}",
                match policy {
                    weir_operators::LatePolicy::Dlq => "dlq",
                    weir_operators::LatePolicy::Drop => "drop",
                }
            )
        };
        let mut out = Vec::new();
        if self.sql.is_some() {
            let w = &self.watermark;
            out.push(format!(
                "watermark: {}",
                line(
                    w.max_out_of_orderness_ms,
                    w.allowed_lateness_ms,
                    w.late_policy
                )
            ));
        }
        for (i, op) in self.operators.iter().enumerate() {
            let Some((ooo, lateness, policy)) = op.component().watermark() else {
                continue;
            };
            out.push(format!(
                "watermark (operators[{i}]): {}",
                line(ooo, lateness, policy)
            ));
        }
        out
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub errors: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} has {n} error{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}: {e}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

pub(crate) const TOP_LEVEL: &[&str] = &[
    "name",
    "source",
    "schema",
    "upcast",
    "operators",
    "sql",
    "watermark",
    "sinks",
    "dlq",
    "checkpoint",
    "batch",
    "worker",
    "metrics",
];

/// A pipeline file that parsed and passed every check: the only input of
/// [`crate::pipeline::Pipeline::from_config`]. Its sections are read through `Deref`; a
/// changed copy (`weir replay`'s shadow pipeline) is checked again by [`Self::derive`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPipeline {
    config: PipelineConfig,
}

impl std::ops::Deref for ValidatedPipeline {
    type Target = PipelineConfig;

    fn deref(&self) -> &PipelineConfig {
        &self.config
    }
}

/// The sections that were read, for the checks (a section with errors is `None`).
struct Sections<'a> {
    name: Option<&'a String>,
    source: Option<&'a SourceConfig>,
    schema: Option<&'a SchemaConfig>,
    upcast: Option<&'a UpcastConfig>,
    operators: &'a [OperatorConfig],
    sql: Option<&'a String>,
    watermark: &'a WatermarkConfig,
    sinks: &'a [SinkConfig],
    dlq: Option<&'a DlqConfig>,
    dlq_retry: &'a DlqRetryConfig,
    checkpoint: Option<&'a CheckpointConfig>,
    batch: &'a BatchConfig,
    worker: &'a WorkerConfig,
    /// The file's text, so SQL errors count positions from its start.
    text: Option<&'a str>,
}

impl ValidatedPipeline {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            errors: vec![format!("cannot read the file: {e}")],
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate TOML text; `file` names it in errors. `${VAR}` in string values
    /// is read from the process environment ([`crate::env_vars`]).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, file, &crate::env_vars::process_env)
    }

    /// [`Self::parse`] with the environment `env`.
    pub fn parse_with_env(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> crate::env_vars::Var,
    ) -> Result<Self, ConfigError> {
        let fail = |errors: Vec<String>| ConfigError {
            file: file.to_path_buf(),
            errors,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or_default();
            fail(vec![format!("{at}invalid TOML: {}", one_line(e.message()))])
        })?;
        let mut errors = Vec::new();
        crate::env_vars::resolve_table(&mut table, env, &mut errors);
        // A value whose variable is missing is left as written: what the checks would say of
        // it (`not a PostgreSQL connection string: ${PG_URL}`) follows from that error alone.
        let unresolved: Vec<String> = errors
            .iter()
            .filter_map(|e| e.split_once(": ").map(|(key, _)| format!("{key}: ")))
            .collect();
        let env_errors = errors.len();
        for key in table.keys() {
            if !TOP_LEVEL.contains(&key.as_str()) {
                errors.push(format!(
                    "{key}: unknown key (expected one of {})",
                    TOP_LEVEL.join(", ")
                ));
            }
        }
        let name: Option<String> = required(&table, "name", section, &mut errors);
        let source: Option<SourceConfig> = required(&table, "source", tagged_section, &mut errors);
        let schema: Option<SchemaConfig> = required(&table, "schema", section, &mut errors);
        let upcast = upcast_section(&table, &mut errors);
        let operators: Vec<OperatorConfig> = list(&table, "operators", tagged_section, &mut errors);
        let sql: Option<String> = optional(&table, "sql", &mut errors);
        let watermark: WatermarkConfig =
            optional(&table, "watermark", &mut errors).unwrap_or_default();
        let sinks: Vec<SinkConfig> = list(&table, "sinks", tagged_section, &mut errors);
        let dlq_retry = dlq_retry_section(&mut table, &mut errors);
        let dlq: Option<DlqConfig> = required(&table, "dlq", tagged_section, &mut errors);
        let checkpoint: Option<CheckpointConfig> =
            required(&table, "checkpoint", section, &mut errors);
        let batch: BatchConfig = optional(&table, "batch", &mut errors).unwrap_or_default();
        let worker: WorkerConfig = optional(&table, "worker", &mut errors).unwrap_or_default();
        let metrics: Option<crate::metrics_http::MetricsConfig> =
            optional(&table, "metrics", &mut errors);
        if let Some(m) = &metrics {
            errors.extend(m.validate());
        }
        if table.contains_key("sinks")
            && sinks.is_empty()
            && !errors.iter().any(|e| e.starts_with("sinks"))
        {
            errors.push("sinks: at least one sink is required".into());
        } else if !table.contains_key("sinks") {
            errors.push("sinks: missing (add at least one [[sinks]] table)".into());
        }
        let section_errors = errors.iter().any(|e| e.starts_with("schema"));
        errors.extend(check(Sections {
            name: name.as_ref(),
            source: source.as_ref(),
            schema: schema.as_ref().filter(|_| !section_errors),
            upcast: upcast.as_ref(),
            operators: &operators,
            sql: sql.as_ref(),
            watermark: &watermark,
            sinks: &sinks,
            dlq: dlq.as_ref(),
            dlq_retry: &dlq_retry,
            checkpoint: checkpoint.as_ref(),
            batch: &batch,
            worker: &worker,
            text: Some(text),
        }));
        if let Some(w) = table.get("watermark").and_then(|w| w.as_table()) {
            let windows = operators
                .iter()
                .any(|o| o.component().watermark().is_some());
            let keys: Vec<&String> = w.keys().collect();
            errors.extend(watermark.validate(&keys, sql.is_some(), windows));
        }

        let mut i = 0;
        errors.retain(|e| {
            i += 1;
            i <= env_errors || !unresolved.iter().any(|key| e.starts_with(key.as_str()))
        });
        match (name, source, schema, dlq, checkpoint) {
            (Some(name), Some(source), Some(schema), Some(dlq), Some(checkpoint))
                if errors.is_empty() =>
            {
                Ok(Self {
                    config: PipelineConfig {
                        name,
                        source,
                        schema,
                        upcast,
                        operators,
                        sql,
                        watermark,
                        sinks,
                        dlq,
                        dlq_retry,
                        checkpoint,
                        batch,
                        worker,
                        metrics,
                    },
                })
            }
            _ => Err(fail(errors)),
        }
    }

    /// A copy changed by `change` (e.g. `weir replay`'s shadow pipeline), checked again as a
    /// whole: the errors it has, as `"<key>: <reason>"` lines.
    pub fn derive(&self, change: impl FnOnce(&mut PipelineConfig)) -> Result<Self, Vec<String>> {
        let mut config = self.config.clone();
        change(&mut config);
        let c = &config;
        let mut errors = Vec::new();
        if c.sinks.is_empty() {
            errors.push("sinks: at least one sink is required".into());
        }
        errors.extend(check(Sections {
            name: Some(&c.name),
            source: Some(&c.source),
            schema: Some(&c.schema),
            upcast: c.upcast.as_ref(),
            operators: &c.operators,
            sql: c.sql.as_ref(),
            watermark: &c.watermark,
            sinks: &c.sinks,
            dlq: Some(&c.dlq),
            dlq_retry: &c.dlq_retry,
            checkpoint: Some(&c.checkpoint),
            batch: &c.batch,
            worker: &c.worker,
            text: None,
        }));
        if errors.is_empty() {
            Ok(Self { config })
        } else {
            Err(errors)
        }
    }
}

/// Every check of a pipeline beyond reading its sections: each component's values (its
/// registry entry's `validate`), the rules between components ([`crate::rules`]), and the
/// operator chain or query against the schema.
fn check(s: Sections<'_>) -> Vec<String> {
    let mut errors = Vec::new();
    if s.name.is_some_and(|n| n.trim().is_empty()) {
        errors.push("name: must not be empty".into());
    }
    if let Some(src) = s.source {
        errors.extend(src.component().validate("source"));
    }
    let mut schema_ok = s.schema.is_some();
    if let Some(schema) = s.schema {
        let before = errors.len();
        errors.extend(schema.validate("schema"));
        schema_ok = errors.len() == before;
        if let (Some(u), true) = (s.upcast, schema_ok) {
            errors.extend(u.validate("upcast", schema));
        }
    }
    for (i, op) in s.operators.iter().enumerate() {
        errors.extend(op.component().validate(&format!("operators[{i}]")));
    }
    for (i, sink) in s.sinks.iter().enumerate() {
        errors.extend(sink.component().validate(&format!("sinks[{i}]")));
    }
    if let Some(d) = s.dlq {
        errors.extend(d.component().validate("dlq"));
    }
    if let Err(e) = s.dlq_retry.schedule("dlq.retry") {
        errors.extend(e);
    }
    errors.extend(rules::one_storing_sink(s.sinks));
    errors.extend(rules::transactional_kafka_needs_kafka_source(
        s.source, s.sinks,
    ));
    if let Some(c) = s.checkpoint {
        errors.extend(rules::checkpoints_have_a_store(c, s.sinks));
    }
    if s.batch.max_rows == 0 {
        errors.push("batch.max_rows: must be positive, got 0".into());
    }
    for (key, v) in [
        ("cpu_threads", s.worker.cpu_threads.map(|n| n as u64)),
        ("idle_timeout_ms", s.worker.idle_timeout_ms),
        (
            "channel_capacity",
            s.worker.channel_capacity.map(|n| n as u64),
        ),
        (
            "retry_max_attempts",
            s.worker.retry_max_attempts.map(u64::from),
        ),
        ("retry_max_elapsed_ms", s.worker.retry_max_elapsed_ms),
    ] {
        if v == Some(0) {
            errors.push(format!("worker.{key}: must be positive, got 0"));
        }
    }
    // The operator chain against the schema: columns, expressions, aggregate functions,
    // and whether its keys are co-located by the source.
    if let (Some(schema), true) = (s.schema, schema_ok) {
        let colocation = match s.source {
            Some(src) => schema.colocation(&src.component().partitioning()),
            None => Ok(schema.declared_colocation()),
        };
        let colocation = match colocation {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("schema.partition_key: {e}"));
                schema.declared_colocation()
            }
        };
        errors.extend(crate::pipeline::check_operators(
            schema,
            &colocation,
            s.operators,
        ));
        let mut two_phase = crate::pipeline::runs_in_two_phases(&colocation, s.operators);
        let mut plan = None;
        if let Some(q) = s.sql {
            let options = weir_operators::SqlOptions {
                colocation: Some(colocation.clone()),
                ..s.watermark.sql_options()
            };
            // Positions in errors count from the start of the file, not of the query.
            let in_file = s.text.and_then(sql_origin).map_or_else(
                || q.clone(),
                |(line, col)| format!("{}{}{q}", "\n".repeat(line - 1), " ".repeat(col - 1)),
            );
            match weir_operators::plan_sql(&in_file, &schema.table, schema, &options) {
                Ok(p) => {
                    two_phase |= p.two_phase;
                    plan = Some(p);
                }
                Err(e) => errors.push(format!("sql: {e}")),
            }
        }
        // What the sinks cannot store of the output, before any output exists.
        if s.sql.is_none() || plan.is_some() {
            if let Some(out) =
                crate::pipeline::output_schema(schema, &colocation, s.operators, plan.as_ref())
            {
                for (i, sink) in s.sinks.iter().enumerate() {
                    errors.extend(sink.component().check_columns(&out, &format!("sinks[{i}]")));
                }
            }
        }
        errors.extend(rules::two_phase_needs_manual_assignment(
            two_phase,
            s.source,
            &colocation,
        ));
    }
    // A dedup runs before the query: it is the one operator a `sql` pipeline may have.
    let not_dedup = s
        .operators
        .iter()
        .filter(|o| !matches!(o, OperatorConfig::Dedup(_)))
        .count();
    errors.extend(rules::sql_or_operators(s.sql.is_some(), not_dedup));
    errors
}

/// `[dlq.retry]`, taken out of `[dlq]` (whose other keys are its `type`'s) and read under
/// its own key path. The default schedule without it.
fn dlq_retry_section(table: &mut toml::Table, errors: &mut Vec<String>) -> DlqRetryConfig {
    let Some(retry) = table
        .get_mut("dlq")
        .and_then(|d| d.as_table_mut())
        .and_then(|d| d.remove("retry"))
    else {
        return DlqRetryConfig::default();
    };
    if !retry.is_table() {
        errors.push(format!(
            "dlq.retry: expected a table ([dlq.retry]), found a {}",
            retry.type_str()
        ));
        return DlqRetryConfig::default();
    }
    section(retry, "dlq.retry", errors).unwrap_or_default()
}

/// `[upcast]` with its `[[upcast.steps]]`, each reported under its own key path.
fn upcast_section(table: &toml::Table, errors: &mut Vec<String>) -> Option<UpcastConfig> {
    let value = table.get("upcast")?;
    let Some(upcast) = value.as_table() else {
        errors.push(format!(
            "upcast: expected a table ([upcast]), found a {}",
            value.type_str()
        ));
        return None;
    };
    let before = errors.len();
    for key in upcast.keys() {
        if key != "version_field" && key != "steps" {
            errors.push(format!(
                "upcast.{key}: unknown key (expected one of version_field, steps)"
            ));
        }
    }
    let version_field = match upcast.get("version_field") {
        None => {
            errors.push("upcast.version_field: missing".into());
            None
        }
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(format!(
                "upcast.version_field: expected a string, found a {}",
                other.type_str()
            ));
            None
        }
    };
    let steps: Vec<UpcastStepConfig> = match upcast.get("steps") {
        None => {
            errors.push("upcast.steps: missing (add [[upcast.steps]] tables)".into());
            Vec::new()
        }
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| section(v.clone(), &format!("upcast.steps[{i}]"), errors))
            .collect(),
        Some(other) => {
            errors.push(format!(
                "upcast.steps: expected an array of tables ([[upcast.steps]]), found a {}",
                other.type_str()
            ));
            Vec::new()
        }
    };
    (errors.len() == before).then(|| UpcastConfig {
        version_field: version_field.expect("invariant: no error means it was read"),
        steps,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How a section is read: [`section`], or [`tagged_section`] for one tagged by `type`.
type Reader<T> = fn(toml::Value, &str, &mut Vec<String>) -> Option<T>;

fn required<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    read: Reader<T>,
    errors: &mut Vec<String>,
) -> Option<T> {
    match table.get(key) {
        None => {
            errors.push(format!("{key}: missing"));
            None
        }
        Some(v) => read(v.clone(), key, errors),
    }
}

fn optional<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    table.get(key).and_then(|v| section(v.clone(), key, errors))
}

fn list<T: DeserializeOwned>(
    table: &toml::Table,
    key: &str,
    read: Reader<T>,
    errors: &mut Vec<String>,
) -> Vec<T> {
    match table.get(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| read(v.clone(), &format!("{key}[{i}]"), errors))
            .collect(),
        Some(other) => {
            errors.push(format!(
                "{key}: expected an array of tables ([[{key}]]), found a {}",
                other.type_str()
            ));
            Vec::new()
        }
    }
}

/// Where the text of the `sql` value starts in `text`: (line, column), both from 1.
fn sql_origin(text: &str) -> Option<(usize, usize)> {
    #[derive(Deserialize)]
    struct Sql {
        sql: Option<toml::Spanned<String>>,
    }
    let span = toml::from_str::<Sql>(text).ok()?.sql?.span();
    let value = text.get(span.start..)?;
    let mut start = span.start;
    if value.starts_with("\"\"\"") || value.starts_with("'''") {
        // A newline right after the opening delimiter is not part of the string.
        start += 3;
        if text[start..].starts_with("\r\n") {
            start += 2;
        } else if text[start..].starts_with('\n') {
            start += 1;
        }
    } else {
        start += 1;
    }
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let col = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some((line, col))
}

/// "line L, column C: " of byte `pos` in `text`.
fn line_col(text: &str, pos: usize) -> String {
    let before = &text[..pos.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {col}: ")
}
