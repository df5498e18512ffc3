//! `weir dlq list|show|replay pipeline.toml`: the dead letters of a pipeline, read from its
//! `[dlq]` (JSONL files, a Kafka topic or a PostgreSQL table), and fed back through it.
//!
//! - `list [--kind K] [--since T] [--limit N] [--all]`: a table of the pending dead letters
//!   (id, last failure time, kind, stage, source position, message), oldest first; `--all`
//!   includes the replayed ones.
//! - `show ID`: every field of one, the key and payload as text when they are UTF-8, else in
//!   hex.
//! - `replay [--kind K] [--id ID...] [--dry-run]`: see [`replay`].
//!
//! Only the letters of this pipeline (`name`) are read: a DLQ topic or table may be shared.
//! Like `weir status` and `weir reset`, the commands open the file's components through the
//! registry without running the pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use weir_connectors::kafka::read_dlq_topic;
use weir_connectors::kafka::reset::group_members;
use weir_connectors::postgres::dlq::read_dead_letters;
use weir_connectors::postgres::{LockMode, PipelineLock};
use weir_connectors::{read_dlq_entries, AssignmentMode, DeadLetterRecord};
use weir_runtime::arrow::array::{Array, BooleanArray, Int64Array};
use weir_runtime::arrow::compute::filter_record_batch;
use weir_runtime::arrow::record_batch::RecordBatch;
use weir_runtime::dlq::is_dead_letter_id;
use weir_runtime::error::{Result, WeirError};
use weir_runtime::executor::sink_rejects;
use weir_runtime::{
    Checkpoint, CheckpointStore, DeadLetter, ErrorKind, Lane, LaneClaim, LocalCheckpointStore,
    Metrics, RawBatch, RawMessage, Stage, OFFSET_COLUMN,
};

use crate::config::{DlqConfig, SinkConfig, SourceConfig, ValidatedPipeline};
use crate::pipeline::{Outputs, Pipeline};
use crate::status_report::rfc3339;

/// Which dead letters a command works on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub kind: Option<ErrorKind>,
    /// Last failure at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// The newest N only.
    pub limit: Option<usize>,
    /// Include the replayed ones.
    pub all: bool,
}

/// `--kind`: an error kind's name.
pub fn parse_kind(text: &str) -> std::result::Result<ErrorKind, String> {
    ErrorKind::parse(text)
}

/// `--id`: a dead-letter id (16 hex digits, as `weir dlq list` prints them).
pub fn parse_id(text: &str) -> std::result::Result<String, String> {
    let id = text.trim().to_ascii_lowercase();
    if is_dead_letter_id(&id) {
        Ok(id)
    } else {
        Err(format!(
            "{text:?} is not a dead-letter id: ids are {} hexadecimal digits, as `weir dlq list` prints them",
            weir_runtime::dlq::DEAD_LETTER_ID_LEN
        ))
    }
}

/// `--since`: an RFC 3339 time (`2026-01-31T12:00:00Z`) or a duration before now (`90s`,
/// `15m`, `2h`, `7d`), as epoch ms.
pub fn parse_since(text: &str) -> std::result::Result<i64, String> {
    parse_since_at(text, weir_runtime::metrics::now_ms())
}

fn parse_since_at(text: &str, now_ms: i64) -> std::result::Result<i64, String> {
    let t = text.trim();
    let unit = |u: &str| match u {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, u) = t.split_at(split);
    if let (Ok(n), Some(per)) = (n.parse::<i64>(), unit(u)) {
        return n
            .checked_mul(per)
            .map(|d| now_ms.saturating_sub(d))
            .ok_or_else(|| format!("{text:?} is too long ago"));
    }
    crate::replay::parse_rfc3339_ms(t).map_err(|why| {
        format!(
            "{text:?} is neither an RFC 3339 time such as 2026-01-31T12:00:00Z ({why}) nor a \
             duration before now such as 90s, 15m, 2h or 7d"
        )
    })
}

