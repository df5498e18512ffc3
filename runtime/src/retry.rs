//! Retries of transient errors under a budget (ARCHITECTURE.md, "Errors and retries").
//!
//! The sink stage retries a step that failed with a [`ErrorClass::Transient`] error (a sink
//! write, a prepare or commit, a checkpoint save) with exponential backoff, 50 ms doubling up
//! to 5 s; input pauses meanwhile, because the channels fill. Each step has its own budget:
//! at most `max_attempts` attempts and `max_elapsed` since its first attempt
//! (`[worker] retry_max_attempts`, `retry_max_elapsed_ms`). When it is spent the step fails
//! with [`WeirError::RetriesSpent`], which names the component, the budget and the last error;
//! the run then stops like on any fatal error. Any other error is not retried at all. When to
//! retry is [`decide`], a pure function of what was observed.

use std::thread;
use std::time::{Duration, Instant};

use crate::error::{ErrorClass, Result, WeirError};
use crate::events;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The first pause between two attempts; it doubles after each attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How much retrying one step of the sink stage may take (`[worker] retry_max_attempts`,
/// `retry_max_elapsed_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Attempts in all, the first one included (1: no retry).
    pub max_attempts: u32,
    /// Time since the first attempt after which no attempt starts.
    pub max_elapsed: Duration,
}

impl RetryBudget {
    /// The default `[worker] retry_max_attempts`.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 30;
    /// The default `[worker] retry_max_elapsed_ms`.
    pub const DEFAULT_MAX_ELAPSED: Duration = Duration::from_secs(120);
}

