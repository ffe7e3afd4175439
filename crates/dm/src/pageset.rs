//! A set of guest pages kept as disjoint ranges: what the host believes the guest has
//! ballooned, what a guest may give up.
//!
//! The set speaks [`GfnRange`], the gfn range every crate of ballast shares: it takes
//! ranges and hands out ranges, so every run it holds is below
//! [`GFN_LIMIT`](ballast_abi::types::GFN_LIMIT) and no caller adds a start to a count.

use std::collections::BTreeMap;

use ballast_abi::types::{Gfn, GfnRange};

/// Disjoint, non-adjacent gfn ranges.
///
/// The highest run is kept apart from the others: a balloon takes pages from the bottom
/// of free memory up, so the sets that follow it (what the host holds, what the guest
/// gave) grow at their top, page by page with 4 KiB pages. Appending to the top run, and
/// looking at or above it, is then a comparison instead of a walk down the tree.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PageSet {
    /// start → end of every run below `top`; every end at most `GFN_LIMIT`, as every
    /// range inserted was a [`GfnRange`].
    ranges: BTreeMap<Gfn, Gfn>,
    /// The highest run, `[start, end)`: `Some` exactly when the set is not empty, so that
    /// one set of pages has one representation (and the derived equality is the sets').
    top: Option<(Gfn, Gfn)>,
    len: u64,
}

impl core::fmt::Debug for PageSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Runs<'a>(&'a PageSet);
        impl core::fmt::Debug for Runs<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.debug_map()
                    .entries(self.0.ranges().map(|r| (r.start(), r.end())))
                    .finish()
            }
        }
        f.debug_struct("PageSet")
            .field("ranges", &Runs(self))
            .field("len", &self.len)
            .finish()
    }
}

/// The range `[start, end)` of a run the set holds, or a clipped part of one (or any
/// other span this crate knows lies inside a [`GfnRange`]).
///
/// Infallible in practice: every run is part of a [`GfnRange`] that was inserted or of a
/// window a caller passed, so it lies below the limit; should that ever not hold, the
/// run is reported empty rather than the program stopped.
pub(crate) fn run(start: Gfn, end: Gfn) -> GfnRange {
    GfnRange::from_bounds(start, end).unwrap_or_else(|_| {
        debug_assert!(
            false,
            "page set run {start:#x}..{end:#x} passes the gfn limit"
        );
        GfnRange::EMPTY
    })
}

