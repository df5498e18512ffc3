//! The registry: every component `type` a pipeline can name, mapped to its config and its
//! constructor in exactly one place per kind (source, operator, sink, DLQ).
//!
//! Each kind is one enum declared through [`registry!`]: a variant per `type`, whose name is
//! written once, as the literal that serde reads from the section's `type` key and that
//! [`SinkConfig::type_name`] and friends return. Everything the rest of weir needs from a
//! component (its value checks, the paths it writes, whether it stores checkpoints, how to
//! open it, the `weir sql` shorthand for it) is a method of the kind's trait, implemented
//! once per config type below. So a `pipeline.toml` section (`weir run`, `weir replay`,
//! `weir reset`) and a `--source`/`--sink` spec of `weir sql` are read by the same serde
//! code, checked by the same `validate` and opened by the same `open`. ARCHITECTURE.md
//! ("Adding a component") lists what a new component touches.

use std::path::Path;
use std::sync::Arc;

use weir_connectors::{
    CheckpointRole, GeneratorConfig, GeneratorSource, JsonlDlq, JsonlDlqConfig, JsonlFileSource,
    JsonlSink, JsonlSinkConfig, JsonlSourceConfig, KafkaDlq, KafkaDlqConfig, KafkaSink,
    KafkaSinkConfig, KafkaSource, KafkaSourceConfig, KafkaTxnOptions, KafkaTxnStore, ParquetSink,
    ParquetSinkConfig, PostgresDlq, PostgresDlqConfig, PostgresSinkConfig, PostgresStore,
    SqliteSink, SqliteSinkConfig, TerminalSink, TerminalSinkConfig,
};
use weir_operators::{
    DedupConfig, HopConfig, LatePolicy, SessionConfig, TumbleConfig, WindowConfig,
};
use weir_runtime::arrow::datatypes::Schema;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{CheckpointStore, DlqWriter, NullSink, Partitioning, SinkWriter, Source};

use crate::config::{FilterConfig, NullSinkConfig, ProjectConfig};
use crate::pipeline::Pipeline;
use crate::toml_de::tagged_section;

/// Declares one component kind: the enum of its configs, tagged by `type`, with the one
/// `match` that maps each variant to its config as the kind's trait.
macro_rules! registry {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $kind:ident {
            $( $(#[$vmeta:meta])* $tag:literal => $variant:ident($config:ty), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize, PartialEq, schemars::JsonSchema)]
        // Read as an externally tagged enum, the section's `type` naming the variant
        // (`crate::toml_de::tagged_section`), so its fields' errors keep their key paths.
        #[serde(deny_unknown_fields)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($config), )+
        }

        impl $name {
            /// Every `type` of this kind, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($tag),+];

            /// The `type` this section was read from.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $tag, )+
                }
            }

            /// The component, as its kind's trait.
            pub fn component(&self) -> &dyn $kind {
                match self {
                    $( Self::$variant(c) => c, )+
                }
            }

            /// The config keys that the argument of the `weir sql` spec `TYPE:ARG` stands
            /// for, or `None` when `ty` is not a type of this kind.
            // Unused for the kinds never given as specs (operators, DLQs).
            #[allow(dead_code)]
            fn shorthand_table(
                ty: &str,
                arg: &str,
                ctx: &Shorthand,
            ) -> Option<std::result::Result<toml::Table, String>> {
                $( if ty == $tag {
                    return Some(match <$config as CliSpec>::USAGE {
                        Some(_) => <$config as CliSpec>::shorthand(arg, ctx),
                        None => Err(format!(
                            "`{ty}` cannot be given on the command line: write it in a \
                             pipeline.toml and run that with `weir run`"
                        )),
                    });
                } )+
                None
            }

            /// How each type is written as a `weir sql` spec, for the error naming them.
            #[allow(dead_code)]
            fn shorthand_usage() -> String {
                let forms: Vec<String> = [$( (<$config as CliSpec>::USAGE, $tag) ),+]
                    .into_iter()
                    .filter_map(|(usage, tag)| usage.map(|u| format!("{tag}{u}")))
                    .collect();
                one_of(&forms)
            }
        }
    };
}

