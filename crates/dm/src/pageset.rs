//! A set of guest pages kept as disjoint ranges: what the host believes the guest has
//! ballooned, what a guest may give up.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` page ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    /// start → end.
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl PageSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pages in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Runs (maximal ranges) in the set.
    pub fn run_count(&self) -> usize {
        self.ranges.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges, in order, as `(start, count)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e - s))
    }

    /// The set's runs inside `[start, start + count)`, clipped to it, in order, as
    /// `(start, count)`.
    ///
    /// One ordered walk: a lookup for the run that may reach into `start`, then one step
    /// per run, so taking the first `k` runs costs `O(log n + k)` however long the window
    /// is — what a guest or a host naming 2^24 pages in one range may cost.
    pub fn runs_in(&self, start: u64, count: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = start.saturating_add(count);
        probe::visit();
        let before = self
            .ranges
            .range(..start)
            .next_back()
            .filter(move |&(_, &e)| e > start && start < end)
            .map(move |(_, &e)| (start, e.min(end) - start));
        let after = self
            .ranges
            .range(start..end)
            .map(move |(&s, &e)| (s, e.min(end) - s));
        before.into_iter().chain(after).inspect(|_| probe::visit())
    }

    /// The runs of `[start, start + count)` not in the set, in order, as
    /// `(start, count)`: the same walk as [`runs_in`](Self::runs_in), one step per gap.
    pub fn gaps_in(&self, start: u64, count: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let end = start.saturating_add(count);
        let mut runs = self.runs_in(start, count);
        let mut at = start;
        std::iter::from_fn(move || {
            while at < end {
                let (s, n) = runs.next().unwrap_or((end, 0));
                let gap = (at, s - at);
                at = s + n;
                if gap.1 > 0 {
                    return Some(gap);
                }
            }
            None
        })
    }

    /// True if any page of `[start, start + count)` is in the set: one lookup.
    pub fn intersects(&self, start: u64, count: u64) -> bool {
        self.runs_in(start, count).next().is_some()
    }

    /// Pages of `[start, start + count)` in the set. Walks every run in the window.
    pub fn count_in(&self, start: u64, count: u64) -> u64 {
        self.runs_in(start, count).map(|(_, n)| n).sum()
    }

    /// True if every page of `[start, start + count)` is in the set.
    pub fn contains_all(&self, start: u64, count: u64) -> bool {
        self.gaps_in(start, count).next().is_none()
    }

    /// Adds `[start, start + count)`; returns how many pages were not already there.
    pub fn insert(&mut self, start: u64, count: u64) -> u64 {
        if count == 0 {
            return 0;
        }
        let (s0, e0) = (start, start.saturating_add(count));
        let (mut s, mut e) = (s0, e0);
        let mut added = e0 - s0;
        // Absorb, right to left, every range that overlaps or touches [s, e). Ranges are
        // disjoint and never touch, so the walk stops at the first one ending before s;
        // one lookup per absorbed range and no allocation, as this runs for every page a
        // balloon moves.
        while let Some((&rs, &re)) = self.ranges.range(..=e).next_back() {
            if re < s {
                break;
            }
            let (os, oe) = (rs.max(s0), re.min(e0));
            if oe > os {
                added -= oe - os;
            }
            self.ranges.remove(&rs);
            s = s.min(rs);
            e = e.max(re);
        }
        self.ranges.insert(s, e);
        self.len += added;
        added
    }

    /// Removes `[start, start + count)`; returns how many pages were there.
    pub fn remove(&mut self, start: u64, count: u64) -> u64 {
        if count == 0 {
            return 0;
        }
        let (s0, e0) = (start, start.saturating_add(count));
        let mut removed = 0;
        while let Some((&rs, &re)) = self.ranges.range(..e0).next_back() {
            if re <= s0 {
                break;
            }
            self.ranges.remove(&rs);
            removed += re.min(e0) - rs.max(s0);
            if re > e0 {
                self.ranges.insert(e0, re);
            }
            if rs < s0 {
                self.ranges.insert(rs, s0);
                break;
            }
        }
        self.len -= removed;
        removed
    }

    /// Takes up to `count` pages off the front of the set, as ranges of at most
    /// `max_range` pages.
    pub fn take(&mut self, count: u64, max_range: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut left = count;
        while left > 0 {
            let Some((&s, &e)) = self.ranges.iter().next() else {
                break;
            };
            let n = (e - s).min(left).min(max_range.max(1));
            self.remove(s, n);
            out.push((s, n));
            left -= n;
        }
        out
    }
}

/// Counts set lookups and steps in test builds, so that tests can bound the work a
/// message causes without timing it.
pub(crate) mod probe {
    #[cfg(test)]
    std::thread_local! {
        static VISITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    /// One lookup or one step of a walk.
    #[inline(always)]
    pub(crate) fn visit() {
        #[cfg(test)]
        VISITS.with(|v| v.set(v.get() + 1));
    }

    /// Lookups and steps on this thread so far.
    #[cfg(test)]
    pub(crate) fn visits() -> u64 {
        VISITS.with(|v| v.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn insert_remove_count() {
        let mut s = PageSet::new();
        assert_eq!(s.insert(10, 5), 5);
        assert_eq!(s.insert(12, 5), 2);
        assert_eq!(s.insert(15, 1), 0);
        assert_eq!(s.insert(17, 1), 1);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(10, 8)]);
        assert_eq!(s.remove(11, 2), 2);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![(10, 1), (13, 5)]);
        assert_eq!(s.len(), 6);
        assert!(s.contains_all(13, 5));
        assert!(!s.contains_all(12, 2));
        assert_eq!(s.take(3, 2), vec![(10, 1), (13, 2)]);
        assert_eq!(s.len(), 3);
    }

    proptest! {
        #[test]
        fn matches_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 0u64..30), 0..100)) {
            let mut s = PageSet::new();
            let mut m = BTreeSet::new();
            for (ins, start, count) in ops {
                let pages: Vec<u64> = (start..start + count).collect();
                if ins {
                    let new = pages.iter().filter(|p| m.insert(**p)).count() as u64;
                    prop_assert_eq!(s.insert(start, count), new);
                } else {
                    let gone = pages.iter().filter(|p| m.remove(*p)).count() as u64;
                    prop_assert_eq!(s.remove(start, count), gone);
                }
                prop_assert_eq!(s.len(), m.len() as u64);
                let flat: BTreeSet<u64> = s.ranges().flat_map(|(a, n)| a..a + n).collect();
                prop_assert_eq!(&flat, &m);
                // The walks agree with the model over a window.
                let (ws, wn) = (start / 2, count * 3);
                let inside: Vec<u64> = s.runs_in(ws, wn).flat_map(|(a, n)| a..a + n).collect();
                let outside: Vec<u64> = s.gaps_in(ws, wn).flat_map(|(a, n)| a..a + n).collect();
                let want_in: Vec<u64> = (ws..ws + wn).filter(|p| m.contains(p)).collect();
                let want_out: Vec<u64> = (ws..ws + wn).filter(|p| !m.contains(p)).collect();
                prop_assert_eq!(&inside, &want_in);
                prop_assert_eq!(&outside, &want_out);
                prop_assert_eq!(s.count_in(ws, wn), want_in.len() as u64);
                prop_assert_eq!(s.intersects(ws, wn), !want_in.is_empty());
                prop_assert_eq!(s.contains_all(ws, wn), want_out.is_empty());
                let rs: Vec<_> = s.ranges().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 < w[1].0, "disjoint and not touching");
                }
            }
        }
    }
}