impl Default for RetryBudget {
    /// 30 attempts and 2 minutes: long enough for a broker or database to restart, short
    /// enough that a supervisor sees the worker fail.
    fn default() -> Self {
        Self {
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            max_elapsed: Self::DEFAULT_MAX_ELAPSED,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this pause.
    Retry(Duration),
    /// Fail with the error as it is: it is not transient, or the run is stopping.
    Fail,
    /// Fail because the budget is spent.
    Spent,
}

/// After attempt number `attempts` (from 1) failed with an error of `class`, `elapsed` after
/// the first attempt started: retry (and after which pause), or fail. A pause never runs past
/// the budget's time, so the last attempt starts at the latest when the time is up.
pub fn decide(
    budget: &RetryBudget,
    class: ErrorClass,
    stopping: bool,
    attempts: u32,
    elapsed: Duration,
) -> RetryDecision {
    if class != ErrorClass::Transient || stopping {
        return RetryDecision::Fail;
    }
    if attempts >= budget.max_attempts || elapsed >= budget.max_elapsed {
        return RetryDecision::Spent;
    }
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    RetryDecision::Retry(doubled.min(MAX_BACKOFF).min(budget.max_elapsed - elapsed))
}

/// Run `f` until it succeeds, retrying transient errors as [`decide`] says; `component`
/// names what is retried (a sink, `dlq`, `checkpoint`) in logs and in the error.
pub fn retry<T>(
    budget: &RetryBudget,
    shutdown: &Shutdown,
    metrics: &Metrics,
    component: String,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let e = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let elapsed = started.elapsed();
        match decide(
            budget,
            e.class(),
            shutdown.is_triggered(),
            attempts,
            elapsed,
        ) {
            RetryDecision::Retry(pause) => {
                events::TransientRetried {
                    component: &component,
                    attempt: attempts,
                    error: &e,
                    backoff: pause,
                }
                .emit(metrics);
                thread::sleep(pause);
            }
            RetryDecision::Fail => return Err(e),
            RetryDecision::Spent => {
                return Err(WeirError::RetriesSpent {
                    component,
                    attempts,
                    elapsed,
                    max_attempts: budget.max_attempts,
                    max_elapsed: budget.max_elapsed,
                    last: Box::new(e),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::{Data, Fatal, Transient};
    use RetryDecision::{Fail, Retry, Spent};

    const BUDGET: RetryBudget = RetryBudget {
        max_attempts: 5,
        max_elapsed: Duration::from_secs(10),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn errors_that_are_not_transient_are_not_retried() {
        for class in [Fatal, Data] {
            assert_eq!(decide(&BUDGET, class, false, 1, ms(0)), Fail, "{class:?}");
        }
    }

    #[test]
    fn a_stopping_run_does_not_retry() {
        assert_eq!(decide(&BUDGET, Transient, true, 1, ms(0)), Fail);
    }

    #[test]
    fn pauses_double_from_50_ms_up_to_5_s() {
        let long = RetryBudget {
            max_attempts: 100,
            max_elapsed: Duration::from_secs(3600),
        };
        let pauses: Vec<RetryDecision> = (1..=9)
            .map(|n| decide(&long, Transient, false, n, ms(0)))
            .collect();
        let expected: Vec<RetryDecision> = [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000]
            .into_iter()
            .map(|n| Retry(ms(n)))
            .collect();
        assert_eq!(pauses, expected);
        assert_eq!(
            decide(&long, Transient, false, 99, ms(0)),
            Retry(MAX_BACKOFF)
        );
    }

    #[test]
    fn the_budget_is_spent_after_its_attempts() {
        assert_eq!(decide(&BUDGET, Transient, false, 4, ms(0)), Retry(ms(400)));
        assert_eq!(decide(&BUDGET, Transient, false, 5, ms(0)), Spent);
        let once = RetryBudget {
            max_attempts: 1,
            ..BUDGET
        };
        assert_eq!(decide(&once, Transient, false, 1, ms(0)), Spent);
    }

    #[test]
    fn the_budget_is_spent_after_its_time_and_no_pause_runs_past_it() {
        assert_eq!(decide(&BUDGET, Transient, false, 1, ms(10_000)), Spent);
        assert_eq!(
            decide(&BUDGET, Transient, false, 2, ms(9_980)),
            Retry(ms(20))
        );
        assert_eq!(
            decide(&BUDGET, Transient, false, 1, ms(9_999)),
            Retry(ms(1))
        );
    }

    #[test]
    fn a_step_that_keeps_failing_transiently_ends_with_the_budget_and_the_last_error() {
        let budget = RetryBudget {
            max_attempts: 3,
            max_elapsed: Duration::from_secs(10),
        };
        let mut calls = 0;
        let err = retry(
            &budget,
            &Shutdown::new(),
            &Metrics::default(),
            "out".into(),
            || -> Result<()> {
                calls += 1;
                Err(WeirError::io(
                    "/data/out",
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
                ))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 3);
        assert_eq!(err.class(), Fatal);
        let text = err.to_string();
        assert!(
            text.starts_with("out: gave up after 3 attempts in ")
                && text.ends_with(
                    " ms (retry budget: [worker] retry_max_attempts = 3, \
                     retry_max_elapsed_ms = 10000): io /data/out: timed out"
                ),
            "{text}"
        );
    }

    #[test]
    fn a_step_that_recovers_within_the_budget_succeeds() {
        let mut calls = 0;
        let got = retry(
            &BUDGET,
            &Shutdown::new(),
            &Metrics::default(),
            "out".into(),
            || {
                calls += 1;
                if calls < 3 {
                    Err(WeirError::io(
                        "/data/out",
                        std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"),
                    ))
                } else {
                    Ok(calls)
                }
            },
        );
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn a_full_disk_is_tried_once() {
        let mut calls = 0;
        let err = retry(
            &BUDGET,
            &Shutdown::new(),
            &Metrics::default(),
            "checkpoint".into(),
            || -> Result<()> {
                calls += 1;
                Err(WeirError::io(
                    "/data/ckpt/0.tmp",
                    std::io::Error::from_raw_os_error(28),
                ))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(matches!(err, WeirError::Io { .. }), "{err}");
    }
}
