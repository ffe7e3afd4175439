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

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges, in order, as `(start, count)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e - s))
    }

    /// Pages of `[start, start + count)` in the set.
    pub fn count_in(&self, start: u64, count: u64) -> u64 {
        let end = start.saturating_add(count);
        let mut n = 0;
        // The range that may begin before `start` and reach into it, then all after.
        let first = self
            .ranges
            .range(..=start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(start);
        for (&s, &e) in self.ranges.range(first..end) {
            let (a, b) = (s.max(start), e.min(end));
            if a < b {
                n += b - a;
            }
        }
        n
    }

    /// True if every page of `[start, start + count)` is in the set.
    pub fn contains_all(&self, start: u64, count: u64) -> bool {
        self.count_in(start, count) == count
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
                let rs: Vec<_> = s.ranges().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 < w[1].0, "disjoint and not touching");
                }
            }
        }
    }
}
