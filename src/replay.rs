//! `weir replay pipeline.toml --from earliest|<RFC 3339 time>`: rebuild the read model of a
//! pipeline whose sink is `postgres` into a shadow table, then swap it in atomically.
//!
//! 1. [`check`] (pure): the pipeline's only sink is `postgres`; `--from <time>` needs a
//!    `kafka` source (other sources are bounded files or generators: `earliest` only).
//! 2. [`ReplayTarget::open`] takes the pipeline's PostgreSQL advisory lock exclusively (a
//!    `weir run` of the pipeline holds it shared, so a running worker makes the replay refuse,
//!    and the other way round), then [`ReplayTarget::reset_shadow`] starts the shadow table
//!    `<table>__replay` and the checkpoints of pipeline `<name>__replay` over: an interrupted
//!    replay is never resumed, the next one starts from scratch.
//! 3. Kafka: the end offset of every partition is recorded now (high watermark) and the start
//!    is the first offset (`earliest`) or the first offset whose timestamp is at or after the
//!    time (`offsets_for_times`). The replay reads every partition (manual assignment, a
//!    consumer group of its own that is never committed to) from start to end with the
//!    pipeline's operators, into the shadow table, with checkpoints as usual. When every
//!    partition has been read up to its end, the run stops like a worker stopped by SIGTERM:
//!    drained, checkpointed, committed. Windows are not flushed at that point: their state
//!    is checkpointed and handed over, so the live pipeline goes on exactly as if it had read
//!    those offsets itself. Other sources run to their end.
//! 4. Caught up = every partition's stored checkpoint is at its recorded end (or the bounded
//!    input ended). Then [`ReplayTarget::swap`], in one transaction: the live table becomes
//!    `<table>__replaced`, the shadow takes the live name, the replay's checkpoints become the
//!    live pipeline's. A `weir run` started afterwards resumes at the recorded ends.
//!
//! A replay stopped before it caught up (SIGTERM, Ctrl-C, SIGKILL, an error) swaps nothing:
//! the live table and checkpoints are untouched. Dead letters of the replay go to the JSONL
//! DLQ directory `<path>__replay` (emptied when a replay starts), so that the live DLQ does
//! not receive a second copy of what it already holds; a Kafka DLQ receives them with the
//! pipeline name `<name>__replay`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use weir_connectors::postgres::replay::replay_pipeline_name;
use weir_connectors::postgres::{LockMode, PipelineLock, ReplayTarget, SwapSummary};
use weir_connectors::{
    AssignmentMode, JsonlDlqConfig, KafkaSource, PartitionRange, PostgresSinkConfig,
};
use weir_runtime::error::{Result, WeirError};
use weir_runtime::metrics::Metrics;
use weir_runtime::{PartitionReader, ReadResult, Shutdown, Source, TopicPartition};

use crate::config::{DlqConfig, SinkConfig, SourceConfig, ValidatedPipeline};
use crate::pipeline::Pipeline;

/// Where a replay starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first offset of every partition.
    Earliest,
    /// The first offset whose (Kafka) timestamp is at or after this time, in epoch millis.
    Time(i64),
}

impl std::fmt::Display for ReplayFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayFrom::Earliest => f.write_str("earliest"),
            ReplayFrom::Time(ms) => write!(f, "{ms} ms since the epoch"),
        }
    }
}

impl FromStr for ReplayFrom {
    type Err = String;

    /// `earliest`, or an RFC 3339 time with its offset: `2026-01-31T12:00:00Z`,
    /// `2026-01-31T13:00:00.250+01:00`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("earliest") {
            return Ok(ReplayFrom::Earliest);
        }
        parse_rfc3339_ms(s).map(ReplayFrom::Time).map_err(|why| {
            format!(
                "{s:?} is neither `earliest` nor an RFC 3339 time such as 2026-01-31T12:00:00Z: {why}"
            )
        })
    }
}

