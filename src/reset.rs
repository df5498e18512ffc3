//! `weir reset pipeline.toml [--to earliest|latest|committed|<RFC 3339 time>] [--yes]`: discard
//! a pipeline's state so that it starts over, e.g. after a change its checkpoints no longer
//! fit (`weir run` refuses those, naming what changed).
//!
//! 1. [`check`] (pure): a `kafka` source needs `--to` (where the consumer group starts over:
//!    `earliest`, `latest`, the first offset at or after a time, or `committed` to keep the
//!    group's offsets); other sources start over at their beginning (`earliest`, the default).
//! 2. The pipeline must not be running: the local checkpoint store's run lock
//!    (`<dir>/<pipeline>/.lock`, held by `weir run`), the PostgreSQL advisory lock (taken
//!    exclusively), or members in the Kafka source's consumer group each make it refuse.
//! 3. Every stored checkpoint of the pipeline (and only of it) is replaced by a reset marker
//!    (`weir_runtime::Checkpoint::reset_marker`) in its store: the local directory, the
//!    PostgreSQL checkpoint rows, or the checkpoint topic of a transactional kafka sink. A
//!    marker holds no state and no offset, only the epoch: the next run starts the partition
//!    like one without a checkpoint, and its epoch-numbered outputs (JSONL and Parquet
//!    sinks, the JSONL DLQ) go on with new file names instead of replacing published files.
//!    Files a crash left staged are settled by the next run's recovery as after any restart:
//!    a marker keeps the generation of the checkpoint it replaces (ARCHITECTURE.md, "Reset").
//! 4. For a `kafka` source, the group's committed offsets are set as `--to` asks.
//!
//! Without `--yes` it prints what it would do and changes nothing. Sink output (tables, files,
//! topics) is never deleted: a reset from `earliest` writes the events' results again (upsert
//! sinks overwrite them; append sinks hold both), which `weir replay` avoids for a PostgreSQL
//! read model.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;

use weir_connectors::kafka::reset::{group_members, stored_checkpoints, write_reset_markers};
use weir_connectors::postgres::ResetCheckpoints;
use weir_connectors::{
    AssignmentMode, KafkaOffsetCommitter, KafkaSinkConfig, KafkaSource, KafkaSourceConfig,
};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::{Checkpoint, CheckpointStore, ErrorClass, LocalCheckpointStore};

use crate::config::{DlqConfig, SinkConfig, SourceConfig, ValidatedPipeline};

/// Where the source starts over after a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// The first offset of every partition (the beginning of a file or generator).
    Earliest,
    /// The end of every partition now: only events written after the reset are read.
    Latest,
    /// Keep the consumer group's committed offsets (kafka sources only).
    Committed,
    /// The first offset whose Kafka timestamp is at or after this time (epoch millis).
    Time(i64),
}

impl std::fmt::Display for ResetTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetTo::Earliest => f.write_str("earliest"),
            ResetTo::Latest => f.write_str("latest"),
            ResetTo::Committed => f.write_str("committed"),
            ResetTo::Time(ms) => write!(f, "the first offset at or after {ms} ms since the epoch"),
        }
    }
}

impl FromStr for ResetTo {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "earliest" => Ok(ResetTo::Earliest),
            "latest" => Ok(ResetTo::Latest),
            "committed" => Ok(ResetTo::Committed),
            _ => crate::replay::parse_rfc3339_ms(s.trim())
                .map(ResetTo::Time)
                .map_err(|why| {
                    format!(
                        "{s:?} is none of earliest, latest, committed or an RFC 3339 time such as 2026-01-31T12:00:00Z: {why}"
                    )
                }),
        }
    }
}