registry! {
    /// `[source]`, tagged by `type`.
    pub enum SourceConfig: SourceKind {
        "generator" => Generator(GeneratorConfig),
        "jsonl" => Jsonl(JsonlSourceConfig),
        "kafka" => Kafka(KafkaSourceConfig),
    }
}

registry! {
    /// One entry of `[[operators]]`, tagged by `type`.
    pub enum OperatorConfig: OperatorKind {
        /// Keep rows for which a SQL predicate is true.
        "filter" => Filter(FilterConfig),
        /// Compute new columns from SQL expressions.
        "project" => Project(ProjectConfig),
        /// Tumbling event-time window aggregation.
        "tumble" => Tumble(TumbleConfig),
        /// Hopping (sliding) event-time window aggregation: `slide_ms`, `size_ms`.
        "hop" => Hop(HopConfig),
        /// Session window aggregation per key: `gap_ms`.
        "session" => Session(SessionConfig),
        /// Drop rows whose `keys` were seen within `within_ms` of event time.
        "dedup" => Dedup(DedupConfig),
    }
}

registry! {
    /// One entry of `[[sinks]]`, tagged by `type`.
    pub enum SinkConfig: SinkKind {
        "sqlite" => Sqlite(SqliteSinkConfig),
        "jsonl" => Jsonl(JsonlSinkConfig),
        /// Parquet files per partition and checkpoint epoch, published on commit (exactly-once).
        "parquet" => Parquet(ParquetSinkConfig),
        "terminal" => Terminal(TerminalSinkConfig),
        "kafka" => Kafka(KafkaSinkConfig),
        /// Upserts in PostgreSQL; also the pipeline's checkpoint store (exactly-once).
        "postgres" => Postgres(PostgresSinkConfig),
        "null" => Null(NullSinkConfig),
    }
}

registry! {
    /// `[dlq]`, tagged by `type`.
    pub enum DlqConfig: DlqKind {
        "jsonl" => Jsonl(JsonlDlqConfig),
        "kafka" => Kafka(KafkaDlqConfig),
        /// A table; in the transactions of a `postgres` sink on the same database.
        "postgres" => Postgres(PostgresDlqConfig),
    }
}

/// What a path a component writes must be (checked before anything is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A directory, created when absent.
    Dir,
    /// A file, created when absent.
    File,
}

/// What a `weir sql` spec's argument may need beyond itself.
#[derive(Debug, Clone, Default)]
pub struct Shorthand {
    /// The consumer group of a Kafka source (one per state directory).
    pub group_id: String,
    /// The columns a keyed sink upserts by: the query's group keys (and `window_start`).
    pub key_columns: Vec<String>,
}

/// How a component is written as a `weir sql` spec, `TYPE[:ARG]` (`--source`, `--sink`).
pub trait CliSpec {
    /// The form of ARG (appended to the type in usage), or `None` when the type cannot be
    /// given on the command line.
    const USAGE: Option<&'static str> = None;
    /// The config keys that ARG stands for.
    fn shorthand(_arg: &str, _ctx: &Shorthand) -> std::result::Result<toml::Table, String> {
        Err("not available as a spec".into())
    }
}

// Operators and DLQs are never given as specs (`weir sql` keeps dead letters in its state
// directory); the sinks that store checkpoints need a pipeline.toml.
impl CliSpec for FilterConfig {}
impl CliSpec for DedupConfig {}
impl CliSpec for ProjectConfig {}
impl CliSpec for TumbleConfig {}
impl CliSpec for HopConfig {}
impl CliSpec for SessionConfig {}
impl CliSpec for JsonlDlqConfig {}
impl CliSpec for KafkaDlqConfig {}
impl CliSpec for PostgresDlqConfig {}

/// A source type.
pub trait SourceKind {
    /// Value checks; `at` is the section's key (`source`).
    fn validate(&self, at: &str) -> Vec<String>;
    /// How the source spreads messages over partitions (what co-locates keys).
    fn partitioning(&self) -> Partitioning;
    fn open(&self) -> Result<Box<dyn Source>>;
}

impl SourceKind for GeneratorConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        GeneratorConfig::validate(self, at)
    }
    fn partitioning(&self) -> Partitioning {
        GeneratorConfig::partitioning(self)
    }
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(GeneratorSource::new(self.clone())?))
    }
}

