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
