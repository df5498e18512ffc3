//! The fluent builder for pipelines written as Rust code, and the bridge from
//! [`ValidatedPipeline`] to it. Both end in the runtime's [`Executor`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use weir_operators::{
    build_window, check_two_phase, partial_window, plan_sql, Colocation, FilterOperator,
    GlobalWindow, JsonDecoder, KeyCheckOperator, KeyPlacement, ProjectOperator, SchemaConfig,
    SqlOptions, SqlPlan, TumbleConfig, TwoPhaseShared, UpcastOperator, Upcasters, WindowConfig,
};
use weir_operators::{ConfigUpcastOperator, DedupConfig, DedupOperator, UpcastConfig};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::executor::TaskFactory;
use weir_runtime::{
    CheckpointStore, Decoder, DlqWriter, Executor, ExecutorConfig, LocalCheckpointStore, Operator,
    PartitionTask, Partitioning, RetryBudget, RetrySchedule, RunSummary, Shutdown, SinkWriter,
    Source, WatermarkGuards,
};

use crate::config::ValidatedPipeline;
use crate::registry::{DlqContext, OperatorConfig, SinkContext};

/// Builds a custom operator against its input schema.
pub type OperatorFactory =
    Arc<dyn Fn(SchemaRef) -> Result<Box<dyn Operator>, String> + Send + Sync>;

#[derive(Clone)]
enum OpSpec {
    Filter(String),
    Project(Vec<(String, String)>),
    Dedup(DedupConfig),
    Window(WindowConfig),
    /// The per-partition phase of a window whose groups span partitions.
    PartialWindow(WindowConfig, Arc<TwoPhaseShared>),
    Custom(String, OperatorFactory),
    Upcast(Upcasters),
    /// `[upcast]` of a pipeline file, with the current schema it leads to.
    ConfigUpcast(Box<(UpcastConfig, SchemaConfig)>),
}

/// A pipeline under construction: source → decode → operators → sinks, with a DLQ and a
/// checkpoint directory.
///
/// ```no_run
/// # use weir::prelude::*;
/// # fn main() -> weir_runtime::error::Result<()> {
/// let summary = Pipeline::new("iot")
///     .source(GeneratorSource::new(GeneratorConfig { events: Some(10_000), ..Default::default() })?)
///     .schema(weir::iot_schema())
///     .filter("temperature > -50")
///     .tumble(weir::demo_window(60_000))
///     .sink(NullSink::default())
///     .dlq(JsonlDlq::new(&JsonlDlqConfig { path: "dlq".into() })?)
///     .checkpoint_dir("checkpoints")
///     .run(Shutdown::new())?;
/// # Ok(()) }
/// ```
pub struct Pipeline {
    name: String,
    source: Option<Box<dyn Source>>,
    schema: Option<SchemaConfig>,
    ops: Vec<OpSpec>,
    sinks: Vec<Box<dyn SinkWriter>>,
    dlq: Option<Box<dyn DlqWriter>>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_store: Option<Arc<dyn CheckpointStore>>,
    /// Where partitions without a checkpoint start (`weir replay`); others start at 0.
    start_offsets: Option<Arc<crate::replay::StartOffsets>>,
    exec: ExecutorConfig,
    /// Where the run counts (shared with a metrics endpoint); a fresh set when `None`.
    metrics: Option<Arc<weir_runtime::Metrics>>,
    /// Retries of events operators fail on with a retryable error (`[dlq.retry]`).
    retry: RetrySchedule,
}