impl CliSpec for GeneratorConfig {
    const USAGE: Option<&'static str> = Some("[:k=v,...]");
    fn shorthand(arg: &str, _: &Shorthand) -> std::result::Result<toml::Table, String> {
        key_values(arg)
    }
}

impl SourceKind for JsonlSourceConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        JsonlSourceConfig::validate(self, at)
    }
    fn partitioning(&self) -> Partitioning {
        JsonlSourceConfig::partitioning(self)
    }
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(JsonlFileSource::new(self.clone())?))
    }
}

impl CliSpec for JsonlSourceConfig {
    const USAGE: Option<&'static str> = Some(":PATH");
    fn shorthand(arg: &str, _: &Shorthand) -> std::result::Result<toml::Table, String> {
        path_or_key_values(arg)
    }
}

impl SourceKind for KafkaSourceConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        KafkaSourceConfig::validate(self, at)
    }
    fn partitioning(&self) -> Partitioning {
        KafkaSourceConfig::partitioning(self)
    }
    fn open(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(KafkaSource::new(self.clone())?))
    }
}

impl CliSpec for KafkaSourceConfig {
    const USAGE: Option<&'static str> = Some(":BROKERS/TOPIC");
    fn shorthand(arg: &str, ctx: &Shorthand) -> std::result::Result<toml::Table, String> {
        let (brokers, topic) = arg
            .rsplit_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty())
            .ok_or("kafka needs kafka:BROKERS/TOPIC")?;
        let mut t = toml::Table::new();
        t.insert("brokers".into(), brokers.into());
        t.insert("topics".into(), toml::Value::Array(vec![topic.into()]));
        t.insert("group_id".into(), ctx.group_id.clone().into());
        Ok(t)
    }
}

/// An operator type.
pub trait OperatorKind {
    /// Value checks; `at` is the entry's key (`operators[2]`).
    fn validate(&self, _at: &str) -> Vec<String> {
        Vec::new()
    }
    /// The pipeline with this operator appended.
    fn add_to(&self, p: Pipeline) -> Pipeline;
    /// The event-time settings of a window: (max_out_of_orderness_ms, allowed_lateness_ms,
    /// late_policy).
    fn watermark(&self) -> Option<(i64, i64, LatePolicy)> {
        None
    }
}

impl OperatorKind for FilterConfig {
    fn add_to(&self, p: Pipeline) -> Pipeline {
        p.filter(&self.predicate)
    }
}

impl OperatorKind for DedupConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        DedupConfig::validate(self, at)
    }
    fn add_to(&self, p: Pipeline) -> Pipeline {
        p.dedup(self.clone())
    }
}

impl OperatorKind for ProjectConfig {
    fn add_to(&self, p: Pipeline) -> Pipeline {
        let columns: Vec<(&str, &str)> = self
            .columns
            .iter()
            .map(|c| (c.expr.as_str(), c.name.as_str()))
            .collect();
        p.project(&columns)
    }
}

/// The window operators: the same entry but for their config type.
macro_rules! window_operator {
    ($($config:ty),+) => {
        $(
            impl OperatorKind for $config {
                fn validate(&self, at: &str) -> Vec<String> {
                    <$config>::validate(self, at)
                }
                fn add_to(&self, p: Pipeline) -> Pipeline {
                    p.window(WindowConfig::from(self))
                }
                fn watermark(&self) -> Option<(i64, i64, LatePolicy)> {
                    Some((
                        self.max_out_of_orderness_ms,
                        self.allowed_lateness_ms,
                        self.late_policy,
                    ))
                }
            }
        )+
    };
}

window_operator!(TumbleConfig, HopConfig, SessionConfig);

/// What opening a sink needs from the rest of the pipeline.
pub struct SinkContext<'a> {
    /// The sink's key (`sinks[1]`), its name in logs, errors and the accounting.
    pub name: String,
    /// The pipeline's name (the checkpoint namespace of a sink that stores checkpoints).
    pub pipeline: &'a str,
    /// The pipeline's source (`None` for `weir sql`, whose sinks never need it).
    pub source: Option<&'a SourceConfig>,
}