/// Epoch millis of an RFC 3339 time; the offset (`Z` or `±HH:MM`) is required, so that no
/// local time zone is guessed.
pub(crate) fn parse_rfc3339_ms(s: &str) -> std::result::Result<i64, String> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        (!part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err("expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset".into());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err("expected the time as HH:MM:SS".into());
    }
    let field = |r: std::ops::Range<usize>, what: &str| {
        digits(r).ok_or_else(|| format!("the {what} is not a number"))
    };
    let (year, month, day) = (
        field(0..4, "year")?,
        field(5..7, "month")?,
        field(8..10, "day")?,
    );
    let (hour, minute, second) = (
        field(11..13, "hour")?,
        field(14..16, "minute")?,
        field(17..19, "second")?,
    );
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("a fraction of a second needs digits after the dot".into());
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().unwrap_or(0) * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let h = field(i + 1..i + 3, "offset hour")?;
            let m = field(i + 4..i + 6, "offset minute")?;
            if h > 23 || m > 59 {
                return Err(format!("the offset {rest} is out of range"));
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        "" => return Err("the offset is missing (add Z for UTC, or e.g. +01:00)".into()),
        rest => return Err(format!("{rest:?} is not an offset (Z or ±HH:MM)")),
    };
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap(year) => 29,
        2 => 28,
        _ => return Err(format!("month {month} does not exist")),
    };
    if day < 1 || day > days_in_month {
        return Err(format!("day {day} does not exist in month {month}"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Ok(secs * 1000 + millis)
}

/// The pipeline's postgres sink, or every reason it cannot be replayed (pure: no I/O).
pub fn check(
    cfg: &ValidatedPipeline,
    from: ReplayFrom,
) -> std::result::Result<&PostgresSinkConfig, Vec<String>> {
    let mut errors = Vec::new();
    let mut postgres = None;
    for (i, sink) in cfg.sinks.iter().enumerate() {
        match sink {
            SinkConfig::Postgres(c) if cfg.sinks.len() == 1 => postgres = Some(c),
            SinkConfig::Postgres(_) => {}
            other => errors.push(format!(
                "sinks[{i}].type: replay rebuilds a PostgreSQL read model: the pipeline's only \
                 sink must be `postgres`, found `{}`",
                other.type_name()
            )),
        }
    }
    if cfg.sinks.len() > 1 && errors.is_empty() {
        errors.push("sinks: replay needs exactly one sink, the `postgres` one".into());
    }
    match (&cfg.source, from) {
        (SourceConfig::Kafka(_), _) | (_, ReplayFrom::Earliest) => {}
        (other, ReplayFrom::Time(_)) => errors.push(format!(
            "--from: a time needs a `kafka` source (message timestamps); source.type is `{}`, \
             which only replays from `earliest`",
            other.type_name()
        )),
    }
    if let SourceConfig::Generator(g) = &cfg.source {
        if g.events.is_none() {
            errors.push(
                "source.events: a generator without `events` never ends, so a replay of it never catches up".into(),
            );
        }
    }
    match (postgres, errors.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(errors),
    }
}

/// The lock a `weir run` worker holds while it runs a pipeline whose sink is `postgres`
/// (shared with the other workers of the pipeline; a replay takes it exclusively).
pub fn run_lock(cfg: &ValidatedPipeline) -> Result<Option<PipelineLock>> {
    cfg.sinks
        .iter()
        .find_map(|s| match s {
            SinkConfig::Postgres(c) => Some(c),
            _ => None,
        })
        .map(|c| PipelineLock::acquire(c, &cfg.name, LockMode::Shared))
        .transpose()
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line redrawn in place (stderr is a terminal).
    Terminal,
    /// A plain line every `every`.
    Lines { every: Duration },
}

impl ProgressMode {
    /// A terminal when stderr is one, else a line every 5 s.
    pub fn detect() -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Terminal
        } else {
            ProgressMode::Lines {
                every: Duration::from_secs(5),
            }
        }
    }
}