impl Pipeline {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            source: None,
            schema: None,
            ops: Vec::new(),
            sinks: Vec::new(),
            dlq: None,
            checkpoint_dir: None,
            checkpoint_store: None,
            start_offsets: None,
            exec: ExecutorConfig::new(name),
            metrics: None,
            retry: RetrySchedule::default(),
        }
    }

    /// How an event that an operator fails on with a retryable error
    /// ([`weir_operators::EventError::Retryable`], or a panic with
    /// [`RetrySchedule::retry_panics`]) is tried again before it goes to the DLQ, its key's
    /// later events waiting behind it (`[dlq.retry]`; default [`RetrySchedule::default`]:
    /// attempt 1 at once, then after 1 s, 5 s, 30 s and 2 min; [`RetrySchedule::none`]: to
    /// the DLQ at once). ARCHITECTURE.md, "Retries before the DLQ".
    pub fn retry_schedule(mut self, schedule: RetrySchedule) -> Self {
        self.retry = schedule;
        self
    }

    /// Count the run into `metrics`, which a metrics endpoint or a status line reads while it
    /// runs.
    pub fn with_metrics(mut self, metrics: Arc<weir_runtime::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn source(self, source: impl Source + 'static) -> Self {
        self.boxed_source(Box::new(source))
    }

    /// Replace the source by `f(source)`, e.g. a wrapper that bounds it (`weir replay`).
    /// Without a source, nothing changes.
    pub fn map_source(mut self, f: impl FnOnce(Box<dyn Source>) -> Box<dyn Source>) -> Self {
        self.source = self.source.take().map(f);
        self
    }

    /// Partitions without a checkpoint start at these offsets instead of the source's own
    /// start (a checkpoint still wins).
    pub fn start_offsets(mut self, offsets: crate::replay::StartOffsets) -> Self {
        self.start_offsets = Some(Arc::new(offsets));
        self
    }

    pub fn schema(mut self, schema: SchemaConfig) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Keep the rows for which a SQL predicate is true.
    pub fn filter(mut self, predicate: &str) -> Self {
        self.ops.push(OpSpec::Filter(predicate.to_string()));
        self
    }

    /// Compute columns: (SQL expression, output name).
    pub fn project(mut self, columns: &[(&str, &str)]) -> Self {
        self.ops.push(OpSpec::Project(
            columns
                .iter()
                .map(|(e, n)| (e.to_string(), n.to_string()))
                .collect(),
        ));
        self
    }

    /// Drop rows whose `keys` were seen within `within_ms` of event time (the idempotent
    /// consumer's inbox; ARCHITECTURE.md, "Dedup"). Place it before windows and projections.
    pub fn dedup(mut self, config: DedupConfig) -> Self {
        self.ops.push(OpSpec::Dedup(config));
        self
    }

    /// Tumbling event-time window aggregation.
    pub fn tumble(mut self, config: TumbleConfig) -> Self {
        self.ops.push(OpSpec::Window(WindowConfig::from(&config)));
        self
    }

    /// Any window aggregation: tumbling, hopping or session.
    pub fn window(mut self, config: WindowConfig) -> Self {
        self.ops.push(OpSpec::Window(config));
        self
    }

    /// A streaming SQL query over the schema's table: `SELECT ... GROUP BY keys,
    /// TUMBLE(...) | HOP(...) | SESSION(...)`. Call after [`Pipeline::schema`]. Errors name the construct
    /// and its position.
    pub fn sql(mut self, query: &str, options: &SqlOptions) -> Result<Self> {
        let schema = self.schema.as_ref().ok_or_else(|| {
            WeirError::Config(format!(
                "pipeline `{}`: set the schema before the SQL query",
                self.name
            ))
        })?;
        // Whether the keys are co-located depends on the source, which may be set later:
        // `build` decides (two phases, or the refusal) with the source's partitioning.
        let options = SqlOptions {
            colocation: Some(Colocation::All),
            ..options.clone()
        };
        let plan = plan_sql(query, &schema.table, schema, &options).map_err(WeirError::Config)?;
        self.ops.extend(sql_specs(&plan));
        Ok(self)
    }

    /// Upcast older event versions to the current shape ([`weir_operators::upcast`]). The
    /// upcasters run right after decode, before every other operator whatever the call
    /// order, so no projection ever sees an old version; a second call replaces the first.
    /// Events with a missing, unknown or too new version go to the DLQ with the reason.
    pub fn upcast(mut self, upcasters: Upcasters) -> Self {
        self.ops
            .retain(|op| !matches!(op, OpSpec::Upcast(_) | OpSpec::ConfigUpcast(_)));
        self.ops.insert(0, OpSpec::Upcast(upcasters));
        self
    }

    /// Any operator, built per partition against its input schema (e.g. a
    /// [`weir_operators::ProjectionOperator`]).
    pub fn operator(
        mut self,
        name: &str,
        factory: impl Fn(SchemaRef) -> Result<Box<dyn Operator>, String> + Send + Sync + 'static,
    ) -> Self {
        self.ops
            .push(OpSpec::Custom(name.to_string(), Arc::new(factory)));
        self
    }

    pub fn sink(self, sink: impl SinkWriter + 'static) -> Self {
        self.boxed_sink(Box::new(sink))
    }

    pub fn dlq(self, dlq: impl DlqWriter + 'static) -> Self {
        self.boxed_dlq(Box::new(dlq))
    }

    /// [`Pipeline::source`] for a source already boxed (as the registry opens them).
    pub fn boxed_source(mut self, source: Box<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// [`Pipeline::sink`] for a sink already boxed.
    pub fn boxed_sink(mut self, sink: Box<dyn SinkWriter>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// [`Pipeline::dlq`] for a DLQ already boxed.
    pub fn boxed_dlq(mut self, dlq: Box<dyn DlqWriter>) -> Self {
        self.dlq = Some(dlq);
        self
    }

    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// Store checkpoints here instead of a local directory (e.g. a `PostgresStore`, so that
    /// rows and offsets commit in one transaction).
    pub fn checkpoint_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpoint_store = Some(store);
        self
    }

    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.exec.checkpoint_interval = interval;
        self
    }

    pub fn batch(mut self, max_rows: usize, linger: Duration) -> Self {
        self.exec.max_rows = max_rows;
        self.exec.linger = linger;
        self
    }

    pub fn cpu_threads(mut self, n: usize) -> Self {
        self.exec.cpu_threads = n;
        self
    }

    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.exec.channel_capacity = n;
        self
    }

    /// A partition with no input for this long is idle: a window whose groups span
    /// partitions stops waiting for it (it follows the other partitions' watermark).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.exec.idle_timeout = timeout;
        self
    }

    /// How long a sink write, prepare or commit or a checkpoint save that fails with a
    /// transient error is retried before the run stops with the error (default
    /// [`RetryBudget::default`]).
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.exec.retry = budget;
        self
    }

    /// `[watermark] idle_advance_ms` and `max_future_ms` for every window of the pipeline so
    /// far (tumble, hop, session; ARCHITECTURE.md, "Windows").
    pub fn watermark_guards(mut self, guards: WatermarkGuards) -> Self {
        for op in &mut self.ops {
            if let OpSpec::Window(w) = op {
                w.guards = guards;
            }
        }
        self
    }

    /// Check the chain and assemble the executor.
    pub fn build(self) -> Result<Executor> {
        Ok(self.assemble()?.0)
    }

    /// [`Pipeline::build`], and the shared record of where each partition key value was
    /// seen when the run checks it.
    fn assemble(self) -> Result<(Executor, Option<Arc<KeyPlacement>>)> {
        let missing =
            |what: &str| WeirError::Config(format!("pipeline `{}` has no {what}", self.name));
        let schema = self.schema.clone().ok_or_else(|| missing("schema"))?;
        let errors = schema.validate("schema");
        if !errors.is_empty() {
            return Err(WeirError::Config(errors.join("; ")));
        }
        if self.sinks.is_empty() {
            return Err(missing("sink"));
        }
        let problems = self.retry.problems("retry_schedule");
        if !problems.is_empty() {
            return Err(WeirError::Config(format!(
                "pipeline `{}`: {}",
                self.name,
                problems.join("; ")
            )));
        }
        let mut source = self
            .source
            .ok_or_else(|| WeirError::Config(format!("pipeline `{}` has no source", self.name)))?;
        let headers = schema.metadata.header_names();
        if !headers.is_empty() {
            source.keep_headers(&headers);
        }
        let dlq = self
            .dlq
            .ok_or_else(|| WeirError::Config(format!("pipeline `{}` has no dlq", self.name)))?;
        let store: Arc<dyn CheckpointStore> = match (self.checkpoint_store, self.checkpoint_dir) {
            (Some(store), _) => store,
            (None, Some(dir)) => Arc::new(LocalCheckpointStore::new(dir, &self.name)),
            (None, None) => {
                return Err(WeirError::Config(format!(
                    "pipeline `{}` has no checkpoint directory or store",
                    self.name
                )))
            }
        };
        let partitioning = source.partitioning();
        let colocation = schema
            .colocation(&partitioning)
            .map_err(|e| WeirError::Config(format!("schema.partition_key: {e}")))?;
        let ops = self.ops;
        build_chain(&schema, &colocation, &ops).map_err(|e| WeirError::Config(e.join("; ")))?;
        // The executor's idle notice drives `idle_advance_ms`: it must come in time.
        let mut exec = self.exec;
        for op in &ops {
            if let OpSpec::Window(w) = op {
                if let Some(ms) = w.guards.idle_advance_ms {
                    let advance = Duration::from_millis(ms.max(1) as u64);
                    exec.idle_timeout = exec.idle_timeout.min(advance);
                }
            }
        }
        let (ops, global) = match two_phase(&colocation, &ops) {
            Some(i) => {
                let (task_ops, global) =
                    split_two_phase(&schema, &colocation, &ops, i, exec.idle_timeout)
                        .map_err(|e| WeirError::Config(e.join("; ")))?;
                (task_ops, Some(global))
            }
            None => (ops, None),
        };
        // A key the source does not route itself (Kafka: the producer chose the message
        // key) is checked at run time against the declaration.
        let placement = match (&schema.partition_key, &partitioning) {
            (Some(key), Partitioning::ByMessageKey | Partitioning::ByMessageKeyPerTopic(_)) => {
                Some(Arc::new(KeyPlacement::new(key, schema.partition_key_check)))
            }
            _ => None,
        };
        let pipeline: Arc<str> = self.name.as_str().into();
        let starts = self.start_offsets;
        let retry = self.retry;
        let check = placement.clone();
        let tasks: TaskFactory = Box::new(move |topic, partition| {
            let decoder = JsonDecoder::new(&schema);
            let mut chain = build_chain(&schema, &colocation, &ops)
                .map_err(|e| WeirError::Config(e.join("; ")))?;
            if let Some(placement) = &check {
                // After the upcasters: the key is a column of the current event version.
                let at = ops
                    .iter()
                    .take_while(|op| matches!(op, OpSpec::Upcast(_) | OpSpec::ConfigUpcast(_)))
                    .count();
                let input = match at {
                    0 => decoder.schema(),
                    n => chain[n - 1].output_schema(),
                };
                let op = KeyCheckOperator::new(placement.clone(), topic.clone(), partition, input)
                    .map_err(|e| WeirError::Config(format!("schema.partition_key: {e}")))?;
                chain.insert(at, Box::new(op));
            }
            let mut task = PartitionTask::new(
                pipeline.clone(),
                topic.clone(),
                partition,
                Box::new(decoder),
                chain,
            )
            .with_retry_schedule(retry.clone());
            // The executor restores a checkpoint over this when there is one.
            if let Some(start) = starts
                .as_ref()
                .and_then(|s| s.get(&(topic.clone(), partition)))
            {
                task.set_next_offset(*start);
            }
            Ok(task)
        });
        let executor = Executor::new(exec, source, tasks, self.sinks, dlq, store);
        let executor = match self.metrics {
            Some(m) => executor.with_metrics(m),
            None => executor,
        };
        let executor = match global {
            Some(g) => executor.with_global(Box::new(g)),
            None => executor,
        };
        Ok((executor, placement))
    }

    /// The task this pipeline runs for one partition: the decoder of its schema and its
    /// operator chain (benchmarks and tests drive it without an executor).
    pub fn partition_task(&self, topic: &Arc<str>, partition: i32) -> Result<PartitionTask> {
        let schema = self
            .schema
            .clone()
            .ok_or_else(|| WeirError::Config(format!("pipeline `{}` has no schema", self.name)))?;
        // One task reads the partition alone: only the schema's declaration says what is
        // co-located.
        let colocation = schema.declared_colocation();
        if two_phase(&colocation, &self.ops).is_some() {
            return Err(WeirError::Config(format!(
                "pipeline `{}`: its window's groups span partitions; one partition task alone \
                 computes only partials",
                self.name
            )));
        }
        let chain = build_chain(&schema, &colocation, &self.ops)
            .map_err(|e| WeirError::Config(e.join("; ")))?;
        Ok(PartitionTask::new(
            self.name.as_str().into(),
            topic.clone(),
            partition,
            Box::new(JsonDecoder::new(&schema)),
            chain,
        )
        .with_retry_schedule(self.retry.clone()))
    }

    /// Build and run until the input ends or `shutdown` is triggered.
    pub fn run(self, shutdown: Shutdown) -> Result<RunSummary> {
        let (executor, placement) = self.assemble()?;
        let mut summary = executor.run(shutdown)?;
        if let Some(p) = placement {
            summary.misplaced_keys = p.misplaced();
            if summary.misplaced_keys > 0 {
                tracing::warn!(
                    "{} value(s) of partition_key `{}` were seen in more than one partition: \
                     results keyed by it are split between partitions",
                    summary.misplaced_keys,
                    p.column()
                );
            }
        }
        Ok(summary)
    }

    /// The decoding and operators of a validated config, without source, sinks or DLQ
    /// (nothing is opened): what [`Pipeline::partition_task`] needs.
    pub fn processing_from_config(cfg: &ValidatedPipeline) -> Result<Self> {
        let mut p = Pipeline::new(&cfg.name).schema(cfg.schema.clone());
        p = cfg
            .operators
            .iter()
            .fold(p, |p, op| op.component().add_to(p));
        if let Some(q) = &cfg.sql {
            p = p.sql(q, &cfg.watermark.sql_options())?;
        }
        p = p.watermark_guards(cfg.watermark.guards());
        if let Some(u) = &cfg.upcast {
            // Decode reads every version; the chain (and the SQL plan above) sees the current one.
            p.schema = Some(u.decoded_schema(&cfg.schema));
            p.ops.insert(
                0,
                OpSpec::ConfigUpcast(Box::new((u.clone(), cfg.schema.clone()))),
            );
        }
        Ok(p)
    }

    /// A pipeline from a validated config: opens the source, sinks and DLQ, each through
    /// the registry ([`crate::registry`]).
    pub fn from_config(cfg: &ValidatedPipeline) -> Result<Self> {
        let source = cfg.source.component().open()?;
        let mut p = Self::processing_from_config(cfg)?;
        p.source = Some(source);
        let outputs = Outputs::open(cfg)?;
        if let Some(store) = outputs.store {
            p = p.checkpoint_store(store);
        }
        p.sinks = outputs.sinks;
        p.dlq = Some(outputs.dlq);
        p = p.retry_schedule(cfg.retry_schedule());
        if let Some(dir) = &cfg.checkpoint.dir {
            p = p.checkpoint_dir(dir);
        }
        p = p
            .checkpoint_interval(Duration::from_millis(cfg.checkpoint.interval_ms))
            .batch(
                cfg.batch.max_rows,
                Duration::from_millis(cfg.batch.linger_ms),
            );
        if let Some(n) = cfg.worker.cpu_threads {
            p = p.cpu_threads(n);
        }
        if let Some(n) = cfg.worker.channel_capacity {
            p = p.channel_capacity(n);
        }
        if let Some(ms) = cfg.worker.idle_timeout_ms {
            p = p.idle_timeout(Duration::from_millis(ms));
        }
        let mut budget = RetryBudget::default();
        if let Some(n) = cfg.worker.retry_max_attempts {
            budget.max_attempts = n;
        }
        if let Some(ms) = cfg.worker.retry_max_elapsed_ms {
            budget.max_elapsed = Duration::from_millis(ms);
        }
        p = p.retry_budget(budget);
        Ok(p)
    }
}

