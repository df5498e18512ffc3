//! Event-time arithmetic: watermarks and window bins. Pure functions over values.

/// Per-partition watermark: max event time seen − max out-of-orderness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkTracker {
    max_event_time: Option<i64>,
    max_out_of_orderness_ms: i64,
}

impl WatermarkTracker {
    pub fn new(max_out_of_orderness_ms: i64) -> Self {
        Self {
            max_event_time: None,
            max_out_of_orderness_ms,
        }
    }

    pub fn with_max_event_time(mut self, max: Option<i64>) -> Self {
        self.max_event_time = max;
        self
    }

    /// Observe one event; returns the watermark after it.
    #[inline]
    pub fn observe(&mut self, event_time: i64) -> i64 {
        let max = match self.max_event_time {
            Some(m) if m >= event_time => m,
            _ => event_time,
        };
        self.max_event_time = Some(max);
        max.saturating_sub(self.max_out_of_orderness_ms)
    }

    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time
    }

    /// `None` before the first event: nothing can be late yet.
    pub fn watermark(&self) -> Option<i64> {
        self.max_event_time
            .map(|m| m.saturating_sub(self.max_out_of_orderness_ms))
    }

    /// Move the watermark forward to `watermark` (never back), as an event at `watermark +
    /// max_out_of_orderness` would: the max event time is what a checkpoint stores, so the
    /// advanced watermark survives a restart. Returns whether it moved.
    pub fn advance_to(&mut self, watermark: i64) -> bool {
        if self.watermark().is_some_and(|w| w >= watermark) {
            return false;
        }
        self.max_event_time = Some(watermark.saturating_add(self.max_out_of_orderness_ms));
        true
    }
}

/// The opt-in guards of a partition's watermark (`[watermark] idle_advance_ms` and
/// `max_future_ms` in a pipeline file; ARCHITECTURE.md, "Windows"). Both off by default,
/// which leaves event time driven by events alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatermarkGuards {
    /// A partition with no input for this long advances its watermark with processing
    /// time ([`WatermarkGuards::idle_watermark`]), so its open windows close.
    pub idle_advance_ms: Option<i64>,
    /// An event whose time is more than this after the wall clock (when it is processed) is
    /// dead-lettered instead of advancing the watermark ([`WatermarkGuards::future_bound`]).
    pub max_future_ms: Option<i64>,
}

impl WatermarkGuards {
    /// The watermark of a partition that has had no input for `idle_for_ms` and whose
    /// watermark was `at_last_input` after its last input: `at_last_input + idle_for_ms`
    /// once `idle_for_ms` reaches `idle_advance_ms`, i.e. event time moves as fast as the
    /// wall clock from the last input on. When event time follows the wall clock, that is
    /// the watermark an event arriving now would give (now − max out-of-orderness); in a
    /// replay of old data it moves the old watermark by the idle time only, never to the
    /// wall clock. `None` when the advance is off, the partition has not been idle long
    /// enough, or it never had an event (no watermark, no open window).
    pub fn idle_watermark(&self, at_last_input: Option<i64>, idle_for_ms: i64) -> Option<i64> {
        let threshold = self.idle_advance_ms?;
        if idle_for_ms < threshold {
            return None;
        }
        at_last_input.map(|w| w.saturating_add(idle_for_ms))
    }

    /// The latest event time accepted when the wall clock reads `now_ms`: a later event goes
    /// to the DLQ. Measured against the wall clock, not the watermark, so the first event of
    /// a partition is checked too, a real jump in event time (a quiet night) is not refused,
    /// and a replay of old data is never refused. `None` when the guard is off.
    pub fn future_bound(&self, now_ms: i64) -> Option<i64> {
        self.max_future_ms.map(|m| now_ms.saturating_add(m))
    }

    /// The DLQ message of an event at `event_time` past [`Self::future_bound`].
    pub fn future_message(&self, event_time: i64, now_ms: i64) -> String {
        format!(
            "event time {event_time} ms is {} ms ahead of the wall clock ({now_ms} ms), more \
             than watermark.max_future_ms = {} ms: dead-lettered instead of advancing the \
             watermark",
            event_time.saturating_sub(now_ms),
            self.max_future_ms.unwrap_or_default()
        )
    }
}

/// The wall clock in epoch milliseconds: what `max_future_ms` is measured against.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Start of the tumbling window of `size_ms` that holds `ts` (windows aligned to the epoch).
#[inline]
pub fn tumble_start(ts: i64, size_ms: i64) -> i64 {
    ts - ts.rem_euclid(size_ms)
}

/// Starts of every hopping window (`size_ms` long, one every `slide_ms`) that holds `ts`,
/// oldest first.
pub fn hop_starts(ts: i64, slide_ms: i64, size_ms: i64) -> impl Iterator<Item = i64> {
    let last = tumble_start(ts, slide_ms);
    let count = (size_ms + slide_ms - 1) / slide_ms;
    (0..count)
        .rev()
        .map(move |k| last - k * slide_ms)
        .filter(move |start| ts < start + size_ms)
}