/// An opened sink, and the checkpoint store it is when it stores the pipeline's checkpoints.
pub struct OpenedSink {
    pub writer: Box<dyn SinkWriter>,
    pub store: Option<Arc<dyn CheckpointStore>>,
    /// The sink as a PostgreSQL store (a `postgres` DLQ on the same database writes in its
    /// transactions).
    pub postgres: Option<PostgresStore>,
}

impl OpenedSink {
    fn writer(writer: impl SinkWriter + 'static) -> Self {
        Self {
            writer: Box::new(writer),
            store: None,
            postgres: None,
        }
    }
}

/// A sink type.
pub trait SinkKind {
    /// Value checks; `at` is the entry's key (`sinks[0]`).
    fn validate(&self, at: &str) -> Vec<String>;
    /// What the sink cannot store of the pipeline's output schema.
    fn check_columns(&self, _out: &Schema, _at: &str) -> Vec<String> {
        Vec::new()
    }
    /// Whether the sink is the pipeline's checkpoint store (its output and the source's
    /// offsets commit together). A pipeline has at most one such sink.
    fn stores_checkpoints(&self) -> bool {
        false
    }
    /// The paths it writes: (key under the entry, path, what it must be).
    fn paths(&self) -> Vec<(&'static str, &Path, PathKind)> {
        Vec::new()
    }
    /// What `weir reset` means for the output already written, when it has something to say.
    fn reset_note(&self) -> Option<String> {
        None
    }
    fn open(&self, ctx: &SinkContext) -> Result<OpenedSink>;
}

/// Errors opening a file sink name its key (and the path, which the error has).
fn at_path(name: &str) -> impl Fn(WeirError) -> WeirError + '_ {
    move |e| WeirError::Config(format!("{name}.path: {e}"))
}

impl SinkKind for SqliteSinkConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        SqliteSinkConfig::validate(self, at)
    }
    fn check_columns(&self, out: &Schema, at: &str) -> Vec<String> {
        SqliteSinkConfig::check_columns(self, out, at)
    }
    fn paths(&self) -> Vec<(&'static str, &Path, PathKind)> {
        vec![("path", &self.path, PathKind::File)]
    }
    fn reset_note(&self) -> Option<String> {
        Some(format!(
            "the rows in {} stay; results written again replace those of the same key",
            self.path.display()
        ))
    }
    fn open(&self, ctx: &SinkContext) -> Result<OpenedSink> {
        let sink = SqliteSink::new(ctx.name.clone(), self).map_err(at_path(&ctx.name))?;
        Ok(OpenedSink::writer(sink))
    }
}

impl CliSpec for SqliteSinkConfig {
    const USAGE: Option<&'static str> = Some(":PATH");
    fn shorthand(arg: &str, ctx: &Shorthand) -> std::result::Result<toml::Table, String> {
        let mut t = path_or_key_values(arg)?;
        t.entry("table").or_insert_with(|| "results".into());
        t.entry("key_columns").or_insert_with(|| {
            toml::Value::Array(ctx.key_columns.iter().map(|k| k.as_str().into()).collect())
        });
        Ok(t)
    }
}

/// The sinks that publish epoch files into a directory (JSONL, Parquet): the same entry but
/// for their config and writer types.
macro_rules! epoch_file_sink {
    ($config:ty, $sink:ty) => {
        impl SinkKind for $config {
            fn validate(&self, at: &str) -> Vec<String> {
                <$config>::validate(self, at)
            }
            fn paths(&self) -> Vec<(&'static str, &Path, PathKind)> {
                vec![("path", &self.path, PathKind::Dir)]
            }
            fn reset_note(&self) -> Option<String> {
                Some(format!(
                    "the files published in {} stay; output after the reset goes on at the \
                     next epoch",
                    self.path.display()
                ))
            }
            fn open(&self, ctx: &SinkContext) -> Result<OpenedSink> {
                let sink = <$sink>::new(ctx.name.clone(), self).map_err(at_path(&ctx.name))?;
                Ok(OpenedSink::writer(sink))
            }
        }

        impl CliSpec for $config {
            const USAGE: Option<&'static str> = Some(":DIR");
            fn shorthand(arg: &str, _: &Shorthand) -> std::result::Result<toml::Table, String> {
                path_or_key_values(arg)
            }
        }
    };
}

epoch_file_sink!(JsonlSinkConfig, JsonlSink);
epoch_file_sink!(ParquetSinkConfig, ParquetSink);