/// Where the pipeline's dead letters are, for messages.
pub fn place(cfg: &ValidatedPipeline) -> String {
    match &cfg.dlq {
        DlqConfig::Jsonl(d) => format!("JSONL directory {}", d.path.display()),
        DlqConfig::Kafka(k) => format!("Kafka topic {}", k.topic.trim()),
        DlqConfig::Postgres(p) => format!("PostgreSQL table {}", p.qualified_table()),
    }
}

/// Every dead letter of the pipeline in its DLQ, one per id, oldest first (replayed ones
/// included).
pub fn read_all(cfg: &ValidatedPipeline) -> Result<Vec<DeadLetterRecord>> {
    let all = match &cfg.dlq {
        DlqConfig::Jsonl(d) => {
            if !d.path.exists() {
                Vec::new()
            } else {
                read_dlq_entries(&d.path)?
            }
        }
        DlqConfig::Kafka(k) => read_dlq_topic(k)?,
        DlqConfig::Postgres(p) => read_dead_letters(p, &cfg.name)?,
    };
    Ok(all
        .into_iter()
        .filter(|r| *r.letter.pipeline == *cfg.name)
        .collect())
}

/// The letters `sel` selects from `all` (oldest first).
pub fn select(all: Vec<DeadLetterRecord>, sel: &Selection) -> Vec<DeadLetterRecord> {
    let mut picked: Vec<DeadLetterRecord> = all
        .into_iter()
        .filter(|r| sel.all || r.replayed_ms.is_none())
        .filter(|r| sel.kind.is_none_or(|k| r.letter.kind == k))
        .filter(|r| sel.since_ms.is_none_or(|t| r.letter.time_ms >= t))
        .collect();
    if let Some(n) = sel.limit {
        let skip = picked.len().saturating_sub(n);
        picked.drain(..skip);
    }
    picked
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn time_ms(ms: i64) -> String {
    let s = rfc3339(ms);
    format!("{}.{:03}Z", &s[..s.len() - 1], ms.rem_euclid(1000))
}

/// One line of at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The table `weir dlq list` prints.
pub fn list_table(records: &[DeadLetterRecord], with_status: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![{
        let mut h = vec!["ID", "TIME", "KIND", "STAGE", "POSITION"];
        if with_status {
            h.push("STATUS");
        }
        h.push("MESSAGE");
        h.into_iter().map(String::from).collect()
    }];
    for r in records {
        let mut row = vec![
            r.id.clone(),
            time_ms(r.letter.time_ms),
            r.letter.kind.as_str().to_string(),
            one_line(&r.letter.stage.text(), 32),
            r.position(),
        ];
        if with_status {
            row.push(match r.replayed_ms {
                Some(_) => "replayed".into(),
                None => "pending".into(),
            });
        }
        row.push(one_line(&r.letter.message, 100));
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `weir dlq list`: the table (stdout) and a summary line (stderr).
pub fn list(cfg: &ValidatedPipeline, sel: &Selection) -> Result<(String, String)> {
    let all = read_all(cfg)?;
    let total = all.len();
    let pending = all.iter().filter(|r| r.replayed_ms.is_none()).count();
    let shown = select(all, sel);
    let table = if shown.is_empty() {
        String::new()
    } else {
        list_table(&shown, sel.all)
    };
    let summary = format!(
        "{} dead letter(s) shown; pipeline `{}` has {pending} pending and {} replayed in {}",
        shown.len(),
        cfg.name,
        total - pending,
        place(cfg)
    );
    Ok((table, summary))
}

/// Bytes as text when they are UTF-8, else in hex.
fn bytes_text(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "(none)".into(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => format!("{} bytes, text:\n{text}", b.len()),
            Err(_) => {
                let mut hex = String::with_capacity(b.len() * 3);
                for (i, byte) in b.iter().enumerate() {
                    if i > 0 {
                        hex.push(if i % 32 == 0 { '\n' } else { ' ' });
                    }
                    let _ = write!(hex, "{byte:02x}");
                }
                format!("{} bytes, not UTF-8, hex:\n{hex}", b.len())
            }
        },
    }
}

/// The record of `id`, or an error naming the id and where it was looked for.
pub fn find(cfg: &ValidatedPipeline, id: &str) -> Result<DeadLetterRecord> {
    let id = parse_id(id).map_err(WeirError::Config)?;
    read_all(cfg)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| unknown_id(cfg, &id))
}

fn unknown_id(cfg: &ValidatedPipeline, id: &str) -> WeirError {
    WeirError::Config(format!(
        "no dead letter with id {id} for pipeline `{}` in {} (`weir dlq list` lists them)",
        cfg.name,
        place(cfg)
    ))
}

/// `weir dlq show`: every field of one dead letter.
pub fn show(cfg: &ValidatedPipeline, id: &str) -> Result<String> {
    let r = find(cfg, id)?;
    let mut out = String::new();
    let _ = writeln!(out, "id:             {}", r.id);
    let _ = writeln!(out, "pipeline:       {}", r.letter.pipeline);
    let _ = writeln!(
        out,
        "status:         {}",
        match r.replayed_ms {
            Some(t) => format!("replayed at {}", time_ms(t)),
            None => "pending".into(),
        }
    );
    let _ = writeln!(out, "kind:           {}", r.letter.kind);
    let _ = writeln!(out, "stage:          {}", r.letter.stage.text());
    let _ = writeln!(out, "message:        {}", r.letter.message);
    if r.replayable() {
        let _ = writeln!(
            out,
            "source:         topic {}, partition {}, offset {}",
            r.letter.topic, r.letter.partition, r.letter.offset
        );
    } else {
        let _ = writeln!(
            out,
            "source:         {} (an output row derived from many messages; its payload is the row as JSON)",
            r.position()
        );
    }
    let _ = writeln!(out, "attempts:       {}", r.letter.attempts);
    let _ = writeln!(
        out,
        "first failure:  {}",
        time_ms(r.letter.first_failure_ms)
    );
    let _ = writeln!(out, "last failure:   {}", time_ms(r.letter.time_ms));
    let _ = writeln!(
        out,
        "key:            {}",
        bytes_text(r.letter.key.as_deref())
    );
    let _ = writeln!(
        out,
        "payload:        {}",
        bytes_text(r.letter.payload.as_deref())
    );
    Ok(out)
}

/// Why `weir dlq replay` cannot feed dead letters through this pipeline, if it cannot: a
/// stateful chain (a window, a session, a GROUP BY, SQL) would emit results of the replayed
/// messages alone, replacing the real ones.
pub fn check_replayable(cfg: &ValidatedPipeline) -> std::result::Result<(), String> {
    if cfg.sql.is_some() {
        return Err(
            "the pipeline's `sql` aggregates events in windows: a replay would emit windows of \
             the replayed messages alone, replacing the real results. `weir dlq replay` feeds \
             dead letters through stateless pipelines (filters, projections, dedup, upcasts); \
             for this one use `weir replay`"
                .into(),
        );
    }
    for (i, op) in cfg.operators.iter().enumerate() {
        let ty = op.type_name();
        if matches!(ty, "tumble" | "hop" | "session") {
            return Err(format!(
                "operators[{i}] ({ty}) aggregates events in windows: a replay would emit \
                 windows of the replayed messages alone, replacing the real results. `weir \
                 dlq replay` feeds dead letters through stateless pipelines (filters, \
                 projections, dedup, upcasts); for this one use `weir replay`"
            ));
        }
    }
    Ok(())
}

/// What `weir dlq replay` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct ReplayRequest {
    pub kind: Option<ErrorKind>,
    pub ids: Vec<String>,
    pub dry_run: bool,
}