/// Where the source starts over, or why `--to` does not fit the source (pure).
pub fn check(cfg: &ValidatedPipeline, to: Option<ResetTo>) -> std::result::Result<ResetTo, String> {
    match (&cfg.source, to) {
        (SourceConfig::Kafka(_), None) => Err(
            "--to: a kafka source needs it: where should the consumer group start over? \
             earliest, latest, committed (keep the group's offsets: events before them that \
             the discarded state held are not read again) or an RFC 3339 time"
                .into(),
        ),
        (SourceConfig::Kafka(_), Some(to)) => Ok(to),
        (_, None | Some(ResetTo::Earliest)) => Ok(ResetTo::Earliest),
        (_, Some(other)) => Err(format!(
            "--to {other}: a {} source always starts over at its beginning (`earliest`)",
            cfg.source.type_name()
        )),
    }
}

/// The checkpoint store of a pipeline, as the run builds it.
enum Store {
    Local(LocalCheckpointStore),
    Postgres(Box<ResetCheckpoints>),
    Kafka(KafkaSinkConfig),
}

fn store_of(cfg: &ValidatedPipeline) -> Result<Store> {
    for s in &cfg.sinks {
        match s {
            SinkConfig::Postgres(c) => {
                return Ok(Store::Postgres(Box::new(ResetCheckpoints::open(
                    c, &cfg.name,
                )?)))
            }
            SinkConfig::Kafka(k) if k.transactional_id.is_some() => {
                return Ok(Store::Kafka(k.clone()))
            }
            _ => {}
        }
    }
    let dir = cfg.checkpoint.dir.as_ref().ok_or_else(|| {
        WeirError::Config(
            "checkpoint.dir: missing (validation lets no such pipeline through)".into(),
        )
    })?;
    Ok(Store::Local(LocalCheckpointStore::new(dir, &cfg.name)))
}

pub(crate) use weir_connectors::postgres::reset::WrittenCheckpoint;

/// Every stored checkpoint of the pipeline, where it is stored (for the report), and when
/// each was written (a local file's time, a PostgreSQL row's `updated_at`; epoch ms). Takes
/// no lock: it reads while a worker runs too.
pub(crate) fn stored(cfg: &ValidatedPipeline) -> Result<(String, Vec<WrittenCheckpoint>)> {
    for s in &cfg.sinks {
        if let SinkConfig::Postgres(c) = s {
            let (table, stored) =
                weir_connectors::postgres::reset::stored_checkpoints(c, &cfg.name)?;
            return Ok((format!("PostgreSQL table {table}"), stored));
        }
    }
    Ok(match store_of(cfg)? {
        Store::Local(s) => {
            let place = format!("local directory {}", s.pipeline_dir().display());
            let all = s
                .load_all()?
                .into_iter()
                .map(|(path, c)| {
                    let at = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as i64);
                    (c, at)
                })
                .collect();
            (place, all)
        }
        Store::Postgres(_) => {
            return Err(WeirError::Internal(
                "invariant: a pipeline with a postgres sink is read above".into(),
            ))
        }
        Store::Kafka(sink) => (
            format!(
                "Kafka topic {}",
                sink.checkpoint_topic.as_deref().unwrap_or_default()
            ),
            stored_checkpoints(&sink, &cfg.name)?
                .into_iter()
                .map(|s| (s.checkpoint, None))
                .collect(),
        ),
    })
}

/// The lock a `weir run` worker holds on its local checkpoint store while it runs (`None`
/// for a pipeline whose checkpoints live in a sink): a second worker on the same directory
/// and `weir reset` refuse meanwhile.
pub fn local_run_lock(cfg: &ValidatedPipeline) -> Result<Option<std::fs::File>> {
    let Some(store) = local_store(cfg) else {
        return Ok(None);
    };
    match store.try_lock()? {
        Some(file) => Ok(Some(file)),
        None => Err(WeirError::Config(format!(
            "pipeline `{}` is already running: another process holds {}; stop it first",
            cfg.name,
            store.pipeline_dir().join(".lock").display()
        ))),
    }
}

