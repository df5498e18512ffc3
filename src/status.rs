//! The live status of `weir run` (ARCHITECTURE.md, "Metrics and operations"): events/s in,
//! rows/s out, the total consumer lag, the slowest partition's watermark lag and the dead
//! letters so far (and the events waiting for a retry, when any). On a terminal one line on stderr is redrawn every second; off a terminal
//! a log line (an info event with these fields, JSON in the JSON log) every
//! `[worker] status_interval_secs` seconds (default 30; 0: none).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_runtime::metrics::now_ms;
use weir_runtime::Metrics;

/// What one status line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub events_per_s: f64,
    pub rows_per_s: f64,
    /// Sum of the partitions' consumer lag (messages); `None` when no end is known.
    pub lag: Option<i64>,
    /// The largest watermark lag of a partition, in seconds.
    pub slowest_watermark_lag_s: Option<f64>,
    pub dead_letters: u64,
    /// Events waiting for a retry before the DLQ now.
    pub in_retry: u64,
}

/// The counts a status line is a difference of.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    consumed: u64,
    rows_out: u64,
}

impl Status {
    /// The status between two samples `dt` apart, with the current partition values.
    fn between(before: Sample, m: &Metrics, dt: Duration) -> (Self, Sample) {
        let c = m.snapshot();
        let now = Sample {
            consumed: c.consumed,
            rows_out: c.rows_out,
        };
        let secs = dt.as_secs_f64().max(1e-9);
        let parts = m.partitions();
        let lags: Vec<i64> = parts.iter().filter_map(|p| p.lag()).collect();
        let clock = now_ms();
        let status = Status {
            events_per_s: now.consumed.saturating_sub(before.consumed) as f64 / secs,
            rows_per_s: now.rows_out.saturating_sub(before.rows_out) as f64 / secs,
            lag: (!lags.is_empty()).then(|| lags.iter().sum()),
            slowest_watermark_lag_s: parts
                .iter()
                .filter_map(|p| p.watermark_ms())
                .map(|w| (clock - w) as f64 / 1e3)
                .reduce(f64::max),
            dead_letters: c.dlq,
            in_retry: m.in_retry(),
        };
        (status, now)
    }

    /// The line, e.g. `1200 events/s in, 40 rows/s out, lag 350, watermark lag 2.1 s, 3 dead letters`.
    pub fn line(&self) -> String {
        let lag = self
            .lag
            .map_or_else(|| "lag unknown".to_string(), |l| format!("lag {l}"));
        let wm = self
            .slowest_watermark_lag_s
            .map_or_else(String::new, |w| format!(", watermark lag {w:.1} s"));
        let waiting = match self.in_retry {
            0 => String::new(),
            n => format!(", {n} waiting for a retry"),
        };
        format!(
            "{:.0} events/s in, {:.0} rows/s out, {lag}{wm}, {} dead letters{waiting}",
            self.events_per_s, self.rows_per_s, self.dead_letters
        )
    }
}

/// How the status is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatusMode {
    /// Redraw one line on stderr every second.
    Terminal,
    /// A log line every interval.
    Log(Duration),
    Off,
}

impl StatusMode {
    /// The mode for this process's stderr.
    pub fn detect(interval_s: u64) -> Self {
        use std::io::IsTerminal;
        Self::choose(std::io::stderr().is_terminal(), interval_s)
    }

    /// A terminal redraws; otherwise a log line every `interval_s` seconds (0: off).
    pub fn choose(terminal: bool, interval_s: u64) -> Self {
        if terminal {
            StatusMode::Terminal
        } else if interval_s == 0 {
            StatusMode::Off
        } else {
            StatusMode::Log(Duration::from_secs(interval_s))
        }
    }
}

/// The thread showing the status; dropping it stops the thread (and clears a redrawn line).
pub struct StatusLine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatusLine {
    pub fn start(mode: StatusMode, metrics: Arc<Metrics>) -> std::io::Result<Option<Self>> {
        let every = match mode {
            StatusMode::Off => return Ok(None),
            StatusMode::Terminal => Duration::from_secs(1),
            StatusMode::Log(every) => every,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-status".into())
            .spawn(move || {
                let mut before = Sample::default();
                let mut at = Instant::now();
                let mut next = at + every;
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if Instant::now() < next {
                        continue;
                    }
                    let (status, now) = Status::between(before, &metrics, at.elapsed());
                    (before, at, next) = (now, Instant::now(), next + every);
                    match mode {
                        StatusMode::Terminal => {
                            let mut err = std::io::stderr().lock();
                            let _ = write!(err, "\r\x1b[2K{}", status.line());
                            let _ = err.flush();
                        }
                        _ => tracing::info!(
                            events_per_s = status.events_per_s.round() as u64,
                            rows_per_s = status.rows_per_s.round() as u64,
                            lag = status.lag,
                            watermark_lag_s = status.slowest_watermark_lag_s,
                            dead_letters = status.dead_letters,
                            in_retry = status.in_retry,
                            "status"
                        ),
                    }
                }
                if mode == StatusMode::Terminal {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K");
                }
            })?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for StatusLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_the_rate_between_two_samples_and_the_partitions_now() {
        let m = Metrics::default();
        m.add(&weir_runtime::Counters {
            consumed: 3000,
            rows_out: 100,
            dlq: 4,
            ..Default::default()
        });
        let (s, after) = Status::between(
            Sample {
                consumed: 1000,
                rows_out: 0,
            },
            &m,
            Duration::from_secs(2),
        );
        assert_eq!(after.consumed, 3000);
        assert_eq!(s.events_per_s, 1000.0);
        assert_eq!(s.rows_per_s, 50.0);
        assert_eq!(s.lag, None);
        assert_eq!(
            s.line(),
            "1000 events/s in, 50 rows/s out, lag unknown, 4 dead letters"
        );
        let s = Status {
            lag: Some(350),
            slowest_watermark_lag_s: Some(2.06),
            ..s
        };
        assert_eq!(
            s.line(),
            "1000 events/s in, 50 rows/s out, lag 350, watermark lag 2.1 s, 4 dead letters"
        );
        let s = Status { in_retry: 2, ..s };
        assert!(s.line().ends_with("4 dead letters, 2 waiting for a retry"));
    }

    #[test]
    fn a_terminal_redraws_and_off_one_an_interval_of_zero_turns_the_status_off() {
        assert_eq!(StatusMode::choose(true, 0), StatusMode::Terminal);
        assert_eq!(StatusMode::choose(false, 0), StatusMode::Off);
        assert_eq!(
            StatusMode::choose(false, 30),
            StatusMode::Log(Duration::from_secs(30))
        );
    }
}