/// What a finished replay did.
#[derive(Debug)]
pub struct ReplayReport {
    pub pipeline: String,
    pub table: String,
    pub from: ReplayFrom,
    pub events: u64,
    pub rows_out: u64,
    pub dlq: u64,
    pub elapsed: Duration,
    pub swap: SwapSummary,
    /// Where the replay's dead letters went, when that is a directory.
    pub dlq_dir: Option<PathBuf>,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "replay of {} from {}: {} events in {secs:.2}s ({:.0}/s), {} rows out, {} dead-lettered{}",
            self.pipeline,
            self.from,
            self.events,
            self.events as f64 / secs.max(1e-9),
            self.rows_out,
            self.dlq,
            match &self.dlq_dir {
                Some(d) if self.dlq > 0 => format!(" (in {})", d.display()),
                _ => String::new(),
            }
        )?;
        match &self.swap.replaced {
            Some(old) => writeln!(
                f,
                "  table {} swapped in; the previous one is now {old}",
                self.table
            )?,
            None => writeln!(f, "  table {} created", self.table)?,
        }
        let mut at = String::new();
        for c in &self.swap.checkpoints {
            let _ = write!(at, " {}/{}@{}", c.topic, c.partition, c.next_offset);
        }
        writeln!(f, "  `weir run` of {} resumes at:{at}", self.pipeline)
    }
}

/// The config the replay runs: the replay's pipeline name (checkpoint namespace), the shadow
/// table, a Kafka source that reads every partition without touching the live group, and
/// its own JSONL DLQ directory.
fn replay_config(
    cfg: &ValidatedPipeline,
    shadow: PostgresSinkConfig,
) -> Result<(ValidatedPipeline, Option<PathBuf>)> {
    let mut dlq_dir = None;
    let r = cfg
        .derive(|r| {
            r.name = replay_pipeline_name(&cfg.name);
            r.sinks = vec![SinkConfig::Postgres(shadow)];
            if let SourceConfig::Kafka(k) = &mut r.source {
                k.assignment = AssignmentMode::Manual;
                k.group_id = format!("{}.weir-replay", k.group_id.trim());
                // Partitions without a start offset (next offset 0) start at their first offset.
                k.options
                    .insert("auto.offset.reset".into(), "earliest".into());
            }
            if let DlqConfig::Jsonl(d) = &mut r.dlq {
                let path = d.path.to_string_lossy();
                let dir = PathBuf::from(format!("{}__replay", path.trim_end_matches('/')));
                *d = JsonlDlqConfig { path: dir.clone() };
                dlq_dir = Some(dir);
            }
        })
        .map_err(|e| {
            WeirError::Config(format!(
                "the replay's pipeline is invalid: {}",
                e.join("; ")
            ))
        })?;
    Ok((r, dlq_dir))
}

/// Read positions of the bounded partitions, for the stop decision and the progress line.
#[derive(Debug, Default)]
struct Positions {
    /// (start, end, next offset read) per partition.
    parts: HashMap<TopicPartition, (i64, i64, Arc<AtomicI64>)>,
}

impl Positions {
    fn new(ranges: &[PartitionRange]) -> Self {
        let parts = ranges
            .iter()
            .map(|r| {
                (
                    (r.topic.clone(), r.partition),
                    (r.start, r.end, Arc::new(AtomicI64::new(r.start))),
                )
            })
            .collect();
        Self { parts }
    }

    /// Offsets read and offsets to read in all.
    fn done_total(&self) -> (u64, u64) {
        self.parts.values().fold((0, 0), |(d, t), (s, e, at)| {
            let at = at.load(Ordering::Relaxed).clamp(*s, *e);
            (d + (at - s) as u64, t + (e - s) as u64)
        })
    }

    fn all_read(&self) -> bool {
        self.parts
            .values()
            .all(|(_, e, at)| at.load(Ordering::Relaxed) >= *e)
    }
}

/// A source whose partitions stop at recorded end offsets: past its end a reader reports
/// nothing new (it does not end the input, which would flush windows), and the replay stops
/// the run once every partition is read. It never acknowledges (commits) anything upstream.
struct BoundedSource {
    inner: Box<dyn Source>,
    positions: Arc<Positions>,
}

impl Source for BoundedSource {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn partitioning(&self) -> weir_runtime::Partitioning {
        self.inner.partitioning()
    }

    fn keep_headers(&mut self, names: &[String]) {
        self.inner.keep_headers(names)
    }

