//! Gfn ranges: merging what a caller passes into the fewest syscalls, and subtracting one
//! sorted set from another.

/// The one gfn range type of ballast: checked at construction, so `end()` never
/// overflows and every range here ends at or below the gfn limit.
pub use ballast_abi::types::GfnRange;

/// Sorts `ranges` and merges overlapping and adjacent ones in place; empty ranges go.
/// Returns the merged ranges, in order.
///
/// Many small ranges in a dense span (a balloon handing back 4 KiB pages in any order)
/// are merged through a bitmap of the span in linear time; anything else is sorted.
pub fn merge(ranges: &mut Vec<GfnRange>) -> &[GfnRange] {
    ranges.retain(|r| !r.is_empty());
    if ranges.len() >= 64 {
        let lo = ranges.iter().map(|r| r.start()).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.end()).max().unwrap_or(0);
        // Worth it when the span is dense: at most 64 bitmap words per input range keeps
        // the bitmap within a small multiple of the input, whatever the ranges claim.
        if hi - lo <= 4096 * ranges.len() as u64 {
            merge_by_bitmap(ranges, lo, hi);
            return ranges;
        }
    }
    // A balloon usually hands pages back in order; check before paying for a sort.
    if !ranges.is_sorted_by_key(|r| r.start()) {
        ranges.sort_unstable_by_key(|r| r.start());
    }
    let mut out = 0usize;
    for i in 0..ranges.len() {
        let r = ranges[i];
        if out > 0 && r.start() <= ranges[out - 1].end() {
            // Overlapping or touching: the hull is the union.
            let last = &mut ranges[out - 1];
            *last = last.hull(&r);
        } else {
            ranges[out] = r;
            out += 1;
        }
    }
    ranges.truncate(out);
    ranges
}

fn merge_by_bitmap(ranges: &mut Vec<GfnRange>, lo: u64, hi: u64) {
    let span = hi - lo;
    let mut bits = vec![0u64; span.div_ceil(64) as usize];
    for r in ranges.iter() {
        let (mut s, e) = (r.start() - lo, r.end() - lo);
        while s < e {
            let (w, b) = ((s / 64) as usize, s % 64);
            let n = (64 - b).min(e - s);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << b
            };
            bits[w] |= mask;
            s += n;
        }
    }
    ranges.clear();
    let mut run: Option<u64> = None;
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        let mut base = w as u64 * 64;
        // Walk alternating runs of ones and zeros inside the word.
        let mut left = 64u32;
        while left > 0 {
            if run.is_none() {
                let z = word.trailing_zeros().min(left);
                base += z as u64;
                left -= z;
                word = word.checked_shr(z).unwrap_or(0);
                if left > 0 {
                    run = Some(base);
                }
            } else {
                let o = word.trailing_ones().min(left);
                base += o as u64;
                left -= o;
                word = word.checked_shr(o).unwrap_or(0);
                if left > 0 {
                    let start = run.take().unwrap_or(base);
                    ranges.push(sub_range(lo + start, lo + base));
                }
            }
        }
    }
    if let Some(start) = run {
        ranges.push(sub_range(lo + start, lo + span.min(bits.len() as u64 * 64)));
    }
}

/// `start .. end`, a part of ranges that were valid: within the gfn limit.
fn sub_range(start: u64, end: u64) -> GfnRange {
    GfnRange::from_bounds(start, end).expect("a part of valid ranges is a valid range")
}

/// The parts of the sorted, disjoint `have` that no range of the sorted, disjoint `keep`
/// covers.
pub fn subtract(have: &[GfnRange], keep: &[GfnRange]) -> Vec<GfnRange> {
    let mut out = Vec::new();
    let mut k = 0usize;
    for h in have {
        let mut start = h.start();
        let end = h.end();
        while k < keep.len() && keep[k].end() <= start {
            k += 1;
        }
        let mut j = k;
        while start < end {
            match keep.get(j) {
                Some(kr) if kr.start() < end => {
                    if kr.start() > start {
                        out.push(sub_range(start, kr.start()));
                    }
                    start = start.max(kr.end());
                    j += 1;
                }
                _ => {
                    out.push(sub_range(start, end));
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballast_abi::types::GFN_LIMIT;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn r(start: u64, count: u64) -> GfnRange {
        GfnRange::new(start, count).unwrap()
    }

    fn pages(rs: &[GfnRange]) -> BTreeSet<u64> {
        rs.iter().flat_map(|r| r.iter()).collect()
    }

    #[test]
    fn merges_neighbours_and_overlaps() {
        let mut v = vec![r(10, 2), r(0, 4), r(4, 1), r(11, 5), r(30, 0), r(20, 1)];
        assert_eq!(merge(&mut v), &[r(0, 5), r(10, 6), r(20, 1)]);
    }

    #[test]
    fn a_huge_range_does_not_size_the_bitmap() {
        // 63 pages and one range covering everything: sorted, not a 2^34-word bitmap.
        let mut v: Vec<GfnRange> = (0..63).map(|g| r(g * 2, 1)).collect();
        v.push(r(0, GFN_LIMIT));
        assert_eq!(merge(&mut v), &[r(0, GFN_LIMIT)]);
    }

    #[test]
    fn subtracts() {
        let have = [r(0, 10), r(20, 10)];
        let keep = [r(2, 3), r(8, 14), r(25, 1)];
        assert_eq!(
            subtract(&have, &keep),
            vec![r(0, 2), r(5, 3), r(22, 3), r(26, 4)]
        );
    }

    proptest! {
        #[test]
        fn merge_keeps_the_same_pages(v in proptest::collection::vec((0u64..500, 0u64..20), 0..60)) {
            let mut ranges: Vec<GfnRange> = v.iter().map(|&(s, c)| r(s, c)).collect();
            let before = pages(&ranges);
            let merged = merge(&mut ranges).to_vec();
            prop_assert_eq!(pages(&merged), before);
            for w in merged.windows(2) {
                prop_assert!(w[0].end() < w[1].start(), "merged ranges neither touch nor overlap");
            }
        }

        #[test]
        fn bitmap_and_sort_merge_agree(v in proptest::collection::vec((0u64..2000, 1u64..3), 64..300), lo in 0u64..(1 << 40) - 4096) {
            let mut ranges: Vec<GfnRange> = v.iter().map(|&(s, c)| r(lo + s, c)).collect();
            let before = pages(&ranges);
            let merged = merge(&mut ranges).to_vec();
            prop_assert_eq!(pages(&merged), before);
            for w in merged.windows(2) {
                prop_assert!(w[0].end() < w[1].start());
            }
        }

        #[test]
        fn subtract_is_set_difference(
            a in proptest::collection::vec((0u64..300, 1u64..20), 0..20),
            b in proptest::collection::vec((0u64..300, 1u64..20), 0..20),
        ) {
            let mut a: Vec<GfnRange> = a.iter().map(|&(s, c)| r(s, c)).collect();
            let mut b: Vec<GfnRange> = b.iter().map(|&(s, c)| r(s, c)).collect();
            let a = merge(&mut a).to_vec();
            let b = merge(&mut b).to_vec();
            let want: BTreeSet<u64> = pages(&a).difference(&pages(&b)).copied().collect();
            prop_assert_eq!(pages(&subtract(&a, &b)), want);
        }
    }
}