/// The outputs of a validated config, opened through the registry: the sinks, the DLQ and
/// the checkpoint store when a sink is it (else the pipeline's `checkpoint.dir` is).
pub struct Outputs {
    pub sinks: Vec<Box<dyn SinkWriter>>,
    pub dlq: Box<dyn DlqWriter>,
    pub store: Option<Arc<dyn CheckpointStore>>,
}

impl Outputs {
    pub fn open(cfg: &ValidatedPipeline) -> Result<Self> {
        let mut sinks = Vec::new();
        let mut store = None;
        let mut postgres_sink = None;
        for (i, s) in cfg.sinks.iter().enumerate() {
            let opened = s.component().open(&SinkContext {
                name: format!("sinks[{i}]"),
                pipeline: &cfg.name,
                source: Some(&cfg.source),
            })?;
            store = store.or(opened.store);
            postgres_sink = postgres_sink.or(opened.postgres);
            sinks.push(opened.writer);
        }
        let dlq = cfg.dlq.component().open(&DlqContext {
            pipeline: &cfg.name,
            postgres_sink: postgres_sink.as_ref(),
        })?;
        Ok(Self { sinks, dlq, store })
    }
}

/// The index of the first window whose groups span partitions and that can run in two
/// phases (partials per partition task, merged by a global stage), if any. Other windows
/// whose groups span partitions are refused when the chain is built.
fn two_phase(colocation: &Colocation, ops: &[OpSpec]) -> Option<usize> {
    ops.iter().position(|op| {
        matches!(op, OpSpec::Window(w)
            if colocation.spans_partitions(&w.keys) && check_two_phase(w).is_ok())
    })
}