/// The letters a replay feeds back, and those it leaves out with the reason.
#[derive(Debug, Default)]
pub struct ReplayPlan {
    pub letters: Vec<DeadLetterRecord>,
    /// (letter, why not).
    pub skipped: Vec<(DeadLetterRecord, String)>,
}

/// Which pending letters a replay takes. Every `--id` must name a pending letter of the
/// pipeline that can be replayed; without `--id`, letters that cannot be are skipped.
pub fn plan(
    cfg: &ValidatedPipeline,
    all: Vec<DeadLetterRecord>,
    req: &ReplayRequest,
) -> Result<ReplayPlan> {
    let mut plan = ReplayPlan::default();
    let wanted: BTreeSet<&str> = req.ids.iter().map(String::as_str).collect();
    for id in &wanted {
        match all.iter().find(|r| r.id == *id) {
            None => return Err(unknown_id(cfg, id)),
            Some(r) if r.replayed_ms.is_some() => {
                return Err(WeirError::Config(format!(
                    "dead letter {id} was replayed already (at {}); a replay feeds pending \
                     dead letters only",
                    time_ms(r.replayed_ms.unwrap_or_default())
                )))
            }
            Some(r) if !r.replayable() => {
                return Err(WeirError::Config(format!(
                    "dead letter {id} cannot be replayed: it is an output row ({}) derived \
                     from many messages, not a message of the source",
                    r.position()
                )))
            }
            Some(r) if req.kind.is_some_and(|k| k != r.letter.kind) => {
                return Err(WeirError::Config(format!(
                    "dead letter {id} is of kind {}, not {}",
                    r.letter.kind,
                    req.kind.map(|k| k.as_str()).unwrap_or_default()
                )))
            }
            Some(_) => {}
        }
    }
    for r in all {
        if r.replayed_ms.is_some()
            || req.kind.is_some_and(|k| k != r.letter.kind)
            || (!wanted.is_empty() && !wanted.contains(r.id.as_str()))
        {
            continue;
        }
        if r.replayable() {
            plan.letters.push(r);
        } else {
            plan.skipped.push((
                r,
                "an output row derived from many messages cannot be fed back".into(),
            ));
        }
    }
    Ok(plan)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Dead letters fed back.
    pub fed: usize,
    /// Went through: marked replayed.
    pub succeeded: usize,
    /// Failed again: back in the DLQ with attempts + 1.
    pub failed: usize,
    /// Not fed back (output rows, or ahead of the pipeline's checkpoint).
    pub skipped: usize,
    /// Rows the sinks accepted.
    pub rows_written: u64,
}