/// A window `[start, end)` is closed once the watermark reaches `end + allowed_lateness`.
#[inline]
pub fn is_closed(window_end: i64, allowed_lateness_ms: i64, watermark: Option<i64>) -> bool {
    match watermark {
        Some(w) => w >= window_end.saturating_add(allowed_lateness_ms),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tumble_start_aligns_negative_and_positive_times() {
        assert_eq!(tumble_start(0, 60_000), 0);
        assert_eq!(tumble_start(59_999, 60_000), 0);
        assert_eq!(tumble_start(60_000, 60_000), 60_000);
        assert_eq!(tumble_start(-1, 60_000), -60_000);
    }

    #[test]
    fn watermark_lags_max_event_time_and_never_goes_back() {
        let mut w = WatermarkTracker::new(5_000);
        assert_eq!(w.watermark(), None);
        assert_eq!(w.observe(10_000), 5_000);
        assert_eq!(w.observe(7_000), 5_000);
        assert_eq!(w.observe(12_000), 7_000);
    }

    #[test]
    fn an_idle_partition_advances_its_last_watermark_by_the_idle_time_once_idle_long_enough() {
        let g = WatermarkGuards {
            idle_advance_ms: Some(5_000),
            max_future_ms: None,
        };
        assert_eq!(
            g.idle_watermark(Some(60_000), 4_999),
            None,
            "not idle long enough"
        );
        assert_eq!(g.idle_watermark(Some(60_000), 5_000), Some(65_000));
        assert_eq!(g.idle_watermark(Some(60_000), 90_000), Some(150_000));
        assert_eq!(g.idle_watermark(None, 90_000), None, "never had an event");
        assert_eq!(
            WatermarkGuards::default().idle_watermark(Some(60_000), 90_000),
            None,
            "off by default"
        );
    }

    #[test]
    fn advancing_the_watermark_never_moves_it_back_and_keeps_it_in_the_max_event_time() {
        let mut w = WatermarkTracker::new(5_000);
        assert!(
            w.advance_to(1_000),
            "a partition without events gets a watermark"
        );
        assert_eq!(w.watermark(), Some(1_000));
        w.observe(20_000);
        assert!(!w.advance_to(10_000));
        assert_eq!(w.watermark(), Some(15_000));
        assert!(w.advance_to(30_000));
        assert_eq!(w.max_event_time(), Some(35_000));
        let restored = WatermarkTracker::new(5_000).with_max_event_time(w.max_event_time());
        assert_eq!(restored.watermark(), Some(30_000));
    }

    #[test]
    fn the_future_bound_is_the_wall_clock_plus_max_future() {
        let g = WatermarkGuards {
            idle_advance_ms: None,
            max_future_ms: Some(60_000),
        };
        assert_eq!(g.future_bound(1_000_000), Some(1_060_000));
        assert_eq!(WatermarkGuards::default().future_bound(1_000_000), None);
        let m = g.future_message(1_600_000, 1_000_000);
        assert!(m.contains("event time 1600000 ms"), "{m}");
        assert!(m.contains("600000 ms ahead"), "{m}");
        assert!(m.contains("max_future_ms = 60000 ms"), "{m}");
    }

    #[test]
    fn window_closes_when_watermark_reaches_end_plus_lateness() {
        assert!(!is_closed(60_000, 0, None));
        assert!(!is_closed(60_000, 0, Some(59_999)));
        assert!(is_closed(60_000, 0, Some(60_000)));
        assert!(!is_closed(60_000, 1_000, Some(60_999)));
        assert!(is_closed(60_000, 1_000, Some(61_000)));
    }

    #[test]
    fn hop_windows_cover_the_event() {
        let starts: Vec<i64> = hop_starts(65_000, 30_000, 60_000).collect();
        assert_eq!(starts, vec![30_000, 60_000]);
    }

    proptest! {
        #[test]
        fn every_event_lands_in_exactly_one_tumbling_window(ts in -10_000_000_000i64..10_000_000_000, size in 1i64..10_000_000) {
            let s = tumble_start(ts, size);
            prop_assert!(s <= ts && ts < s + size);
            prop_assert_eq!(s.rem_euclid(size), 0);
        }

        #[test]
        fn hop_windows_are_exactly_those_holding_the_event(ts in -1_000_000i64..1_000_000, slide in 1i64..5_000, mult in 1i64..6) {
            let size = slide * mult;
            let starts: Vec<i64> = hop_starts(ts, slide, size).collect();
            prop_assert_eq!(starts.len() as i64, mult);
            for s in &starts {
                prop_assert!(*s <= ts && ts < s + size);
                prop_assert_eq!(s.rem_euclid(slide), 0);
            }
        }

        #[test]
        fn watermark_is_monotone(events in proptest::collection::vec(-1_000_000i64..1_000_000, 1..200), ooo in 0i64..10_000) {
            let mut w = WatermarkTracker::new(ooo);
            let mut last = i64::MIN;
            for e in events {
                let wm = w.observe(e);
                prop_assert!(wm >= last);
                last = wm;
            }
        }
    }
}