/// The local checkpoint store, when the pipeline's checkpoints are not kept by a sink.
fn local_store(cfg: &ValidatedPipeline) -> Option<LocalCheckpointStore> {
    let sink_stores = cfg.sinks.iter().any(|s| s.component().stores_checkpoints());
    match (&cfg.checkpoint.dir, sink_stores) {
        (Some(dir), false) => Some(LocalCheckpointStore::new(dir, &cfg.name)),
        _ => None,
    }
}

/// One partition's group offset change.
struct OffsetChange {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    to: i64,
}

/// Reset the pipeline of `cfg` (read from `file`): see the module docs. Returns the report
/// (what was done, or with `yes = false` what would be done).
pub fn run(cfg: &ValidatedPipeline, file: &Path, to: ResetTo, yes: bool) -> Result<String> {
    let mut report = String::new();
    let mut warnings = Vec::new();
    let verb = |done: &str, would: &str| {
        if yes {
            done.to_string()
        } else {
            would.to_string()
        }
    };
    // 1. Not while it runs; the lock (local, PostgreSQL) is held until the reset is done.
    let mut store = store_of(cfg)?;
    let _local_lock = match &store {
        Store::Local(s) => Some(s.try_lock()?.ok_or_else(|| {
            WeirError::Config(format!(
                "pipeline `{}` is running: a `weir run` worker holds {}; stop it before resetting it",
                cfg.name,
                s.pipeline_dir().join(".lock").display()
            ))
        })?),
        _ => None,
    };
    if let SourceConfig::Kafka(k) = &cfg.source {
        if k.assignment == AssignmentMode::Group {
            match group_members(k) {
                Ok(members) if !members.is_empty() => {
                    return Err(WeirError::Config(format!(
                        "pipeline `{}` is running: consumer group {:?} has {} member(s) ({}); stop \
                         every worker of the pipeline before resetting it",
                        cfg.name,
                        k.group_id,
                        members.len(),
                        members.join(", ")
                    )))
                }
                Ok(_) => {}
                Err(e) => warnings.push(format!(
                    "could not check that no worker consumes in group {:?} ({e}); make sure none runs",
                    k.group_id
                )),
            }
        }
    }
    // 2. What is stored.
    let (place, stored, kafka_stored) = match &mut store {
        Store::Local(s) => {
            let all = s.load_all()?;
            (
                format!("local directory {}", s.pipeline_dir().display()),
                all.into_iter().map(|(_, c)| c).collect::<Vec<_>>(),
                Vec::new(),
            )
        }
        Store::Postgres(pg) => (
            format!("PostgreSQL table {}", pg.table()),
            pg.stored()?,
            Vec::new(),
        ),
        Store::Kafka(sink) => {
            let found = stored_checkpoints(sink, &cfg.name)?;
            (
                format!(
                    "Kafka topic {}",
                    sink.checkpoint_topic.as_deref().unwrap_or_default()
                ),
                found.iter().map(|s| s.checkpoint.clone()).collect(),
                found,
            )
        }
    };
    let _ = writeln!(
        report,
        "weir reset {}: pipeline `{}`, checkpoints in {place}",
        file.display(),
        cfg.name
    );
    if stored.is_empty() {
        let _ = writeln!(report, "  no checkpoint stored: no state to discard");
    }
    for c in &stored {
        let what = if c.reset {
            "already reset".to_string()
        } else {
            format!("next offset {}", c.next_offset)
        };
        let _ = writeln!(
            report,
            "  {}/{}: epoch {}, {what}: {} its state and offset (epochs go on from {})",
            c.topic,
            c.partition,
            c.epoch,
            verb("discarded", "would discard"),
            c.epoch + 1
        );
    }
    // 3. Where the source starts over.
    let changes = match (&cfg.source, to) {
        (SourceConfig::Kafka(k), ResetTo::Committed) => {
            let _ = writeln!(
                report,
                "  source: consumer group {:?} keeps its committed offsets",
                k.group_id
            );
            Vec::new()
        }
        (SourceConfig::Kafka(k), to) => offset_changes(k, to)?,
        (_, _) => {
            let _ = writeln!(report, "  source: starts over at its beginning");
            Vec::new()
        }
    };
    if let SourceConfig::Kafka(k) = &cfg.source {
        for c in &changes {
            let _ = writeln!(
                report,
                "  group {:?} {}/{}: committed offset {} {} {} ({to})",
                k.group_id,
                c.topic,
                c.partition,
                c.committed.map_or("none".to_string(), |n| n.to_string()),
                verb("set to", "would be set to"),
                c.to
            );
        }
    }
    for (i, s) in cfg.sinks.iter().enumerate() {
        if let Some(note) = s.component().reset_note() {
            let _ = writeln!(report, "  sinks[{i}]: {note}");
        }
    }
    if let DlqConfig::Jsonl(d) = &cfg.dlq {
        let _ = writeln!(
            report,
            "  dlq: the dead letters in {} stay; new ones go on at the next epoch",
            d.path.display()
        );
    }
    for w in &warnings {
        let _ = writeln!(report, "  warning: {w}");
    }
    if !yes {
        let _ = writeln!(
            report,
            "nothing changed: run `weir reset {} --to {to} --yes` to do it",
            file.display()
        );
        return Ok(report);
    }
    // 4. Do it: markers first (a failure before the offsets leaves the group where it was,
    // and a second reset finishes the job).
    match &mut store {
        Store::Local(s) => {
            for c in &stored {
                // Saved as the checkpoint it replaces, under its generation, so the next
                // owner's recovery settles what that generation staged (ARCHITECTURE.md,
                // "Reset"). Refused when the lane was claimed since: that claimer's recovery
                // settled those files already, so the marker is saved under a claim of its own.
                let mut marker =
                    Checkpoint::reset_marker(&cfg.name, &c.topic, c.partition, c.epoch);
                marker.generation = c.generation;
                match s.save(&marker) {
                    Err(e) if e.class() == ErrorClass::Fenced => {
                        marker.generation = s.claim(&c.topic, c.partition)?;
                        s.save(&marker)?;
                    }
                    other => other?,
                }
            }
        }
        Store::Postgres(pg) => {
            pg.replace_with_markers()?;
        }
        Store::Kafka(sink) => write_reset_markers(sink, &kafka_stored)?,
    }
    if let SourceConfig::Kafka(k) = &cfg.source {
        if !changes.is_empty() {
            // The committer never moves an offset back on its own: a reset is the explicit
            // way back.
            let committer = KafkaOffsetCommitter::new(k)?;
            let offsets: Vec<(&str, i32, i64)> = changes
                .iter()
                .map(|c| (c.topic.as_str(), c.partition, c.to))
                .collect();
            committer.reset(&offsets)?;
        }
    }
    let _ = writeln!(
        report,
        "done: the next `weir run {}` starts from empty state",
        file.display()
    );
    Ok(report)
}

/// The group's committed offset and the reset's target of every partition of the source.
fn offset_changes(k: &KafkaSourceConfig, to: ResetTo) -> Result<Vec<OffsetChange>> {
    let mut manual = k.clone();
    // Reading metadata and offsets only: never join the group.
    manual.assignment = AssignmentMode::Manual;
    let mut source = KafkaSource::new(manual)?;
    let from_ms = match to {
        ResetTo::Time(ms) => Some(ms),
        _ => None,
    };
    let ranges = source.ranges(from_ms)?;
    let committer = KafkaOffsetCommitter::new(k)?;
    ranges
        .into_iter()
        .map(|r| {
            Ok(OffsetChange {
                committed: committer.committed(&r.topic, r.partition)?,
                to: match to {
                    ResetTo::Latest => r.end,
                    _ => r.start,
                },
                topic: r.topic.to_string(),
                partition: r.partition,
            })
        })
        .collect()
}