/// Locks that keep the pipeline from running while the replay writes its lanes.
struct NotRunning {
    _local: Option<std::fs::File>,
    _postgres: Option<PipelineLock>,
}

fn not_running(cfg: &ValidatedPipeline) -> Result<NotRunning> {
    let postgres = cfg
        .sinks
        .iter()
        .find_map(|s| match s {
            SinkConfig::Postgres(c) => Some(c),
            _ => None,
        })
        .map(|c| PipelineLock::acquire(c, &cfg.name, LockMode::DlqReplay))
        .transpose()?;
    let local = crate::reset::local_run_lock(cfg).map_err(|e| {
        WeirError::Config(format!(
            "{e}; stop every worker of the pipeline before replaying its dead letters"
        ))
    })?;
    if let SourceConfig::Kafka(k) = &cfg.source {
        if k.assignment == AssignmentMode::Group {
            match group_members(k) {
                Ok(members) if !members.is_empty() => {
                    return Err(WeirError::Config(format!(
                        "pipeline `{}` is running: consumer group {:?} has {} member(s) ({}); \
                         stop every worker of the pipeline before replaying its dead letters",
                        cfg.name,
                        k.group_id,
                        members.len(),
                        members.join(", ")
                    )))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    "could not check that no worker consumes in group {:?} ({e}); make sure none runs",
                    k.group_id
                ),
            }
        }
    }
    Ok(NotRunning {
        _local: local,
        _postgres: postgres,
    })
}

