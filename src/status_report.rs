//! `weir status pipeline.toml`: what a pipeline's checkpoint store holds, without running it
//! and without a lock: each partition's checkpointed offset, epoch and time (local and
//! PostgreSQL stores), the source's end offset now and the lag between them, and the totals
//! of the accounting counters (ARCHITECTURE.md, "Metrics and operations").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use weir_connectors::KafkaSource;
use weir_runtime::error::Result;
use weir_runtime::{Checkpoint, Counters};

use crate::config::{SourceConfig, ValidatedPipeline};

/// One partition's line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    pub epoch: u64,
    /// `None`: a reset marker (no offset).
    pub next_offset: Option<i64>,
    /// When the checkpoint was written (epoch ms), when the store says.
    pub written_ms: Option<i64>,
    /// The source's end offset now, when it has one (Kafka: the high watermark).
    pub end_offset: Option<i64>,
}

impl PartitionStatus {
    /// Messages between the checkpoint and the end (0 when the end is behind it).
    pub fn lag(&self) -> Option<i64> {
        Some((self.end_offset? - self.next_offset?).max(0))
    }
}

/// The report of `weir status` for `cfg` (read from `file`).
pub fn run(cfg: &ValidatedPipeline, file: &Path) -> Result<String> {
    let (place, stored) = crate::reset::stored(cfg)?;
    let ends: BTreeMap<(String, i32), i64> = match &cfg.source {
        SourceConfig::Kafka(k) => KafkaSource::new(k.clone())?
            .ranges(None)?
            .into_iter()
            .map(|r| ((r.topic.to_string(), r.partition), r.end))
            .collect(),
        _ => BTreeMap::new(),
    };
    let partitions: Vec<PartitionStatus> = stored
        .iter()
        // The global stage's checkpoint holds no offset of the source.
        .filter(|(c, _)| c.topic.as_ref() != weir_runtime::GLOBAL_TOPIC)
        .map(|(c, at)| status_of(c, *at, &ends))
        .collect();
    let totals = stored.iter().fold(Counters::default(), |mut t, (c, _)| {
        t.add(&c.counters);
        t
    });
    Ok(report(file, &cfg.name, &place, &partitions, &totals))
}

fn status_of(
    c: &Checkpoint,
    written_ms: Option<i64>,
    ends: &BTreeMap<(String, i32), i64>,
) -> PartitionStatus {
    PartitionStatus {
        topic: c.topic.to_string(),
        partition: c.partition,
        epoch: c.epoch,
        next_offset: (!c.reset).then_some(c.next_offset),
        written_ms,
        end_offset: ends.get(&(c.topic.to_string(), c.partition)).copied(),
    }
}

/// The text of the report (pure, for the tests).
pub fn report(
    file: &Path,
    pipeline: &str,
    place: &str,
    partitions: &[PartitionStatus],
    totals: &Counters,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "weir status {}: pipeline `{pipeline}`, checkpoints in {place}",
        file.display()
    );
    if partitions.is_empty() {
        let _ = writeln!(out, "  no checkpoint stored");
    }
    let mut total_lag = Some(0);
    for p in partitions {
        let offset = p.next_offset.map_or_else(
            || "reset (no offset)".to_string(),
            |o| format!("offset {o}"),
        );
        let written = p
            .written_ms
            .map_or_else(String::new, |ms| format!(", written {}", rfc3339(ms)));
        let end = match (p.end_offset, p.lag()) {
            (Some(e), Some(l)) => format!(", end {e}, lag {l}"),
            (Some(e), None) => format!(", end {e}"),
            _ => ", end unknown".to_string(),
        };
        total_lag = total_lag.zip(p.lag()).map(|(t, l)| t + l);
        let _ = writeln!(
            out,
            "  {}/{}: epoch {}, {offset}{written}{end}",
            p.topic, p.partition, p.epoch
        );
    }
    if let (Some(l), false) = (total_lag, partitions.is_empty()) {
        let _ = writeln!(out, "  total lag {l}");
    }
    let t = totals;
    // Events waiting for a retry are in state, like a window's.
    let waiting = match t.in_retry() {
        0 => String::new(),
        n => format!(" + {n} waiting for a retry"),
    };
    let retries = match t.retries {
        0 => String::new(),
        n => format!(", {n} retries ({} succeeded)", t.retry_successes),
    };
    let _ = writeln!(
        out,
        "  totals: {} consumed = {} aggregated + {} dead-lettered + {} late dropped + {} filtered + {} deduplicated{waiting}{}; {} late, {} rows out{retries}",
        t.consumed,
        t.aggregated,
        t.dlq,
        t.late_dropped,
        t.filtered,
        t.deduplicated,
        if t.balanced() { "" } else { " (DOES NOT BALANCE)" },
        t.late,
        t.rows_out
    );
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` of epoch milliseconds (UTC).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_624_000_000), "2026-01-05T14:40:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_report_has_each_partitions_offset_end_and_lag_and_the_totals() {
        let p = |partition, next_offset, end_offset| PartitionStatus {
            topic: "t".into(),
            partition,
            epoch: 3,
            next_offset,
            written_ms: Some(0),
            end_offset,
        };
        let totals = Counters {
            consumed: 11,
            aggregated: 6,
            dlq: 2,
            late_dropped: 1,
            filtered: 1,
            deduplicated: 1,
            late: 1,
            rows_out: 4,
            ..Default::default()
        };
        let text = report(
            Path::new("p.toml"),
            "orders",
            "local directory c/orders",
            &[p(0, Some(40), Some(50)), p(1, None, Some(7))],
            &totals,
        );
        assert_eq!(
            text,
            "weir status p.toml: pipeline `orders`, checkpoints in local directory c/orders\n\
             \x20 t/0: epoch 3, offset 40, written 1970-01-01T00:00:00Z, end 50, lag 10\n\
             \x20 t/1: epoch 3, reset (no offset), written 1970-01-01T00:00:00Z, end 7\n\
             \x20 totals: 11 consumed = 6 aggregated + 2 dead-lettered + 1 late dropped + 1 filtered + 1 deduplicated; 1 late, 4 rows out\n"
        );
        let waiting = Counters {
            consumed: 3,
            aggregated: 1,
            parked: 4,
            unparked: 2,
            retries: 2,
            retry_successes: 1,
            ..Default::default()
        };
        let text = report(Path::new("p.toml"), "orders", "x", &[], &waiting);
        assert!(
            text.ends_with(
                "totals: 3 consumed = 1 aggregated + 0 dead-lettered + 0 late dropped + 0 filtered \
                 + 0 deduplicated + 2 waiting for a retry; 0 late, 0 rows out, 2 retries (1 succeeded)\n"
            ),
            "{text}"
        );
    }
}
