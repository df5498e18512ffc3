//! Which offsets may be committed: the largest contiguous prefix of durable ranges.

use std::collections::BTreeMap;

/// Tracks ranges of offsets from read to durable. Pure: no I/O, no clocks.
///
/// Ranges are registered in offset order when read and resolved in any order when their
/// output is durable; [`OffsetTracker::committable`] is the next offset after the longest
/// resolved prefix and never goes back.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// Start of the first unresolved range (the committable next offset).
    committed: i64,
    /// Registered ranges not yet folded into `committed`: start -> (end exclusive, resolved).
    pending: BTreeMap<i64, (i64, bool)>,
    next_register: i64,
}

impl OffsetTracker {
    pub fn new(next_offset: i64) -> Self {
        Self {
            committed: next_offset,
            pending: BTreeMap::new(),
            next_register: next_offset,
        }
    }

    /// Register `[first, last]` as read. Ranges must come in order; a gap (offsets the
    /// broker compacted away) is allowed and counts as resolved.
    pub fn register(&mut self, first: i64, last: i64) {
        assert!(
            first >= self.next_register && last >= first,
            "invariant: ranges are registered in offset order"
        );
        if first > self.next_register {
            self.pending.insert(self.next_register, (first, true));
        }
        self.pending.insert(first, (last + 1, false));
        self.next_register = last + 1;
        self.advance();
    }

    /// Mark the range that starts at `first` durable. Unknown ranges are ignored.
    pub fn resolve(&mut self, first: i64) {
        if let Some(entry) = self.pending.get_mut(&first) {
            entry.1 = true;
        }
        self.advance();
    }

    /// The offset to commit: every offset below it is durable.
    pub fn committable(&self) -> i64 {
        self.committed
    }

    fn advance(&mut self) {
        while let Some((&start, &(end, resolved))) = self.pending.first_key_value() {
            if !resolved || start != self.committed {
                break;
            }
            self.pending.pop_first();
            self.committed = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::new(0);
        t.register(0, 9);
        t.register(10, 19);
        t.register(20, 29);
        t.resolve(10);
        assert_eq!(t.committable(), 0);
        t.resolve(0);
        assert_eq!(t.committable(), 20);
        t.resolve(20);
        assert_eq!(t.committable(), 30);
    }

    #[test]
    fn gaps_between_ranges_do_not_block() {
        let mut t = OffsetTracker::new(5);
        t.register(8, 9);
        t.resolve(8);
        assert_eq!(t.committable(), 10);
    }

    proptest! {
        #[test]
        fn commits_exactly_the_resolved_prefix_in_any_order(
            lens in proptest::collection::vec(1i64..50, 1..40),
            order in proptest::collection::vec(any::<usize>(), 1..40),
        ) {
            let mut t = OffsetTracker::new(100);
            let mut ranges = Vec::new();
            let mut next = 100;
            for len in &lens {
                t.register(next, next + len - 1);
                ranges.push((next, next + len));
                next += len;
            }
            let mut resolved = vec![false; ranges.len()];
            let mut last = t.committable();
            for pick in order {
                let i = pick % ranges.len();
                resolved[i] = true;
                t.resolve(ranges[i].0);
                let prefix = resolved.iter().take_while(|r| **r).count();
                let expected = if prefix == 0 { 100 } else { ranges[prefix - 1].1 };
                prop_assert_eq!(t.committable(), expected);
                prop_assert!(t.committable() >= last);
                last = t.committable();
            }
        }
    }
}