/// The sinks a replayed message goes to: all of them when one of its letters failed before
/// the sinks; else only the sinks that refused it (the others hold its row already).
fn target_sinks(letters: &[&DeadLetterRecord], sinks: usize) -> Vec<bool> {
    let mut to = vec![false; sinks];
    for l in letters {
        match &l.letter.stage {
            Stage::Sink(name) => {
                if let Some(i) = name
                    .strip_prefix("sinks[")
                    .and_then(|n| n.strip_suffix(']'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|i| *i < sinks)
                {
                    to[i] = true;
                } else {
                    to.iter_mut().for_each(|t| *t = true);
                }
            }
            _ => to.iter_mut().for_each(|t| *t = true),
        }
    }
    to
}

/// The rows of `batch` whose source offset goes to sink `sink` (`targets` by offset).
fn rows_for_sink(
    batch: &RecordBatch,
    targets: &BTreeMap<i64, Vec<bool>>,
    sink: usize,
) -> Result<RecordBatch> {
    let Ok(i) = batch.schema().index_of(OFFSET_COLUMN) else {
        return Ok(batch.clone());
    };
    let Some(offsets) = batch.column(i).as_any().downcast_ref::<Int64Array>() else {
        return Ok(batch.clone());
    };
    let keep: BooleanArray = (0..batch.num_rows())
        .map(|r| {
            Some(!offsets.is_valid(r) || targets.get(&offsets.value(r)).is_none_or(|t| t[sink]))
        })
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

/// `weir dlq replay`: feeds the selected pending dead letters back through the pipeline
/// (decode, operators, sinks), each under its original topic, partition and offset.
///
/// The pipeline must not run (the same checks as `weir reset`). Each lane (source partition)
/// with letters is replayed as one more epoch of the live lane, by the checkpoint protocol:
/// the lane is claimed in the pipeline's checkpoint store, the sinks and DLQ recover it,
/// the messages go through a fresh partition task (stateless chains only:
/// [`check_replayable`]), the rows go to the sinks (a letter a sink refused goes to that sink
/// only), letters that fail again go back to the DLQ under their id with attempts + 1 and
/// the first failure kept, the others are marked replayed; then the participants prepare,
/// the lane's checkpoint is stored again (the same offsets, state and counters, the next
/// epoch) and they commit. So the replay's output is published like any epoch's, and the
/// next `weir run` goes on at the following epoch. With a `postgres` sink and a `postgres`
/// DLQ on the same database the rows, the letters, the marks and the checkpoint commit in one
/// transaction (exactly-once); with a JSONL DLQ the marks are published with the epoch;
/// a Kafka DLQ and a PostgreSQL DLQ of another database write the marks after the sinks
/// committed (a crash in between leaves them pending: a second replay writes their rows
/// again, which upsert sinks overwrite).
///
/// Letters at or beyond the lane's checkpoint (a Kafka DLQ's letter from a run that crashed
/// before its checkpoint) are skipped: the pipeline's next run processes them again.
/// Replayed messages carry no broker timestamp and no headers (the DLQ does not keep them).
pub fn replay(
    cfg: &ValidatedPipeline,
    plan: ReplayPlan,
    metrics: &Metrics,
    progress: &mut dyn FnMut(&str),
) -> Result<ReplaySummary> {
    let mut summary = ReplaySummary {
        skipped: plan.skipped.len(),
        ..Default::default()
    };
    if plan.letters.is_empty() {
        return Ok(summary);
    }
    let _not_running = not_running(cfg)?;
    let processing = Pipeline::processing_from_config(cfg)?;
    let Outputs {
        mut sinks,
        mut dlq,
        store,
    } = Outputs::open(cfg)?;
    let store: Arc<dyn CheckpointStore> = match store {
        Some(s) => s,
        None => {
            let dir = cfg.checkpoint.dir.as_ref().ok_or_else(|| {
                WeirError::Config("checkpoint.dir: missing (validation lets none through)".into())
            })?;
            Arc::new(LocalCheckpointStore::new(dir, &cfg.name))
        }
    };
    let topics = cfg.source.component().partitioning().source_topics();
    for sink in sinks.iter_mut() {
        sink.source_topics(&topics);
    }
    dlq.source_topics(&topics);
    let pipeline: Arc<str> = Arc::from(cfg.name.as_str());
    let headers = cfg.schema.metadata.header_names().len();
    let mut lanes: BTreeMap<(String, i32), Vec<DeadLetterRecord>> = BTreeMap::new();
    for r in plan.letters {
        lanes
            .entry((r.letter.topic.to_string(), r.letter.partition))
            .or_default()
            .push(r);
    }
    for ((topic, partition), letters) in lanes {
        let lane = Lane::new(topic.as_str(), partition);
        let generation = store.claim(&topic, partition)?;
        let stored = store.load(&topic, partition)?;
        let claim = LaneClaim {
            generation,
            committed_generation: stored.as_ref().map_or(0, |c| c.generation),
        };
        let committed = stored.as_ref().map(|c| c.epoch);
        for sink in sinks.iter_mut() {
            sink.claimed(&lane, claim);
            sink.recover(&lane, committed)?;
        }
        dlq.claimed(&lane, claim);
        dlq.recover(&lane, committed)?;
        // Letters ahead of the checkpoint are the pipeline's to process again.
        let checkpointed = stored.as_ref().filter(|c| !c.reset).map(|c| c.next_offset);
        let (letters, ahead): (Vec<_>, Vec<_>) = letters
            .into_iter()
            .partition(|r| checkpointed.is_none_or(|next| r.letter.offset < next));
        if !ahead.is_empty() {
            summary.skipped += ahead.len();
            progress(&format!(
                "{lane}: {} dead letter(s) at or after the checkpoint's offset {} skipped: the \
                 pipeline's next run processes them again",
                ahead.len(),
                checkpointed.unwrap_or_default()
            ));
        }
        if letters.is_empty() {
            continue;
        }
        let mut by_offset: BTreeMap<i64, Vec<&DeadLetterRecord>> = BTreeMap::new();
        for r in &letters {
            by_offset.entry(r.letter.offset).or_default().push(r);
        }
        let targets: BTreeMap<i64, Vec<bool>> = by_offset
            .iter()
            .map(|(o, ls)| (*o, target_sinks(ls, sinks.len())))
            .collect();
        let messages: Vec<RawMessage> = by_offset
            .iter()
            .map(|(offset, ls)| RawMessage {
                offset: *offset,
                key: ls[0].letter.key.clone(),
                payload: ls[0].letter.payload.clone(),
                timestamp_ms: None,
                headers: vec![None; headers],
            })
            .collect();
        let raw = RawBatch::new(Arc::from(topic.as_str()), partition, messages);
        let mut task = processing.partition_task(&raw.topic, partition)?;
        let out = task.process(&raw)?;
        let mut again: Vec<DeadLetter> = out.dead_letters;
        for batch in &out.batches {
            for (i, sink) in sinks.iter_mut().enumerate() {
                let rows = rows_for_sink(batch, &targets, i)?;
                if rows.num_rows() == 0 {
                    continue;
                }
                let outcome = sink.write(&lane, &rows)?;
                summary.rows_written += (rows.num_rows() - outcome.rejected.len()) as u64;
                if !outcome.rejected.is_empty() {
                    again.extend(sink_rejects(
                        &pipeline,
                        sink.name(),
                        &lane,
                        &rows,
                        &outcome.rejected,
                        out.source.as_deref(),
                    ));
                }
            }
        }
        // A letter that failed again keeps its history: attempts + 1, its first failure.
        let failed_offsets: BTreeSet<i64> = again.iter().map(|l| l.offset).collect();
        for l in &mut again {
            if let Some(old) = by_offset.get(&l.offset) {
                l.attempts = old.iter().map(|r| r.letter.attempts).max().unwrap_or(0) + 1;
                l.first_failure_ms = old
                    .iter()
                    .map(|r| r.letter.first_failure_ms)
                    .min()
                    .unwrap_or(l.first_failure_ms);
            }
        }
        let rewritten: BTreeSet<String> = again.iter().map(DeadLetter::id).collect();
        let marked: Vec<String> = letters
            .iter()
            .filter(|r| !rewritten.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        let succeeded = letters
            .iter()
            .filter(|r| !failed_offsets.contains(&r.letter.offset))
            .count();
        if !again.is_empty() {
            dlq.write(&lane, &again)?;
        }
        if !marked.is_empty() {
            dlq.mark_replayed(&lane, &marked)?;
        }
        // One more epoch of the lane: the checkpoint as it was, under this claim.
        let checkpoint = match stored {
            Some(mut c) => {
                c.epoch += 1;
                c.generation = generation;
                c
            }
            None => {
                let mut c = Checkpoint::reset_marker(&cfg.name, &topic, partition, 1);
                c.generation = generation;
                c
            }
        };
        let epoch = checkpoint.epoch;
        for sink in sinks.iter_mut() {
            sink.prepare(&lane, epoch)?;
        }
        dlq.prepare(&lane, epoch)?;
        store.save(&checkpoint)?;
        for sink in sinks.iter_mut() {
            sink.commit(&lane, epoch)?;
        }
        dlq.commit(&lane, epoch)?;
        metrics.dead_letters_replayed(succeeded as u64);
        summary.fed += letters.len();
        summary.succeeded += succeeded;
        summary.failed += letters.len() - succeeded;
        progress(&format!(
            "{lane}: {} dead letter(s) fed back: {succeeded} went through, {} failed again",
            letters.len(),
            letters.len() - succeeded
        ));
    }
    Ok(summary)
}

/// The summary line of a replay.
pub fn summary_line(cfg: &ValidatedPipeline, s: &ReplaySummary) -> String {
    let mut line = format!(
        "weir dlq replay: pipeline `{}`: {} dead letter(s) fed back: {} went through (marked \
         replayed in {}; {} row(s) written), {} failed again (back in the DLQ with attempts + 1)",
        cfg.name,
        s.fed,
        s.succeeded,
        place(cfg),
        s.rows_written,
        s.failed
    );
    if s.skipped > 0 {
        let _ = write!(line, "; {} skipped", s.skipped);
    }
    line
}

/// `weir dlq replay --dry-run`: what a replay would feed back (stdout) and a summary.
pub fn dry_run(cfg: &ValidatedPipeline, plan: &ReplayPlan) -> (String, String) {
    let mut out = if plan.letters.is_empty() {
        String::new()
    } else {
        list_table(&plan.letters, false)
    };
    for (r, why) in &plan.skipped {
        let _ = writeln!(out, "skipped {}: {why}", r.id);
    }
    let summary = format!(
        "weir dlq replay --dry-run: pipeline `{}`: would feed back {} dead letter(s) from {}{}; nothing changed",
        cfg.name,
        plan.letters.len(),
        place(cfg),
        if plan.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} skipped)", plan.skipped.len())
        }
    );
    (out, summary)
}