/// Split a chain at its two-phase window `at`: the task chain ends with the window's partial
/// phase; the global stage merges the partials and runs what follows the window.
fn split_two_phase(
    schema: &SchemaConfig,
    colocation: &Colocation,
    ops: &[OpSpec],
    at: usize,
    idle_timeout: Duration,
) -> Result<(Vec<OpSpec>, GlobalWindow), Vec<String>> {
    let OpSpec::Window(w) = &ops[at] else {
        return Err(vec![format!("operators[{at}]: not a window")]);
    };
    let name = format!("operators[{at}]");
    if let Some((j, _)) = ops
        .iter()
        .enumerate()
        .skip(at + 1)
        .find(|(_, op)| !matches!(op, OpSpec::Filter(_) | OpSpec::Project(_)))
    {
        return Err(vec![format!(
            "operators[{j}]: after a window whose groups span partitions only filters and \
             projections can follow (they run on the merged rows)"
        )]);
    }
    let before = build_chain(schema, colocation, &ops[..at])?;
    let input = before.last().map_or_else(
        || JsonDecoder::new(schema).schema(),
        |op| op.output_schema(),
    );
    let shared = Arc::new(TwoPhaseShared::default());
    let mut global = GlobalWindow::new(&name, w, &input, &schema.event_time, shared.clone())
        .map_err(|e| vec![format!("{name}: {e}")])?
        .idle_timeout(idle_timeout);
    global.then(build_ops(
        schema,
        colocation,
        global.window_schema(),
        &ops[at + 1..],
        at + 1,
    )?);
    let mut task_ops = ops[..at].to_vec();
    task_ops.push(OpSpec::PartialWindow(w.clone(), shared));
    Ok((task_ops, global))
}

