//! When an event that failed in an operator is tried again before it goes to the DLQ
//! (ARCHITECTURE.md, "Retries before the DLQ"): `[dlq.retry]` of a pipeline file, or
//! `Pipeline::retry_schedule` in Rust.
//!
//! Only failures the operator marks as retryable are retried (a projection's fold or an
//! upcaster's step returning [`crate::EventError::Retryable`]; a panic when
//! [`RetrySchedule::retry_panics`] is set); every other failure is dead-lettered at once, as
//! before. A retried event waits in the partition task's checkpointed state, its key's later
//! events behind it, until its next attempt is due ([`crate::task`]).

use std::time::Duration;

/// How often and after which waits a retryable failure is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Attempts in all, the first included (1: no retry; a failure is dead-lettered at once).
    pub attempts: u32,
    /// The wait before each attempt after the first.
    pub backoff: Backoff,
    /// Whether an operator that panics on an event is retried like a retryable error
    /// (default false: a panic is dead-lettered at once).
    pub retry_panics: bool,
}

/// The waits between attempts.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// One wait before each attempt after the first, in order (`backoff_ms`).
    Fixed(Vec<Duration>),
    /// `initial` before the second attempt, multiplied by `multiplier` before each later one,
    /// never more than `max` (`initial_backoff_ms`, `multiplier`, `max_backoff_ms`).
    Exponential {
        initial: Duration,
        multiplier: f64,
        max: Duration,
    },
}

/// The waits of the default schedule: attempt 1 at once, then after 1 s, 5 s, 30 s and 2 min,
/// then the DLQ.
pub const DEFAULT_BACKOFF: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

impl Default for RetrySchedule {
    /// Five attempts: at once, then after 1 s, 5 s, 30 s and 2 min; panics are not retried.
    fn default() -> Self {
        Self {
            attempts: DEFAULT_BACKOFF.len() as u32 + 1,
            backoff: Backoff::Fixed(DEFAULT_BACKOFF.to_vec()),
            retry_panics: false,
        }
    }
}

impl RetrySchedule {
    /// No retries: every failure is dead-lettered at once (`attempts` = 1).
    pub fn none() -> Self {
        Self {
            attempts: 1,
            backoff: Backoff::Fixed(Vec::new()),
            retry_panics: false,
        }
    }

    /// One attempt at once, then one after each of `waits`: `waits.len() + 1` attempts.
    pub fn fixed(waits: &[Duration]) -> Self {
        Self {
            attempts: waits.len() as u32 + 1,
            backoff: Backoff::Fixed(waits.to_vec()),
            retry_panics: false,
        }
    }

    /// `attempts` in all, waiting `initial` before the second, doubling up to `max`.
    pub fn exponential(attempts: u32, initial: Duration, max: Duration) -> Self {
        Self {
            attempts,
            backoff: Backoff::Exponential {
                initial,
                multiplier: 2.0,
                max,
            },
            retry_panics: false,
        }
    }

    /// Retry panics too (or not).
    pub fn retry_panics(mut self, yes: bool) -> Self {
        self.retry_panics = yes;
        self
    }

    /// Whether any failure is retried at all.
    pub fn retries(&self) -> bool {
        self.attempts > 1
    }