/// Loads a pipeline file for `weir dlq`; the error is the loader's report.
pub fn load(file: &Path) -> std::result::Result<ValidatedPipeline, String> {
    ValidatedPipeline::load(file).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_before_now() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since_at("15m", now), Ok(now - 900_000));
        assert_eq!(parse_since_at("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since_at("7d", now), Ok(now - 604_800_000));
        assert_eq!(
            parse_since_at("2026-01-31T12:00:00Z", now),
            Ok(1_769_860_800_000)
        );
        let e = parse_since_at("yesterday", now).unwrap_err();
        assert!(
            e.contains("\"yesterday\" is neither an RFC 3339 time"),
            "{e}"
        );
        assert!(parse_since_at("5w", now).is_err());
    }

    #[test]
    fn ids_are_sixteen_hex_digits() {
        assert_eq!(
            parse_id(" 00AB000000000000 "),
            Ok("00ab000000000000".into())
        );
        let e = parse_id("xyz").unwrap_err();
        assert!(
            e.contains("\"xyz\" is not a dead-letter id: ids are 16 hexadecimal digits"),
            "{e}"
        );
        assert!(parse_id("0123456789abcdef0").is_err());
    }

    fn record(offset: i64, stage: Stage, time_ms: i64) -> DeadLetterRecord {
        DeadLetterRecord::of_letter(&DeadLetter {
            pipeline: "p".into(),
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: Some(b"x".to_vec()),
            kind: if offset % 2 == 0 {
                ErrorKind::InvalidJson
            } else {
                ErrorKind::SinkRejected
            },
            message: "line one\nline two".into(),
            stage,
            attempts: 1,
            time_ms,
            first_failure_ms: time_ms,
        })
    }

    #[test]
    fn a_selection_filters_by_kind_time_status_and_keeps_the_newest() {
        let mut replayed = record(4, Stage::Decode, 40);
        replayed.replayed_ms = Some(50);
        let all = vec![
            record(1, Stage::Sink("sinks[0]".into()), 10),
            record(2, Stage::Decode, 20),
            record(3, Stage::Sink("sinks[0]".into()), 30),
            replayed,
        ];
        let offsets = |sel: Selection| -> Vec<i64> {
            select(all.clone(), &sel)
                .iter()
                .map(|r| r.letter.offset)
                .collect()
        };
        assert_eq!(offsets(Selection::default()), [1, 2, 3]);
        let all_of = Selection {
            all: true,
            ..Default::default()
        };
        assert_eq!(offsets(all_of), [1, 2, 3, 4]);
        let kind = Selection {
            kind: Some(ErrorKind::SinkRejected),
            ..Default::default()
        };
        assert_eq!(offsets(kind), [1, 3]);
        let since = Selection {
            since_ms: Some(20),
            ..Default::default()
        };
        assert_eq!(offsets(since), [2, 3]);
        let limit = Selection {
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(offsets(limit), [2, 3]);
    }

    #[test]
    fn the_table_has_one_line_per_letter_under_a_header() {
        let r = record(2, Stage::Decode, 1_769_860_800_123);
        let table = list_table(std::slice::from_ref(&r), false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("ID "), "{table}");
        assert!(
            lines[0].contains("POSITION") && lines[0].ends_with("MESSAGE"),
            "{table}"
        );
        assert!(lines[1].starts_with(&r.id), "{table}");
        assert!(lines[1].contains("2026-01-31T12:00:00.123Z"), "{table}");
        assert!(
            lines[1].contains("t/0@2") && lines[1].ends_with("line one line two"),
            "{table}"
        );
    }

    #[test]
    fn a_message_refused_by_one_sink_goes_back_to_that_sink_only() {
        let a = record(1, Stage::Sink("sinks[1]".into()), 0);
        let d = record(2, Stage::Decode, 0);
        assert_eq!(target_sinks(&[&a], 3), [false, true, false]);
        assert_eq!(target_sinks(&[&d], 3), [true, true, true]);
        assert_eq!(target_sinks(&[&a, &d], 2), [true, true]);
    }

    #[test]
    fn bytes_show_as_text_or_hex() {
        assert_eq!(bytes_text(Some(b"caf\xc3\xa9")), "5 bytes, text:\ncafé");
        assert_eq!(
            bytes_text(Some(b"\xff\x00k")),
            "3 bytes, not UTF-8, hex:\nff 00 6b"
        );
        assert_eq!(bytes_text(None), "(none)");
    }
}