/// Build the operator chain for one partition; every error is "operators[i]: reason".
fn build_chain(
    schema: &SchemaConfig,
    colocation: &Colocation,
    ops: &[OpSpec],
) -> Result<Vec<Box<dyn Operator>>, Vec<String>> {
    build_ops(
        schema,
        colocation,
        JsonDecoder::new(schema).schema(),
        ops,
        0,
    )
}

/// Build `ops` over `input`, naming them from `operators[first]` on.
fn build_ops(
    schema: &SchemaConfig,
    colocation: &Colocation,
    mut input: SchemaRef,
    ops: &[OpSpec],
    first: usize,
) -> Result<Vec<Box<dyn Operator>>, Vec<String>> {
    let mut chain: Vec<Box<dyn Operator>> = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let name = format!("operators[{}]", first + i);
        let built: Result<Box<dyn Operator>, String> = match op {
            OpSpec::Filter(p) => {
                FilterOperator::new(&name, p, input.clone()).map(|o| Box::new(o) as _)
            }
            OpSpec::Project(cols) => {
                ProjectOperator::new(&name, cols, input.clone()).map(|o| Box::new(o) as _)
            }
            OpSpec::Dedup(d) => DedupOperator::new(&name, d, input.clone(), &schema.event_time)
                .map(|o| Box::new(o) as _),
            OpSpec::Window(w) => colocation
                .check_window_keys(&w.keys, &w.kind)
                .and_then(|_| build_window(&name, w, input.clone(), &schema.event_time)),
            OpSpec::PartialWindow(w, shared) => {
                partial_window(&name, w, input.clone(), &schema.event_time, shared.clone())
            }
            OpSpec::Custom(label, f) => f(input.clone())
                .map_err(|e| format!("{label}: {e}"))
                .and_then(|op| {
                    // A stateful operator of the user's keeps state per key of its own
                    // choosing (a projection): it needs co-located keys.
                    if op.is_stateful() {
                        colocation.check_keyed_state(&format!("`{label}`"))?;
                    }
                    Ok(op)
                }),
            OpSpec::Upcast(u) => {
                UpcastOperator::new(&name, u.clone(), input.clone()).map(|o| Box::new(o) as _)
            }
            OpSpec::ConfigUpcast(u) => ConfigUpcastOperator::new(&name, &u.0, &u.1, input.clone())
                .map(|o| Box::new(o) as _),
        };
        match built {
            Ok(op) => {
                input = op.output_schema();
                chain.push(op);
            }
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                break; // later operators depend on this one's output schema
            }
        }
    }
    if errors.is_empty() {
        Ok(chain)
    } else {
        Err(errors)
    }
}