    /// The wait after failed attempt `attempt` (from 1) before the next one; `None` when it
    /// was the last: the event goes to the DLQ.
    pub fn wait_after(&self, attempt: u32) -> Option<Duration> {
        if attempt == 0 || attempt >= self.attempts {
            return None;
        }
        match &self.backoff {
            Backoff::Fixed(waits) => Some(
                waits
                    .get(attempt as usize - 1)
                    .or(waits.last())
                    .copied()
                    .unwrap_or_default(),
            ),
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let factor = multiplier.powi(attempt.saturating_sub(1).min(1000) as i32);
                let ms = (initial.as_millis() as f64 * factor).min(max.as_millis() as f64);
                Some(Duration::from_millis(ms.max(0.0) as u64))
            }
        }
    }

    /// Every impossible setting, as `"<prefix>.<key>: reason"` lines (`prefix`: where the
    /// schedule was written, `dlq.retry` in a pipeline file). Pure.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.attempts == 0 {
            errors.push(format!(
                "{prefix}.attempts: must be at least 1 (the first attempt), got 0"
            ));
        }
        match &self.backoff {
            Backoff::Fixed(waits) => {
                let retries = self.attempts.saturating_sub(1) as usize;
                if self.attempts > 0 && waits.len() != retries {
                    errors.push(format!(
                        "{prefix}.backoff_ms: {} wait{} for {} attempts: give one wait before each \
                         attempt after the first ({retries})",
                        waits.len(),
                        if waits.len() == 1 { "" } else { "s" },
                        self.attempts
                    ));
                }
            }
            Backoff::Exponential {
                initial,
                multiplier,
                max,
            } => {
                if initial.is_zero() {
                    errors.push(format!(
                        "{prefix}.initial_backoff_ms: must be positive, got 0"
                    ));
                }
                if !multiplier.is_finite() || *multiplier < 1.0 {
                    errors.push(format!(
                        "{prefix}.multiplier: must be a number of at least 1 (each wait at \
                         least the one before), got {multiplier}"
                    ));
                }
                if max < initial {
                    errors.push(format!(
                        "{prefix}.max_backoff_ms: {} is below initial_backoff_ms ({})",
                        max.as_millis(),
                        initial.as_millis()
                    ));
                }
            }
        }
        errors
    }

    /// One line for `weir run --check` and logs: `5 attempts, waits 1000, 5000, 30000,
    /// 120000 ms`.
    pub fn describe(&self) -> String {
        if !self.retries() {
            return "1 attempt (no retries)".into();
        }
        let waits: Vec<String> = (1..self.attempts)
            .map(|a| {
                self.wait_after(a)
                    .unwrap_or_default()
                    .as_millis()
                    .to_string()
            })
            .collect();
        format!(
            "{} attempts, waits {} ms{}",
            self.attempts,
            waits.join(", "),
            if self.retry_panics {
                ", panics retried"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_default_is_the_seed_schedule() {
        let s = RetrySchedule::default();
        assert_eq!(s.attempts, 5);
        let waits: Vec<_> = (1..=5).map(|a| s.wait_after(a)).collect();
        assert_eq!(
            waits,
            [
                Some(ms(1_000)),
                Some(ms(5_000)),
                Some(ms(30_000)),
                Some(ms(120_000)),
                None
            ]
        );
        assert!(s.problems("dlq.retry").is_empty());
        assert!(!s.retry_panics);
    }

    #[test]
    fn exponential_waits_multiply_up_to_the_cap() {
        let s = RetrySchedule::exponential(6, ms(100), ms(500));
        let waits: Vec<_> = (1..=6).map(|a| s.wait_after(a)).collect();
        assert_eq!(
            waits,
            [
                Some(ms(100)),
                Some(ms(200)),
                Some(ms(400)),
                Some(ms(500)),
                Some(ms(500)),
                None
            ]
        );
    }

    #[test]
    fn impossible_schedules_name_their_key() {
        let s = RetrySchedule {
            attempts: 5,
            backoff: Backoff::Fixed(vec![ms(1), ms(2)]),
            retry_panics: false,
        };
        assert_eq!(
            s.problems("dlq.retry"),
            ["dlq.retry.backoff_ms: 2 waits for 5 attempts: give one wait before each attempt after the first (4)"]
        );
        let s = RetrySchedule {
            attempts: 0,
            backoff: Backoff::Exponential {
                initial: ms(0),
                multiplier: 0.5,
                max: ms(0),
            },
            retry_panics: false,
        };
        assert_eq!(
            s.problems("retry"),
            [
                "retry.attempts: must be at least 1 (the first attempt), got 0",
                "retry.initial_backoff_ms: must be positive, got 0",
                "retry.multiplier: must be a number of at least 1 (each wait at least the one before), got 0.5",
            ]
        );
        let s = RetrySchedule::exponential(3, ms(1_000), ms(500));
        assert_eq!(
            s.problems("dlq.retry"),
            ["dlq.retry.max_backoff_ms: 500 is below initial_backoff_ms (1000)"]
        );
        assert!(RetrySchedule::none().problems("dlq.retry").is_empty());
        assert_eq!(RetrySchedule::none().wait_after(1), None);
    }
}