    fn partitions(&mut self) -> Result<Vec<TopicPartition>> {
        let parts = self.inner.partitions()?;
        for tp in &parts {
            if !self.positions.parts.contains_key(tp) {
                return Err(WeirError::Config(format!(
                    "{}/{} appeared after the replay recorded the end offsets: run the replay again",
                    tp.0, tp.1
                )));
            }
        }
        Ok(parts)
    }

    fn open(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        next_offset: i64,
    ) -> Result<Box<dyn PartitionReader>> {
        let (_, end, at) = self
            .positions
            .parts
            .get(&(topic.clone(), partition))
            .cloned()
            .ok_or_else(|| {
                WeirError::Internal(format!("no recorded range for {topic}/{partition}"))
            })?;
        at.store(next_offset, Ordering::Relaxed);
        let inner = self.inner.open(topic, partition, next_offset)?;
        Ok(Box::new(BoundedReader { inner, end, at }))
    }
}

struct BoundedReader {
    inner: Box<dyn PartitionReader>,
    end: i64,
    at: Arc<AtomicI64>,
}

impl PartitionReader for BoundedReader {
    fn read(&mut self, max_rows: usize, linger: Duration) -> Result<ReadResult> {
        if self.at.load(Ordering::Relaxed) >= self.end {
            thread::sleep(linger.clamp(Duration::from_millis(1), Duration::from_millis(100)));
            return Ok(ReadResult::Idle);
        }
        match self.inner.read(max_rows, linger)? {
            ReadResult::Batch(mut batch) => {
                let end = self.end;
                let past = batch.messages.iter().any(|m| m.offset >= end);
                batch.messages.retain(|m| m.offset < end);
                let next = match batch.messages.last() {
                    _ if past => end,
                    Some(m) => m.offset + 1,
                    None => self.at.load(Ordering::Relaxed),
                };
                self.at.store(next, Ordering::Relaxed);
                if batch.messages.is_empty() {
                    Ok(ReadResult::Idle)
                } else {
                    Ok(ReadResult::Batch(batch))
                }
            }
            other => Ok(other),
        }
    }

    fn set_paused(&mut self, paused: bool) -> Result<()> {
        self.inner.set_paused(paused)
    }
}