impl SinkKind for TerminalSinkConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        TerminalSinkConfig::validate(self, at)
    }
    fn open(&self, ctx: &SinkContext) -> Result<OpenedSink> {
        Ok(OpenedSink::writer(TerminalSink::new(
            ctx.name.clone(),
            self,
        )))
    }
}

impl CliSpec for TerminalSinkConfig {
    const USAGE: Option<&'static str> = Some("");
    fn shorthand(arg: &str, _: &Shorthand) -> std::result::Result<toml::Table, String> {
        let mut t = key_values(arg)?;
        t.entry("max_rows").or_insert(toml::Value::Integer(20));
        Ok(t)
    }
}

impl SinkKind for KafkaSinkConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        KafkaSinkConfig::validate(self, at)
    }
    fn stores_checkpoints(&self) -> bool {
        self.transactional_id.is_some()
    }
    fn reset_note(&self) -> Option<String> {
        Some(format!(
            "the messages in topic {} stay; results written again are appended",
            self.topic
        ))
    }
    fn open(&self, ctx: &SinkContext) -> Result<OpenedSink> {
        if self.transactional_id.is_none() {
            return Ok(OpenedSink::writer(KafkaSink::new(ctx.name.clone(), self)?));
        }
        let Some(SourceConfig::Kafka(source)) = ctx.source else {
            return Err(WeirError::Config(format!(
                "{}.transactional_id: needs a kafka source",
                ctx.name
            )));
        };
        let store = KafkaTxnStore::connect(
            ctx.name.clone(),
            self,
            KafkaTxnOptions {
                group_id: source.group_id.clone(),
                pipeline: ctx.pipeline.to_string(),
            },
        )?;
        Ok(OpenedSink {
            store: Some(store.checkpoint_store()),
            writer: Box::new(store),
            postgres: None,
        })
    }
}

impl CliSpec for KafkaSinkConfig {}

impl SinkKind for PostgresSinkConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        PostgresSinkConfig::validate(self, at)
    }
    fn check_columns(&self, out: &Schema, at: &str) -> Vec<String> {
        PostgresSinkConfig::check_columns(self, out, at)
    }
    fn stores_checkpoints(&self) -> bool {
        true
    }
    fn reset_note(&self) -> Option<String> {
        Some(
            "the table's rows stay; results written again replace those of the same key \
             (`weir replay` rebuilds it in a fresh table instead)"
                .into(),
        )
    }
    fn open(&self, ctx: &SinkContext) -> Result<OpenedSink> {
        // The builder's choice: this sink stores the checkpoints (the rules allow at most one
        // storing sink).
        let store =
            PostgresStore::connect_as(ctx.name.clone(), self, ctx.pipeline, CheckpointRole::Store)?;
        Ok(OpenedSink {
            store: Some(store.checkpoint_store()?),
            postgres: Some(store.clone()),
            writer: Box::new(store),
        })
    }
}

impl CliSpec for PostgresSinkConfig {}

impl SinkKind for NullSinkConfig {
    fn validate(&self, _at: &str) -> Vec<String> {
        Vec::new()
    }
    fn open(&self, _: &SinkContext) -> Result<OpenedSink> {
        Ok(OpenedSink::writer(NullSink::default()))
    }
}

impl CliSpec for NullSinkConfig {
    const USAGE: Option<&'static str> = Some("");
    fn shorthand(arg: &str, _: &Shorthand) -> std::result::Result<toml::Table, String> {
        key_values(arg)
    }
}

/// What opening a DLQ needs from the rest of the pipeline.
#[derive(Default)]
pub struct DlqContext<'a> {
    /// The pipeline's name (named in what the DLQ writes besides the letters).
    pub pipeline: &'a str,
    /// The pipeline's `postgres` sink, when it has one (opened already).
    pub postgres_sink: Option<&'a PostgresStore>,
}

/// A DLQ type.
pub trait DlqKind {
    /// Value checks; `at` is the section's key (`dlq`).
    fn validate(&self, at: &str) -> Vec<String>;
    /// The paths it writes: (key under the section, path, what it must be).
    fn paths(&self) -> Vec<(&'static str, &Path, PathKind)> {
        Vec::new()
    }
    fn open(&self, ctx: &DlqContext) -> Result<Box<dyn DlqWriter>>;
}