/// Config-time check of the operator chain (columns, expressions, aggregate functions).
pub(crate) fn check_operators(
    schema: &SchemaConfig,
    colocation: &Colocation,
    ops: &[OperatorConfig],
) -> Vec<String> {
    let specs = specs(ops);
    build_chain(schema, colocation, &specs)
        .err()
        .unwrap_or_default()
}

/// Whether the chain has a window whose groups span partitions (the same rule the builder
/// splits the chain by).
pub(crate) fn runs_in_two_phases(colocation: &Colocation, ops: &[OperatorConfig]) -> bool {
    let specs = specs(ops);
    two_phase(colocation, &specs).is_some()
}

/// The schema of the rows the sinks receive from `ops` (or the planned query), after the
/// global stage when the chain runs in two phases; `None` when the chain does not build
/// (its errors are reported by [`check_operators`] or the planner).
pub(crate) fn output_schema(
    schema: &SchemaConfig,
    colocation: &Colocation,
    ops: &[OperatorConfig],
    plan: Option<&SqlPlan>,
) -> Option<SchemaRef> {
    // With a query, `ops` are the dedups that run before it.
    let mut specs: Vec<OpSpec> = specs(ops);
    if let Some(p) = plan {
        specs.extend(sql_specs(p));
    }
    let (rest, input, first) = match two_phase(colocation, &specs) {
        Some(at) => {
            let (_, global) =
                split_two_phase(schema, colocation, &specs, at, Duration::from_secs(1)).ok()?;
            (&specs[at + 1..], global.window_schema(), at + 1)
        }
        None => (&specs[..], JsonDecoder::new(schema).schema(), 0),
    };
    let chain = build_ops(schema, colocation, input.clone(), rest, first).ok()?;
    Some(chain.last().map_or(input, |op| op.output_schema()))
}

/// The operators of a planned query.
fn sql_specs(plan: &SqlPlan) -> Vec<OpSpec> {
    let mut specs = Vec::new();
    if let Some(f) = &plan.filter {
        specs.push(OpSpec::Filter(f.clone()));
    }
    if let Some(columns) = plan.key_projection() {
        specs.push(OpSpec::Project(columns));
    }
    specs.push(OpSpec::Window(plan.window.clone()));
    if let Some(h) = &plan.having {
        specs.push(OpSpec::Filter(h.clone()));
    }
    specs.push(OpSpec::Project(plan.output.clone()));
    specs
}

/// What the builder makes of `ops` (through each operator's registry entry).
fn specs(ops: &[OperatorConfig]) -> Vec<OpSpec> {
    ops.iter()
        .fold(Pipeline::new("check"), |p, op| op.component().add_to(p))
        .ops
}
