//! Releasing 1 GiB of guest memory through ballast's discard, against raw `fallocate` on
//! the same memfd in the same run: one call per range the caller passed (unmerged), and
//! one call for the whole range (the physical limit).
//!
//! Run: `cargo bench -p ballast-backing --bench discard`
//!
//! The three are measured interleaved (one sample of each per round, the order rotating)
//! for as many rounds as `ballast_benchkit::Sampling`'s rule asks, here at least 15 and
//! until every median's 95% interval is within 2%, capped at 25 s per pattern. Before each
//! timed release the memfd is filled (untimed) with `fallocate(0)`, so every page is
//! resident. The figures are GiB released per second (higher is better) with their spread
//! (min .. max); each ratio is the median of the per-round ratios, with its spread.

use std::time::Duration;

use ballast_backing::{GfnRange, PageSize, PartitionMemory};
use ballast_benchkit::{Sampling, Spread, XorShift, interleaved, sig};
use rustix::fs::FallocateFlags;

const GIB: u64 = 1 << 30;
const PAGES: u64 = GIB / 4096;
/// Each sample releases 1 GiB (tens of ms), so a few dozen rounds suffice for a 2% interval.
const SAMPLING: Sampling = Sampling {
    min_rounds: 15,
    max_rounds: 201,
    budget: Duration::from_secs(25),
    rel_ci: 0.02,
};

fn fill(m: &PartitionMemory, ranges: &[GfnRange]) {
    for r in ranges {
        rustix::fs::fallocate(
            m.fd(),
            FallocateFlags::empty(),
            r.byte_offset(),
            r.byte_len(),
        )
        .unwrap();
    }
}

fn raw_per_range(m: &PartitionMemory, ranges: &[GfnRange]) {
    for r in ranges {
        rustix::fs::fallocate(
            m.fd(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            r.byte_offset(),
            r.byte_len(),
        )
        .unwrap();
    }
}

fn case(name: &str, m: &PartitionMemory, ranges: &[GfnRange]) {
    let span_start = ranges.iter().map(|r| r.start()).min().unwrap();
    let span_end = ranges.iter().map(|r| r.end()).max().unwrap();
    let bytes: u64 = ranges.iter().map(|r| r.byte_len()).sum();
    // The limit: one punch over the whole span (holes in the span cost nothing extra).
    let whole = [GfnRange::new(span_start, span_end - span_start).unwrap()];
    let c = interleaved(
        &SAMPLING,
        1,
        |_| {
            // The previous sample released everything; this one starts fully resident.
            assert_eq!(m.resident_bytes().unwrap(), 0, "everything released");
            fill(m, ranges);
            assert_eq!(m.resident_bytes().unwrap(), bytes);
        },
        &mut [
            &mut |_| {
                m.discard(ranges).unwrap();
            },
            &mut |_| raw_per_range(m, ranges),
            &mut |_| raw_per_range(m, &whole),
        ],
    );
    assert_eq!(m.resident_bytes().unwrap(), 0, "everything released");
    // GiB per ns * 1e9 = GiB/s.
    let gibs = bytes as f64 / GIB as f64 * 1e9;
    let (ours, unmerged, limit) = (c.rate(0, gibs), c.rate(1, gibs), c.rate(2, gibs));
    // Rates' ratio ours / other = other's time / ours, paired per round.
    let (x_unmerged, of_limit) = (c.ratio(1, 0), c.ratio(2, 0));
    let syscalls = m.discard(ranges).unwrap().syscalls;
    let ratio = |r: Spread| format!("{} ({} .. {})", sig(r.median), sig(r.min), sig(r.max));
    println!(
        "{name} ({} ranges in, {syscalls} syscalls, {} rounds{}):",
        ranges.len(),
        c.rounds(),
        c.note()
    );
    println!("    ballast            {}", ours.show("GiB/s"));
    println!(
        "    unmerged fallocate {} | ballast x{}",
        unmerged.show("GiB/s"),
        ratio(x_unmerged)
    );
    println!(
        "    whole-range limit  {} | ballast {} of limit",
        limit.show("GiB/s"),
        ratio(of_limit)
    );
}

fn main() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let m = PartitionMemory::new("ballast-bench", 2 * GIB, 2 * GIB, PageSize::Base).unwrap();

    // (a) 2 MiB ranges covering 1 GiB, in the order a guest hands them back (shuffled).
    let mut a: Vec<GfnRange> = (0..PAGES / 512)
        .map(|i| GfnRange::new(i * 512, 512).unwrap())
        .collect();
    rng.shuffle(&mut a);
    case("(a) 1 GiB as 2 MiB ranges, shuffled", &m, &a);

    // (a') 2 MiB ranges with a 2 MiB gap between each: nothing to merge.
    let gapped: Vec<GfnRange> = (0..PAGES / 512)
        .map(|i| GfnRange::new(i * 1024, 512).unwrap())
        .collect();
    case("(a') 1 GiB as 2 MiB ranges with gaps", &m, &gapped);

    // (b) every 4 KiB page of 1 GiB, scattered at random.
    let mut b: Vec<GfnRange> = (0..PAGES).map(|g| GfnRange::new(g, 1).unwrap()).collect();
    rng.shuffle(&mut b);
    case("(b) 1 GiB as 4 KiB pages, random order", &m, &b);

    // (b') half the 4 KiB pages of 2 GiB, chosen at random: some neighbours, many gaps.
    let mut half: Vec<GfnRange> = (0..2 * PAGES)
        .filter(|_| rng.next_u64() & 1 == 0)
        .map(|g| GfnRange::new(g, 1).unwrap())
        .collect();
    rng.shuffle(&mut half);
    case("(b') ~1 GiB as random 4 KiB pages of 2 GiB", &m, &half);
}