impl DlqKind for JsonlDlqConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        JsonlDlqConfig::validate(self, at)
    }
    fn paths(&self) -> Vec<(&'static str, &Path, PathKind)> {
        vec![("path", &self.path, PathKind::Dir)]
    }
    fn open(&self, _: &DlqContext) -> Result<Box<dyn DlqWriter>> {
        let dlq = JsonlDlq::new(self).map_err(|e| WeirError::Config(format!("dlq.path: {e}")))?;
        Ok(Box::new(dlq))
    }
}

impl DlqKind for KafkaDlqConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        KafkaDlqConfig::validate(self, at)
    }
    fn open(&self, ctx: &DlqContext) -> Result<Box<dyn DlqWriter>> {
        Ok(Box::new(KafkaDlq::for_pipeline(self, ctx.pipeline)?))
    }
}

impl DlqKind for PostgresDlqConfig {
    fn validate(&self, at: &str) -> Vec<String> {
        PostgresDlqConfig::validate(self, at)
    }
    fn open(&self, ctx: &DlqContext) -> Result<Box<dyn DlqWriter>> {
        Ok(Box::new(PostgresDlq::connect(
            self,
            ctx.pipeline,
            ctx.postgres_sink,
        )?))
    }
}

impl SourceConfig {
    /// The source of `weir sql --source TYPE[:ARG]`, read and checked as a `[source]`
    /// section with the same `type` would be.
    pub fn from_spec(spec: &str, ctx: &Shorthand) -> Result<Self> {
        from_spec(
            spec,
            "--source",
            "source",
            ctx,
            Self::shorthand_table,
            Self::shorthand_usage,
        )
        .and_then(|s: Self| {
            let errors = s.component().validate("");
            checked("--source", s, errors)
        })
    }
}

impl SinkConfig {
    /// The sink of `weir sql --sink TYPE[:ARG]`, read and checked as a `[[sinks]]` entry with
    /// the same `type` would be.
    pub fn from_spec(spec: &str, ctx: &Shorthand) -> Result<Self> {
        from_spec(
            spec,
            "--sink",
            "sink",
            ctx,
            Self::shorthand_table,
            Self::shorthand_usage,
        )
        .and_then(|s: Self| {
            let errors = s.component().validate("");
            checked("--sink", s, errors)
        })
    }
}

/// `value` when its checks found nothing, else the errors under `flag`.
fn checked<T>(flag: &str, value: T, errors: Vec<String>) -> Result<T> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(bad_spec(flag, errors.join("; ")))
    }
}

fn bad_spec(flag: &str, msg: impl std::fmt::Display) -> WeirError {
    WeirError::Config(format!("{flag}: {msg}"))
}

type ShorthandTable =
    fn(&str, &str, &Shorthand) -> Option<std::result::Result<toml::Table, String>>;

/// `TYPE[:ARG]` → the section `{ type = TYPE, <keys ARG stands for> }`, read like a file's.
fn from_spec<T: serde::de::DeserializeOwned>(
    spec: &str,
    flag: &str,
    noun: &str,
    ctx: &Shorthand,
    table: ShorthandTable,
    usage: impl Fn() -> String,
) -> Result<T> {
    let (ty, arg) = spec.split_once(':').unwrap_or((spec, ""));
    let mut section = match table(ty, arg, ctx) {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Err(bad_spec(flag, e)),
        None => {
            return Err(bad_spec(
                flag,
                format!("unknown {noun} `{ty}` (expected {})", usage()),
            ))
        }
    };
    section.insert("type".into(), ty.into());
    let mut errors = Vec::new();
    match tagged_section(toml::Value::Table(section), "", &mut errors) {
        Some(v) if errors.is_empty() => Ok(v),
        _ => Err(bad_spec(&format!("{flag} {ty}"), errors.join("; "))),
    }
}