/// One progress line: percent and offsets when the total is known, events/s, ETA.
pub fn progress_text(done: u64, total: Option<u64>, events: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let eps = events as f64 / secs;
    match total {
        Some(total) if total > 0 => {
            let pct = 100.0 * done as f64 / total as f64;
            let rate = done as f64 / secs;
            let eta = if done >= total {
                "0s".to_string()
            } else if rate > 0.0 {
                format_duration(Duration::from_secs_f64((total - done) as f64 / rate))
            } else {
                "unknown".to_string()
            };
            format!("{pct:5.1}% {done}/{total} offsets, {eps:.0} events/s, ETA {eta}")
        }
        Some(_) => format!("nothing to read, {eps:.0} events/s"),
        None => format!("{events} events, {eps:.0} events/s (bounded input: no ETA)"),
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Runs the replay of `cfg` (see the module docs). `interrupt` is triggered by signals; an
/// interrupted replay returns an error and swaps nothing.
pub fn run(
    cfg: &ValidatedPipeline,
    from: ReplayFrom,
    interrupt: Shutdown,
    mode: ProgressMode,
) -> anyhow::Result<ReplayReport> {
    let sink = check(cfg, from).map_err(|e| anyhow::anyhow!("{}", e.join("; ")))?;
    let started = Instant::now();
    let mut target = ReplayTarget::open(sink, &cfg.name)?;
    let (rcfg, dlq_dir) = replay_config(cfg, target.shadow_config())?;
    // Record the ranges before anything is dropped: an unreachable source fails here.
    let ranges = match &rcfg.source {
        SourceConfig::Kafka(k) => {
            let mut source = KafkaSource::new(k.clone())?;
            let from_ms = match from {
                ReplayFrom::Earliest => None,
                ReplayFrom::Time(ms) => Some(ms),
            };
            Some(source.ranges(from_ms)?)
        }
        _ => None,
    };
    target.reset_shadow()?;
    if let DlqConfig::Postgres(d) = &rcfg.dlq {
        // The replay's dead letters (its own pipeline name) start over, like its JSONL
        // directory; the live pipeline's stay.
        weir_connectors::postgres::dlq::delete_pipeline(d, &rcfg.name)?;
    }
    if let Some(dir) = &dlq_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WeirError::io(dir, e).into()),
        }
    }
    let mut pipeline = Pipeline::from_config(&rcfg)?;
    let positions = Arc::new(Positions::new(ranges.as_deref().unwrap_or_default()));
    if let Some(ranges) = &ranges {
        let starts = ranges
            .iter()
            .map(|r| ((r.topic.clone(), r.partition), r.start))
            .collect();
        pipeline = pipeline.start_offsets(starts).map_source(|inner| {
            Box::new(BoundedSource {
                inner,
                positions: positions.clone(),
            })
        });
    }
    let executor = pipeline.build()?;
    let metrics = executor.metrics();
    let stop = Shutdown::new();
    let finished = Shutdown::new();
    let watcher = {
        let (stop, finished, interrupt) = (stop.clone(), finished.clone(), interrupt.clone());
        let positions = ranges.as_ref().map(|_| positions.clone());
        let metrics = metrics.clone();
        let name = cfg.name.clone();
        thread::Builder::new()
            .name("weir-replay-progress".into())
            .spawn(move || {
                watch(
                    &name,
                    mode,
                    positions.as_deref(),
                    &metrics,
                    &stop,
                    &finished,
                    &interrupt,
                )
            })?
    };
    let result = executor.run(stop.clone());
    finished.trigger();
    let _ = watcher.join();
    let summary = result?;
    let untouched = format!(
        "the live table {} and the checkpoints of pipeline {:?} are untouched; the next \
         `weir replay` starts the shadow table {} over",
        sink.table,
        cfg.name,
        target.shadow_table()
    );
    if interrupt.is_triggered() {
        anyhow::bail!("replay interrupted before the swap: {untouched}");
    }
    let caught_up = match &ranges {
        Some(ranges) => {
            let stored = target.stored_offsets()?;
            let behind: Vec<String> = ranges
                .iter()
                .filter_map(|r| {
                    let at = stored
                        .get(&(r.topic.to_string(), r.partition))
                        .copied()
                        .unwrap_or(-1);
                    (at < r.end)
                        .then(|| format!("{}/{} at {at} of {}", r.topic, r.partition, r.end))
                })
                .collect();
            if !behind.is_empty() {
                anyhow::bail!(
                    "the replay stopped before it caught up ({}): {untouched}",
                    behind.join(", ")
                );
            }
            true
        }
        None => summary.finished,
    };
    if !caught_up {
        anyhow::bail!("the input did not end: {untouched}");
    }
    let swap = target.swap()?;
    Ok(ReplayReport {
        pipeline: cfg.name.clone(),
        table: sink.table.clone(),
        from,
        events: summary.counters.consumed,
        rows_out: summary.counters.rows_out,
        dlq: summary.counters.dlq,
        elapsed: started.elapsed(),
        swap,
        dlq_dir,
    })
}

/// The progress thread: draws progress, and stops the run once every bounded partition is
/// read (or on `interrupt`). Returns when `finished`.
fn watch(
    name: &str,
    mode: ProgressMode,
    positions: Option<&Positions>,
    metrics: &Metrics,
    stop: &Shutdown,
    finished: &Shutdown,
    interrupt: &Shutdown,
) {
    let started = Instant::now();
    let tick = Duration::from_millis(50);
    let mut last_draw: Option<Instant> = None;
    let draw_every = match mode {
        ProgressMode::Terminal => Duration::from_millis(250),
        ProgressMode::Lines { every } => every,
    };
    let text = || {
        let (done, total) = match positions {
            Some(p) => {
                let (d, t) = p.done_total();
                (d, Some(t))
            }
            None => (0, None),
        };
        format!(
            "replay {name}: {}",
            progress_text(done, total, metrics.snapshot().consumed, started.elapsed())
        )
    };
    while !finished.is_triggered() {
        if interrupt.is_triggered() || positions.is_some_and(Positions::all_read) {
            stop.trigger();
        }
        if last_draw.is_none_or(|t| t.elapsed() >= draw_every) {
            last_draw = Some(Instant::now());
            let line = text();
            let mut err = std::io::stderr().lock();
            let _ = match mode {
                ProgressMode::Terminal => write!(err, "\r\x1b[2K{line}"),
                ProgressMode::Lines { .. } => writeln!(err, "{line}"),
            };
            let _ = err.flush();
        }
        thread::sleep(tick);
    }
    let line = text();
    let mut err = std::io::stderr().lock();
    let _ = match mode {
        ProgressMode::Terminal => writeln!(err, "\r\x1b[2K{line}"),
        ProgressMode::Lines { .. } => writeln!(err, "{line}"),
    };
}