/// The ranges of `ranges` with each run of neighbours (each starting where the one before
/// it ends) joined into one range, in order. Only neighbours next to each other in the
/// sequence join: nothing is sorted, and overlapping ranges stay apart.
pub(crate) fn joined(ranges: impl IntoIterator<Item = GfnRange>) -> impl Iterator<Item = GfnRange> {
    let mut ranges = ranges.into_iter().peekable();
    std::iter::from_fn(move || {
        let first = ranges.next()?;
        let (start, mut end) = (first.start(), first.end());
        while let Some(next) = ranges.next_if(|n| n.start() == end) {
            end = next.end();
        }
        // Neighbouring gfn ranges: the last ends below the gfn limit.
        Some(run(start, end))
    })
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
        self.ranges.len() + usize::from(self.top.is_some())
    }

    /// One past the highest page in the set; `None` if it is empty.
    pub fn end(&self) -> Option<Gfn> {
        self.top.map(|(_, e)| e)
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = GfnRange> + '_ {
        self.ranges
            .iter()
            .map(|(&s, &e)| (s, e))
            .chain(self.top)
            .map(|(s, e)| run(s, e))
    }

    /// The set's runs inside `window`, clipped to it, in order.
    ///
    /// One ordered walk: a lookup for the run that may reach into the window's start,
    /// then one step per run, so taking the first `k` runs costs `O(log n + k)` however
    /// long the window is — what a guest or a host naming 2^24 pages in one range may
    /// cost. A window starting inside or above the top run needs no lookup.
    pub fn runs_in(&self, window: GfnRange) -> impl Iterator<Item = GfnRange> + '_ {
        let (start, end) = (window.start(), window.end());
        probe::visit();
        // The top run, clipped; the others lie below its start.
        let top = self
            .top
            .filter(move |&(ts, te)| ts < end && te > start && start < end)
            .map(move |(ts, te)| run(ts.max(start), te.min(end)));
        let in_map = self.top.is_some_and(|(ts, _)| start < ts);
        let before = in_map
            .then(|| self.ranges.range(..start).next_back())
            .flatten()
            .filter(move |&(_, &e)| e > start && start < end)
            .map(move |(_, &e)| run(start, e.min(end)));
        let after = in_map
            .then(|| self.ranges.range(start..end))
            .into_iter()
            .flatten()
            .map(move |(&s, &e)| run(s, e.min(end)));
        before
            .into_iter()
            .chain(after)
            .chain(top)
            .inspect(|_| probe::visit())
    }

    /// The runs of `window` not in the set, in order: the same walk as
    /// [`runs_in`](Self::runs_in), one step per gap.
    pub fn gaps_in(&self, window: GfnRange) -> impl Iterator<Item = GfnRange> + '_ {
        let end = window.end();
        let mut runs = self.runs_in(window);
        let mut at = window.start();
        std::iter::from_fn(move || {
            while at < end {
                let (s, e) = runs.next().map_or((end, end), |r| (r.start(), r.end()));
                let gap = run(at, s);
                at = e;
                if !gap.is_empty() {
                    return Some(gap);
                }
            }
            None
        })
    }

    /// True if any page of `range` is in the set: one lookup.
    pub fn intersects(&self, range: GfnRange) -> bool {
        self.runs_in(range).next().is_some()
    }

    /// Pages of `range` in the set. Walks every run in the range.
    pub fn count_in(&self, range: GfnRange) -> u64 {
        self.runs_in(range).map(|r| r.count()).sum()
    }

    /// True if every page of `range` is in the set.
    pub fn contains_all(&self, range: GfnRange) -> bool {
        self.gaps_in(range).next().is_none()
    }

    /// Adds `range`; returns how many pages were not already there.
    pub fn insert(&mut self, range: GfnRange) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let (s0, e0) = (range.start(), range.end());
        let n = e0 - s0;
        let Some((ts, te)) = self.top else {
            self.top = Some((s0, e0));
            self.len = n;
            return n;
        };
        if s0 >= ts {
            if s0 <= te {
                // Into or onto the end of the top run: the balloon's case.
                let added = e0.saturating_sub(te);
                self.top = Some((ts, te.max(e0)));
                self.len += added;
                return added;
            }
            // A new top run; the old one goes below it.
            self.ranges.insert(ts, te);
            self.top = Some((s0, e0));
            self.len += n;
            return n;
        }
        if e0 < ts {
            // Below the top run, not touching it.
            return self.map_insert(s0, e0);
        }
        // It reaches the top run: join them in the map, and the highest run is the top.
        self.ranges.insert(ts, te);
        let added = self.map_insert(s0, e0);
        self.top = self.ranges.pop_last();
        added
    }

    /// [`insert`](Self::insert) into the runs of the map, for a range that does not meet
    /// the top run; counts the pages added in `len`.
    fn map_insert(&mut self, s0: Gfn, e0: Gfn) -> u64 {
        // The last run starting at or before `e0` is the only one that can reach `s0`
        // from the left. If it starts at or before `s0` it is also the only run the range
        // meets at all (no other run starts in `(rs, e0]`), so it grows in place: one
        // lookup, no node change.
        if let Some((&rs, re)) = self.ranges.range_mut(..=e0).next_back() {
            if rs <= s0 && *re >= s0 {
                let added = e0.saturating_sub(*re);
                *re = (*re).max(e0);
                self.len += added;
                return added;
            }
        }
        let (mut s, mut e) = (s0, e0);
        let mut added = e0 - s0;
        // Absorb, right to left, every range that overlaps or touches [s, e). Ranges are
        // disjoint and never touch, so the walk stops at the first one ending before s;
        // one lookup per absorbed range and no allocation.
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

    /// Removes `range`; returns how many pages were there.
    pub fn remove(&mut self, range: GfnRange) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let (s0, e0) = (range.start(), range.end());
        let Some((ts, te)) = self.top else {
            return 0;
        };
        if s0 >= te {
            return 0;
        }
        if s0 > ts {
            // Inside the top run, keeping its start: what is left below the range stays,
            // what is left above it (if anything) is the new top run.
            let removed = te.min(e0) - s0;
            if e0 < te {
                self.ranges.insert(ts, s0);
                self.top = Some((e0, te));
            } else {
                self.top = Some((ts, s0));
            }
            self.len -= removed;
            return removed;
        }
        // From below the top run's start: the map's runs, then the top run's part.
        let removed = self.map_remove(s0, e0.min(ts));
        if e0 <= ts {
            return removed;
        }
        let from_top = te.min(e0) - ts;
        self.top = if e0 < te {
            Some((e0, te))
        } else {
            self.ranges.pop_last()
        };
        self.len -= from_top;
        removed + from_top
    }

    /// [`remove`](Self::remove) from the runs of the map (all below the top run);
    /// counts the pages removed in `len`.
    fn map_remove(&mut self, s0: Gfn, e0: Gfn) -> u64 {
        if s0 >= e0 {
            return 0;
        }
        // A range inside the last run starting before `e0` that leaves that run's start
        // in place (its tail, or a hole in its middle) only shortens the run where it
        // lies: no other run meets the range, so the end moves in place and at most the
        // part after the range is inserted.
        if let Some((&rs, re)) = self.ranges.range_mut(..e0).next_back() {
            if rs < s0 && *re > s0 {
                let old_end = *re;
                *re = s0;
                let removed = old_end.min(e0) - s0;
                if old_end > e0 {
                    self.ranges.insert(e0, old_end);
                }
                self.len -= removed;
                return removed;
            }
        }
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
    pub fn take(&mut self, count: u64, max_range: u64) -> Vec<GfnRange> {
        let mut out = Vec::new();
        let mut left = count;
        while left > 0 {
            let first = self.ranges.first_key_value().map(|(&s, &e)| (s, e));
            let Some((s, e)) = first.or(self.top) else {
                break;
            };
            let n = (e - s).min(left).min(max_range.max(1));
            let r = run(s, s + n);
            self.remove(r);
            out.push(r);
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

    fn r(start: u64, count: u64) -> GfnRange {
        GfnRange::new(start, count).unwrap()
    }

    #[test]
    fn insert_remove_count() {
        let mut s = PageSet::new();
        assert_eq!(s.insert(r(10, 5)), 5);
        assert_eq!(s.insert(r(12, 5)), 2);
        assert_eq!(s.insert(r(15, 1)), 0);
        assert_eq!(s.insert(r(17, 1)), 1);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![r(10, 8)]);
        assert_eq!(s.remove(r(11, 2)), 2);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![r(10, 1), r(13, 5)]);
        assert_eq!(s.len(), 6);
        assert!(s.contains_all(r(13, 5)));
        assert!(!s.contains_all(r(12, 2)));
        assert_eq!(s.take(3, 2), vec![r(10, 1), r(13, 2)]);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn neighbours_join_in_sequence_only() {
        let got: Vec<_> = joined([r(5, 1), r(6, 1), r(7, 3), r(20, 1), r(3, 2), r(5, 1)]).collect();
        assert_eq!(got, vec![r(5, 5), r(20, 1), r(3, 3)]);
        assert_eq!(joined([]).count(), 0);
        // Overlapping ranges are not neighbours.
        assert_eq!(joined([r(0, 4), r(2, 4)]).count(), 2);
    }

    #[test]
    fn in_place_paths_keep_the_runs() {
        let mut s = PageSet::new();
        // Appended page by page: one run that grows in place.
        for g in 100..110 {
            assert_eq!(s.insert(r(g, 1)), 1);
        }
        // Overlapping the tail, reaching past it.
        assert_eq!(s.insert(r(105, 10)), 5);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![r(100, 15)]);
        // A hole in the middle, then the tail, then a range reaching past the end.
        assert_eq!(s.remove(r(104, 2)), 2);
        assert_eq!(s.remove(r(113, 2)), 2);
        assert_eq!(s.remove(r(111, 10)), 2);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![r(100, 4), r(106, 5)]);
        assert_eq!(s.len(), 9);
        // Filling the hole joins the runs again.
        assert_eq!(s.insert(r(104, 2)), 2);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![r(100, 11)]);
        assert_eq!(s.len(), 11);
    }

    proptest! {
        #[test]
        fn matches_a_btreeset(ops in proptest::collection::vec((0u8..5, 0u64..200, 0u64..30), 0..100)) {
            let mut s = PageSet::new();
            let mut m = BTreeSet::new();
            // The highest page inserted so far plus one: kind 3 appends from there, as a
            // balloon does, so the top run's paths are walked often.
            let mut next = 0u64;
            for (kind, start, count) in ops {
                let start = if kind == 3 { next + start % 3 } else { start };
                let pages: Vec<u64> = (start..start + count).collect();
                match kind {
                    0 | 1 | 3 => {
                        let new = pages.iter().filter(|p| m.insert(**p)).count() as u64;
                        prop_assert_eq!(s.insert(r(start, count)), new);
                        next = next.max(start + count);
                    }
                    2 => {
                        let gone = pages.iter().filter(|p| m.remove(*p)).count() as u64;
                        prop_assert_eq!(s.remove(r(start, count)), gone);
                    }
                    _ => {
                        let want: Vec<u64> = m.iter().copied().take(count as usize).collect();
                        let got: Vec<u64> = s
                            .take(count, start % 7 + 1)
                            .iter()
                            .flat_map(|g| g.iter())
                            .collect();
                        prop_assert_eq!(&got, &want);
                        for p in want {
                            m.remove(&p);
                        }
                    }
                }
                // One representation per set: rebuilt from its runs, it is equal.
                let mut again = PageSet::new();
                for g in s.ranges() {
                    again.insert(g);
                }
                prop_assert_eq!(&again, &s);
                prop_assert_eq!(s.run_count(), s.ranges().count());
                prop_assert_eq!(s.is_empty(), m.is_empty());
                prop_assert_eq!(s.end(), m.last().map(|p| p + 1));
                prop_assert_eq!(s.len(), m.len() as u64);
                let flat: BTreeSet<u64> = s.ranges().flat_map(|g| g.iter()).collect();
                prop_assert_eq!(&flat, &m);
                // The walks agree with the model over a window.
                let (ws, wn) = (start / 2, count * 3);
                let inside: Vec<u64> = s.runs_in(r(ws, wn)).flat_map(|g| g.iter()).collect();
                let outside: Vec<u64> = s.gaps_in(r(ws, wn)).flat_map(|g| g.iter()).collect();
                let want_in: Vec<u64> = (ws..ws + wn).filter(|p| m.contains(p)).collect();
                let want_out: Vec<u64> = (ws..ws + wn).filter(|p| !m.contains(p)).collect();
                prop_assert_eq!(&inside, &want_in);
                prop_assert_eq!(&outside, &want_out);
                prop_assert_eq!(s.count_in(r(ws, wn)), want_in.len() as u64);
                prop_assert_eq!(s.intersects(r(ws, wn)), !want_in.is_empty());
                prop_assert_eq!(s.contains_all(r(ws, wn)), want_out.is_empty());
                let rs: Vec<_> = s.ranges().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0].end() < w[1].start(), "disjoint and not touching");
                }
            }
        }
    }
}