/// `k=v,k=v` (values read as integers, floats, booleans or strings); empty for no argument.
fn key_values(arg: &str) -> std::result::Result<toml::Table, String> {
    let mut table = toml::Table::new();
    for kv in arg.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` is not key=value"))?;
        let value = v
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| v.parse::<f64>().map(toml::Value::Float))
            .or_else(|_| v.parse::<bool>().map(toml::Value::Boolean))
            .unwrap_or_else(|_| toml::Value::String(v.to_string()));
        table.insert(k.to_string(), value);
    }
    Ok(table)
}

/// A bare argument is the `path`; `k=v,...` sets keys (a path never needs `=` here).
fn path_or_key_values(arg: &str) -> std::result::Result<toml::Table, String> {
    if arg.contains('=') {
        return key_values(arg);
    }
    let mut t = toml::Table::new();
    if !arg.is_empty() {
        t.insert("path".into(), arg.into());
    }
    Ok(t)
}

/// "a, b or c".
fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Shorthand {
        Shorthand {
            group_id: "g".into(),
            key_columns: vec!["sensor_id".into(), "window_start".into()],
        }
    }

    #[test]
    fn a_type_name_is_the_tag_serde_reads() {
        for ty in SinkConfig::TYPES {
            let mut section = toml::Table::new();
            section.insert("type".into(), (*ty).into());
            let mut errors = Vec::new();
            // Reading may fail on the type's required keys, but never on the type itself.
            let read: Option<SinkConfig> =
                tagged_section(toml::Value::Table(section), "sinks[0]", &mut errors);
            assert!(
                errors.iter().all(|e| !e.contains("unknown variant")),
                "{ty}: {errors:?}"
            );
            if let Some(s) = read {
                assert_eq!(s.type_name(), *ty);
            }
        }
        assert_eq!(
            SourceConfig::TYPES,
            &["generator", "jsonl", "kafka"],
            "the source types"
        );
    }

    #[test]
    fn sql_specs_read_through_the_same_configs_as_a_file() {
        let s = SinkConfig::from_spec("sqlite:/tmp/out.db", &ctx()).unwrap();
        let SinkConfig::Sqlite(c) = &s else {
            panic!("{s:?}")
        };
        assert_eq!(c.path, Path::new("/tmp/out.db"));
        assert_eq!(c.table, "results");
        assert_eq!(c.key_columns, ["sensor_id", "window_start"]);
        let SinkConfig::Parquet(p) = SinkConfig::from_spec("parquet:out-dir", &ctx()).unwrap()
        else {
            panic!("not parquet")
        };
        assert_eq!(p.path, Path::new("out-dir"));
        assert!(matches!(
            SinkConfig::from_spec("terminal", &ctx()).unwrap(),
            SinkConfig::Terminal(TerminalSinkConfig { max_rows: 20 })
        ));
        let SourceConfig::Kafka(k) =
            SourceConfig::from_spec("kafka:127.0.0.1:9092/trades", &ctx()).unwrap()
        else {
            panic!("not kafka")
        };
        assert_eq!(
            (k.brokers.as_str(), k.topics.as_slice(), k.group_id.as_str()),
            ("127.0.0.1:9092", &["trades".to_string()][..], "g")
        );
        let SourceConfig::Generator(g) =
            SourceConfig::from_spec("generator:events=500,sensors=3", &ctx()).unwrap()
        else {
            panic!("not generator")
        };
        assert_eq!((g.events, g.sensors), (Some(500), 3));
    }

    #[test]
    fn a_bad_spec_names_the_flag_and_what_is_expected() {
        let e = SourceConfig::from_spec("carrier-pigeon:x", &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--source: unknown source `carrier-pigeon` (expected generator[:k=v,...], jsonl:PATH or kafka:BROKERS/TOPIC)"),
            "{e}"
        );
        let e = SinkConfig::from_spec("carrier-pigeon", &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown sink `carrier-pigeon` (expected sqlite:PATH, jsonl:DIR, parquet:DIR, terminal or null)"),
            "{e}"
        );
        let e = SinkConfig::from_spec("postgres", &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--sink: `postgres` cannot be given on the command line"),
            "{e}"
        );
        let e = SourceConfig::from_spec("generator:events=-5", &ctx())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--source generator: events: invalid value"),
            "{e}"
        );
        let e = SinkConfig::from_spec("jsonl", &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sink jsonl") && e.contains("path"), "{e}");
        let e = SourceConfig::from_spec("kafka:nobroker", &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("kafka needs kafka:BROKERS/TOPIC"), "{e}");
    }
}