/// The start offsets of a replay, by partition (used by [`Pipeline::start_offsets`]).
pub type StartOffsets = BTreeMap<TopicPartition, i64>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A pipeline file with this `[source]` body and these `[[sinks]]` bodies.
    fn pipeline(source: &str, sinks: &[&str]) -> ValidatedPipeline {
        let sinks: String = sinks.iter().map(|s| format!("[[sinks]]\n{s}\n")).collect();
        let text = format!(
            r#"name = "orders"
[source]
{source}
[schema]
table = "events"
event_time = "t"
fields = [{{ name = "k", type = "string" }}, {{ name = "t", type = "timestamp" }}]
{sinks}
[dlq]
type = "jsonl"
path = "dead/"
[checkpoint]
dir = "checkpoints"
"#
        );
        ValidatedPipeline::parse(&text, Path::new("p.toml"))
            .unwrap_or_else(|e| panic!("the test's pipeline is valid: {e}"))
    }

    const KAFKA: &str =
        "type = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"o\"]\ngroup_id = \"live\"";
    const POSTGRES: &str = "type = \"postgres\"\nurl = \"postgres://127.0.0.1/x\"\ntable = \"t\"\nkey_columns = [\"k\"]";

    #[test]
    fn replay_rebuilds_one_postgres_sink_and_nothing_else() {
        let cfg = pipeline(KAFKA, &[POSTGRES]);
        assert!(check(&cfg, ReplayFrom::Earliest).is_ok());
        let cfg = pipeline(KAFKA, &["type = \"jsonl\"\npath = \"out\""]);
        assert_eq!(
            check(&cfg, ReplayFrom::Earliest).unwrap_err(),
            [
                "sinks[0].type: replay rebuilds a PostgreSQL read model: the pipeline's only sink \
              must be `postgres`, found `jsonl`"
            ]
        );
        let cfg = pipeline(KAFKA, &[POSTGRES, "type = \"null\""]);
        let e = check(&cfg, ReplayFrom::Earliest).unwrap_err();
        assert!(e[0].contains("found `null`"), "{e:?}");
    }

    #[test]
    fn replay_from_a_time_needs_a_kafka_source_and_a_generator_must_end() {
        let generator = "type = \"generator\"";
        let cfg = pipeline(generator, &[POSTGRES]);
        let e = check(&cfg, ReplayFrom::Time(0)).unwrap_err();
        assert!(
            e.iter()
                .any(|e| e.contains("--from: a time needs a `kafka` source")
                    && e.contains("source.type is `generator`")),
            "{e:?}"
        );
        assert!(e.iter().any(|e| e.starts_with("source.events:")), "{e:?}");
        let cfg = pipeline("type = \"generator\"\nevents = 100", &[POSTGRES]);
        assert!(check(&cfg, ReplayFrom::Earliest).is_ok());
    }

    #[test]
    fn the_replay_pipeline_reads_every_partition_outside_the_live_group() {
        let cfg = pipeline(KAFKA, &[POSTGRES]);
        let sink = check(&cfg, ReplayFrom::Earliest)
            .expect("replayable")
            .clone();
        let (r, dlq) = replay_config(&cfg, sink).expect("the shadow pipeline is valid");
        let SourceConfig::Kafka(k) = &r.source else {
            panic!("{:?}", r.source)
        };
        assert_eq!(k.assignment, AssignmentMode::Manual);
        assert_eq!(k.group_id, "live.weir-replay");
        assert_eq!(r.name, replay_pipeline_name("orders"));
        assert_eq!(dlq, Some(PathBuf::from("dead__replay")));
    }

    #[test]
    fn from_accepts_earliest_and_rfc3339_with_an_offset() {
        assert_eq!("earliest".parse(), Ok(ReplayFrom::Earliest));
        assert_eq!("1970-01-01T00:00:01Z".parse(), Ok(ReplayFrom::Time(1_000)));
        assert_eq!(
            "2023-11-14T22:13:20.5Z".parse(),
            Ok(ReplayFrom::Time(1_700_000_000_500))
        );
        assert_eq!(
            "2023-11-15T00:13:20.123+02:00".parse(),
            Ok(ReplayFrom::Time(1_700_000_000_123))
        );
        assert_eq!(
            "2024-02-29T00:00:00-01:30".parse(),
            Ok(ReplayFrom::Time(1_709_170_200_000))
        );
    }

    #[test]
    fn from_refuses_what_is_not_a_time_and_says_why() {
        for (input, why) in [
            ("yesterday", "expected YYYY-MM-DDTHH:MM:SS"),
            ("2024-01-01T00:00:00", "the offset is missing"),
            ("2023-02-29T00:00:00Z", "day 29 does not exist in month 2"),
            ("2024-13-01T00:00:00Z", "month 13 does not exist"),
            ("2024-01-01T24:00:00Z", "is not a time of day"),
            ("2024-01-01T00:00:00+0100", "is not an offset"),
            ("2024-01-01T00:00:00.Z", "needs digits after the dot"),
        ] {
            let err = input.parse::<ReplayFrom>().unwrap_err();
            assert!(err.contains(why), "{input}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
        }
    }

    #[test]
    fn progress_shows_percent_rate_and_eta() {
        assert_eq!(
            progress_text(250, Some(1000), 500, Duration::from_secs(1)),
            " 25.0% 250/1000 offsets, 500 events/s, ETA 3s"
        );
        assert_eq!(
            progress_text(1000, Some(1000), 2000, Duration::from_secs(2)),
            "100.0% 1000/1000 offsets, 1000 events/s, ETA 0s"
        );
        assert_eq!(
            progress_text(0, Some(1000), 0, Duration::from_secs(2)),
            "  0.0% 0/1000 offsets, 0 events/s, ETA unknown"
        );
        assert_eq!(
            progress_text(10, Some(100_000), 10, Duration::from_secs(10)),
            "  0.0% 10/100000 offsets, 1 events/s, ETA 27h46m"
        );
        assert_eq!(
            progress_text(0, None, 300, Duration::from_secs(3)),
            "300 events, 100 events/s (bounded input: no ETA)"
        );
    }

    #[test]
    fn a_bounded_reader_stops_at_the_recorded_end() {
        use weir_runtime::{RawBatch, RawMessage};
        struct Fixed(Vec<i64>);
        impl PartitionReader for Fixed {
            fn read(&mut self, _: usize, _: Duration) -> Result<ReadResult> {
                let messages = self
                    .0
                    .drain(..)
                    .map(|offset| RawMessage {
                        offset,
                        key: None,
                        payload: Some(b"{}".to_vec()),
                        timestamp_ms: None,
                        headers: Vec::new(),
                    })
                    .collect::<Vec<_>>();
                if messages.is_empty() {
                    return Ok(ReadResult::Idle);
                }
                Ok(ReadResult::Batch(RawBatch::new("t".into(), 0, messages)))
            }
        }
        let at = Arc::new(AtomicI64::new(5));
        let mut r = BoundedReader {
            inner: Box::new(Fixed(vec![5, 6, 7, 8, 9])),
            end: 8,
            at: at.clone(),
        };
        let ReadResult::Batch(b) = r.read(100, Duration::ZERO).unwrap() else {
            panic!("a batch")
        };
        let offsets: Vec<i64> = b.messages.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [5, 6, 7]);
        assert_eq!(at.load(Ordering::Relaxed), 8);
        assert!(matches!(
            r.read(100, Duration::ZERO).unwrap(),
            ReadResult::Idle
        ));
    }
}
